"""``isoflop wait SWEEP_DIR``: follow a sweep until every run has ended.

On a terminal the status table is redrawn in place (rich) every
``--interval`` seconds; anywhere else (a log file, a pipe) one time-stamped
summary line is printed per change, and the table once at the end. Exit
status 0 if every run completed, 1 if any failed, diverged or was cancelled,
2 for a bad sweep directory, 3 after ``--timeout``.

A run that is planned but was never submitted will not start by waiting for
it, so ``wait`` ends (status 1) with a line saying how many and how to
submit them once the same runs are planned on two polls in a row, unless an ``isoflop submit`` of this sweep is in progress (it
holds the sweep's submit lock; the ``debug`` executor trains while holding
it). Runs whose scheduler could not be asked (``unknown``) are waited for,
with a warning line whenever the reason changes; so are SLURM jobs that are
pending for a reason that does not pass on its own (a partition can be changed
by its administrator), with a warning line naming the setting to change.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from isoflop.commands.common import positive_seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR", help="the folder `isoflop submit` printed")
    parser.add_argument("--interval", type=positive_seconds, default=10.0, metavar="SECONDS",
                        help="refresh period (default: 10)")
    parser.add_argument("--timeout", type=positive_seconds, default=None, metavar="SECONDS",
                        help="give up after this long (exit 3)")


class LiveTable:
    """The status table redrawn in place on the terminal (a rich Live display, redrawn
    only when shown: no refresh thread)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self._live = Live(console=Console(force_terminal=True), auto_refresh=False)

    def __enter__(self) -> LiveTable:
        self._live.start()
        return self

    def __exit__(self, *exception: object) -> None:
        self._live.stop()

    def show(self, text: str) -> None:
        from rich.text import Text

        self._live.update(Text(text), refresh=True)


def follow(sweep: Any, interval: float, output_format: str = "table", timeout: float | None = None) -> int:
    """Poll ``sweep`` until no run is planned or live; returns the exit status."""
    from isoflop.commands.status import render, status_warnings, summary_line
    from isoflop.commands.submit import submission_in_progress
    from isoflop.scheduler_state import TERMINAL, sweep_status

    interactive = sys.stdout.isatty() and output_format == "table"
    started, last_summary, last_warnings = time.monotonic(), None, []
    seen_planned: set[str] = set()  # run ids that were planned (and not being submitted) at the last poll
    with LiveTable() if interactive else contextlib.nullcontext() as live:
        while True:
            status = sweep_status(sweep)
            rows = status.runs
            summary = summary_line(rows)
            warnings = status_warnings(status)
            for warning in warnings:
                if warning not in last_warnings:
                    print(warning, file=sys.stderr, flush=True)
            last_warnings = warnings
            never_submitted = [row for row in rows if row.state == "planned"]
            if never_submitted and submission_in_progress(sweep):
                never_submitted = []  # being submitted: wait for them
            # One poll reads the files of many runs one after another, so a trunk can look finished while
            # the branch it has just submitted still looks planned: only the same planned runs on two
            # polls in a row are taken as never submitted.
            confirmed = {row.run_id for row in never_submitted} <= seen_planned
            seen_planned = {row.run_id for row in never_submitted}
            done = all(row.state in TERMINAL or row in never_submitted for row in rows) and (
                not never_submitted or confirmed)
            if live is not None:
                live.show(render(status, output_format))
            elif summary != last_summary or done:
                print(f"[{time.strftime('%H:%M:%S')}] {summary}", flush=True)
            last_summary = summary
            if done:
                if live is None:
                    sys.stdout.write(render(status, output_format))
                if never_submitted:
                    print(f"{len(never_submitted)} run(s) are planned but were never submitted, so waiting "
                          "would not end; submit them with the `isoflop submit` command that created this "
                          "sweep (or re-run `isoflop study`)", file=sys.stderr)
                return 0 if all(row.state == "completed" for row in rows) else 1
            if timeout is not None and time.monotonic() - started > timeout:
                print(f"gave up after {timeout:g} s: {summary}", file=sys.stderr)
                return 3
            time.sleep(interval)


def run(args: argparse.Namespace) -> int:
    from isoflop.sweep_dir import SweepDir

    return follow(SweepDir.open(args.sweep_dir), args.interval, timeout=args.timeout)
