"""``isoflop bench kernels|layers|checkpoint [ARGS...]``: speed and memory benchmarks.

``kernels``: the fused PEER and CVMM kernels against their references
(``kernels/bench.py``). ``layers``: the PEER layer against a dense FFW
(``models/bench.py``). ``checkpoint``: saving and loading a large training
state, streamed against whole in memory (``isoflop/checkpoint_bench.py``).
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

TARGETS = {"kernels": "kernels.bench", "layers": "models.bench", "checkpoint": "isoflop.checkpoint_bench"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=sorted(TARGETS), help="what to benchmark")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="options of that benchmark (see 'isoflop bench TARGET --help')")


def parse_bench_arguments(target: str, argv: list[str]) -> tuple[ModuleType, argparse.Namespace]:
    """The benchmark module of ``target`` and its parsed arguments (bad ones exit 2 with one line)."""
    module = importlib.import_module(TARGETS[target])
    parser = OneLineArgumentParser(prog=f"isoflop bench {target}", description=module.__doc__.split("\n\n")[0])
    module.add_arguments(parser)
    return module, parse_command_line(parser, argv)


def run(args: argparse.Namespace) -> int:
    module, bench_args = parse_bench_arguments(args.target, args.bench_args)
    return int(module.run(bench_args) or 0)
