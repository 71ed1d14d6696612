"""``isoflop status SWEEP_DIR``: one row per run and a summary line.

With cooldown branches the trunks come first (``trunk`` in the budget column)
and a line per waiting or blocked branch says what it waits for.

The scheduler is asked once per call (one ``sacct`` for every SLURM job id);
everything else comes from the sweep directory's files. When the scheduler
cannot be asked, the runs it would have told about are ``unknown`` and one
warning line on stderr says why (``--format json``: ``scheduler_problems``).
A SLURM job that is pending for a reason that does not pass on its own (it asks
more than the partition has, a per-job limit, a hold) stays ``pending``, and a
warning line per reason names the setting to change (``stuck_warnings``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from isoflop.commands.common import human_count, positive_seconds

FORMATS = ("table", "json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR", help="the folder `isoflop submit` printed")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.add_argument("--watch", action="store_true", help="refresh until every run has ended (= isoflop wait)")
    parser.add_argument("--interval", type=positive_seconds, default=10.0, metavar="SECONDS",
                        help="refresh period with --watch (default: 10)")


def summary_line(rows: list[Any]) -> str:
    """``12 runs: 8 completed, 3 running, 1 pending`` (states in lifecycle order)."""
    from isoflop.scheduler_state import STATES

    counts = Counter(row.state for row in rows)
    parts = [f"{counts[state]} {state}" for state in STATES if counts[state]]
    return f"{len(rows)} runs: {', '.join(parts) if parts else 'none planned'}"


def render_table(rows: list[Any]) -> str:
    """The status table, under 120 columns."""
    header = (f"{'run_id':<40} {'method':<10} {'budget':>8} {'params':>7} {'state':<10} "
              f"{'progress':>8} {'loss':>7} {'job':>12}")
    lines = [header]
    for row in rows:
        loss = f"{row.last_loss:.4f}" if row.last_loss is not None else "-"
        budget = "trunk" if row.role == "trunk" else f"{row.budget_flops:.2g}"
        lines.append(f"{row.run_id:<40} {row.method:<10.10} {budget:>8} "
                     f"{human_count(row.n_params):>7} {row.state:<10} {row.progress:>7.0%} {loss:>7} "
                     f"{row.job_id or '-':>12}")
    lines += [f"{row.state}: {row.run_id} waits for {row.waits_for}" for row in rows if row.waits_for]
    lines.append(summary_line(rows))
    return "\n".join(lines) + "\n"


def render(status: Any, output_format: str) -> str:
    """A :class:`~isoflop.scheduler_state.SweepStatus` as a table or JSON."""
    if output_format == "json":
        return json.dumps({"runs": [row.to_dict() for row in status.runs], "summary": summary_line(status.runs),
                           "scheduler_problems": list(status.problems), "stuck_warnings": list(status.stuck)},
                          indent=2) + "\n"
    return render_table(status.runs)


def scheduler_warning(problems: tuple[str, ...]) -> str | None:
    """One line saying why the scheduler could not be asked, or None when it answered."""
    if not problems:
        return None
    return (f"warning: the scheduler could not be asked: {'; '.join(problems)}; runs shown as unknown may "
            "still be running and are not resubmitted until it answers")


def status_warnings(status: Any) -> list[str]:
    """The warning lines of a :class:`~isoflop.scheduler_state.SweepStatus`: the scheduler
    could not be asked; some pending jobs will not start as asked."""
    warning = scheduler_warning(status.problems)
    return ([warning] if warning else []) + [f"warning: {line}" for line in status.stuck]


def run(args: argparse.Namespace) -> int:
    from isoflop.scheduler_state import sweep_status
    from isoflop.sweep_dir import SweepDir

    sweep = SweepDir.open(args.sweep_dir)
    if args.watch:
        from isoflop.commands.wait import follow

        return follow(sweep, args.interval, args.format)
    status = sweep_status(sweep)
    sys.stdout.write(render(status, args.format))
    for warning in status_warnings(status):
        print(f"isoflop status: {warning}", file=sys.stderr)
    return 0
