"""``isoflop bench kernels|layers [ARGS...]``: speed and memory benchmarks.

``kernels``: the fused PEER and CVMM kernels against their references
(``kernels/bench.py``). ``layers``: the PEER layer against a dense FFW
(``models/bench.py``). Benchmarks report ratios measured side by side in one
run; they are not tests.
"""

from __future__ import annotations

import argparse
import importlib

TARGETS = {"kernels": "kernels.bench", "layers": "models.bench"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=sorted(TARGETS), help="what to benchmark")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="options of that benchmark (see 'isoflop bench TARGET --help')")


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(TARGETS[args.target])
    return int(module.main(args.bench_args) or 0)
