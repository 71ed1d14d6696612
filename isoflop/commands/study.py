"""``isoflop study``: plan, train and analyse a whole study, following progress.

The laptop path through the tool: the study's runs are submitted (the local
executor by default), followed live until every run has ended, then analysed
into ``<sweep>/report``. Re-running the same command continues an interrupted
study: completed runs are kept, live ones are left alone, and failed or
interrupted ones resume from their checkpoints.

``--adaptive`` trains the budgets in increasing order and centres each one's
ladder on the N* the smaller budgets predict (:mod:`isoflop.adaptive_ladder`);
the analysis then holds the largest budget out and says whether its measured
optimum agrees with that prediction (``--holdout-budget``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from isoflop.commands.common import add_study_arguments, count_or_zero, positive_seconds
from isoflop.commands.sweep_choice import add_name_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_arguments(parser)
    parser.add_argument("--root", type=Path, required=True, metavar="DIR",
                        help="folder holding sweep directories; the study goes to DIR/<name>")
    add_name_argument(parser)
    parser.add_argument("--interval", type=positive_seconds, default=5.0, metavar="SECONDS",
                        help="progress refresh period (default: 5)")
    parser.add_argument("--bootstrap", type=count_or_zero, default=1000, metavar="N",
                        help="bootstrap resamples of the analysis (default: 1000)")
    parser.add_argument("--adaptive", action="store_true",
                        help="train the budgets in increasing order, each ladder centred on the N* predicted from "
                             "the smaller budgets; the report checks the largest budget against its prediction")


def run(args: argparse.Namespace) -> int:
    import analysis.command
    from isoflop.commands.submit import submit_study
    from isoflop.commands.wait import follow
    from isoflop.compose import load_study

    started = time.monotonic()
    analysis.command.validate_args(analysis.command.parse_args([str(args.root), "--bootstrap", str(args.bootstrap)]))
    composed = load_study(args.sweep, args.overrides, args.budgets)
    if args.adaptive:
        from isoflop.adaptive_ladder import analysis_arguments, run_adaptive

        sweep, all_completed = run_adaptive(composed, args.root, args.name, args.interval, args.bootstrap)
        extra_analysis = analysis_arguments(composed.study, all_completed, args.bootstrap)
    else:
        sweep = submit_study(composed, args.root, args.name, retry_failed=True, new=False)
        print(f"sweep: {sweep.path}", file=sys.stderr)
        all_completed = follow(sweep, args.interval) == 0
        extra_analysis = []
    trained = time.monotonic()

    analyze_args = analysis.command.parse_args([str(sweep.path), "--bootstrap", str(args.bootstrap), *extra_analysis])
    analysis_status = analysis.command.run(analyze_args)
    print(f"study {composed.study.name}: training {trained - started:.0f} s, analysis "
          f"{time.monotonic() - trained:.0f} s; report: {sweep.path / 'report' / 'report.md'}")
    if not all_completed:
        print("some runs did not complete (see `isoflop status`); re-run this command to continue them",
              file=sys.stderr)
        return 1
    return analysis_status
