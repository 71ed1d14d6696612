"""``isoflop bench kernels|layers|checkpoint [ARGS...]``: speed and memory benchmarks.

``kernels``: the fused PEER and CVMM kernels against their references
(``isoflop/bench/kernels.py``). ``layers``: the PEER layer against a dense FFW
(``isoflop/bench/layers.py``). ``checkpoint``: saving and loading a large training
state, streamed against whole in memory (``isoflop/bench/checkpoint.py``).
Benchmarks report ratios measured side by side in one run; they are not tests.

Each benchmark module defines ``add_arguments(parser)`` and ``run(args)`` like
a command; its arguments are parsed here by the same one-line parser as every
other command, so a bad flag is one line and exit 2 before anything runs.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

from isoflop.commands.common import OneLineArgumentParser, parse_command_line
from isoflop.errors import UserError

TARGETS = {"kernels": "isoflop.bench.kernels", "layers": "isoflop.bench.layers", "checkpoint": "isoflop.bench.checkpoint"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # The target is checked in run() rather than by argparse, so a missing one is named
    # with the choices; ARGS may be empty (argparse would call it required too).
    parser.usage = "%(prog)s [-h] {" + ",".join(sorted(TARGETS)) + "} [ARGS ...]"
    parser.add_argument("target", nargs="?", choices=sorted(TARGETS), help="what to benchmark")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="options of that benchmark (see 'isoflop bench TARGET --help')")


def description(module: ModuleType) -> str:
    """The first paragraph of a benchmark's docstring, its reST double backticks shown as single quotes."""
    return (module.__doc__ or "").split("\n\n")[0].replace("``", "'")


def parse_bench_arguments(target: str, argv: list[str]) -> tuple[ModuleType, argparse.Namespace]:
    """The benchmark module of ``target`` and its parsed arguments (bad ones exit 2 with one line)."""
    module = importlib.import_module(TARGETS[target])
    parser = OneLineArgumentParser(prog=f"isoflop bench {target}", description=description(module))
    module.add_arguments(parser)
    return module, parse_command_line(parser, argv)


def run(args: argparse.Namespace) -> int:
    if args.target is None:
        raise UserError(f"name what to benchmark: {', '.join(sorted(TARGETS))} "
                        "(e.g. 'isoflop bench kernels'); see 'isoflop bench --help'")
    module, bench_args = parse_bench_arguments(args.target, args.bench_args)
    return int(module.run(bench_args) or 0)
