"""The ``isoflop`` command line.

Only the chosen subcommand's module is imported, so ``isoflop --help`` and
``isoflop plan`` answer fast. A :class:`UserError` becomes one line on stderr
and exit status 2; anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

from isoflop.commands.common import OneLineArgumentParser, parse_command_line
from isoflop.errors import UserError

# name -> (module defining add_arguments/run, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "plan": ("isoflop.commands.plan", "plan a study: runs, sizes, FLOPs, tokens and steps"),
    "submit": ("isoflop.commands.submit", "write the sweep directory and submit every pending run"),
    "status": ("isoflop.commands.status", "show the state of every run of a sweep"),
    "wait": ("isoflop.commands.wait", "follow a sweep until every run has ended"),
    "cancel": ("isoflop.commands.cancel", "cancel the live jobs of a sweep"),
    "train": ("isoflop.commands.train", "train (or resume) one run from its run.json"),
    "analyze": ("analysis.command", "fit isoFLOP parabolas and power laws; write figures and tables"),
    "study": ("isoflop.commands.study", "plan, train and analyse a whole study, following progress"),
    "bench": ("isoflop.commands.bench", "benchmarks: kernels, layers, checkpoint"),
    "gpu-acceptance": ("isoflop.commands.gpu_acceptance",
                       "check a CUDA machine in minutes: GPU tests, bf16 training, kernel benchmarks"),
}


def _top_level_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="isoflop",
        description="isoFLOP scaling studies: at a fixed compute budget, which architecture and "
                    "which model size give the lowest loss?")
    from isoflop import __version__

    parser.add_argument("--version", action="version", version=f"isoflop {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        subcommands.add_parser(name, help=help_text, add_help=False)
    return parser


def command_parser(name: str) -> tuple[ModuleType, argparse.ArgumentParser]:
    """The module of command ``name`` and its parser (imports only that module)."""
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = OneLineArgumentParser(prog=f"isoflop {name}", description=help_text)
    module.add_arguments(parser)
    return module, parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``isoflop`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _top_level_parser()
        if not argv:
            parser.print_help(sys.stderr)
            return 2
        parser.parse_args(argv)
        return 0
    name = argv[0]
    prog = f"isoflop {name}"
    try:
        module, parser = command_parser(name)
    except ModuleNotFoundError as error:
        if error.name and COMMANDS[name][0].startswith(error.name):
            print(f"{prog}: error: this command is not available in this installation", file=sys.stderr)
            return 2
        raise
    args = parse_command_line(parser, argv[1:])
    try:
        return int(module.run(args) or 0)
    except UserError as error:
        print(f"{prog}: error: {error.message}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # whoever read stdout stopped (`| head`): end quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
