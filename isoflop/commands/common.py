"""Arguments shared by the commands that compose a study (plan, submit, study)."""

from __future__ import annotations

import argparse
import math


def budget_flops(text: str) -> float:
    """argparse type for ``--budget``: a positive, finite number of FLOPs."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; pass FLOPs such as 6e18") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of FLOPs, such as 6e18")
    return value


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """``--sweep``, ``--budget`` and trailing Hydra ``KEY=VALUE`` overrides."""
    parser.add_argument("--sweep", default=None, metavar="NAME",
                        help="study in sweeps/ (default: peer_paper) or a path to a sweep YAML")
    parser.add_argument("--budget", dest="budgets", action="append", type=budget_flops, metavar="FLOPS",
                        help="training FLOPs per run; repeat for several budgets (default: the sweep's)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="Hydra overrides, e.g. train.batch_size=64 cluster=slurm methods.peer.top_k=8")


def human_count(value: float) -> str:
    """1234567 -> '1.23M' (SI suffixes, 3 significant digits)."""
    for threshold, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.3g}{suffix}"
    return f"{value:.3g}"
