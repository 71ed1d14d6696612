"""``isoflop cancel SWEEP_DIR [--run RUN_ID]...``: cancel live jobs of a sweep.

SLURM jobs are cancelled with one ``scancel`` call; local jobs get SIGINT
(submitit's cancel: the controller stops its tasks). Each cancelled run gets
a ``cancelled`` record in its jobs.jsonl; ``submit --retry-failed`` resumes it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR", help="the folder `isoflop submit` printed")
    parser.add_argument("--run", dest="run_ids", action="append", default=None, metavar="RUN_ID",
                        help="cancel only this run (repeatable; default: every live run)")


def run(args: argparse.Namespace) -> int:
    from isoflop.errors import UserError
    from isoflop.scheduler_state import LIVE, sweep_status
    from isoflop.sweep_dir import SweepDir

    sweep = SweepDir.open(args.sweep_dir)
    rows = {row.run_id: row for row in sweep_status(sweep)}
    unknown = [run_id for run_id in args.run_ids or [] if run_id not in rows]
    if unknown:
        raise UserError(f"--run {unknown[0]}: no such run in {sweep.path}; see `isoflop status {sweep.path}`")
    targets = [rows[run_id] for run_id in (args.run_ids or rows) if rows[run_id].state in LIVE]
    slurm_ids = [row.job_id for row in targets if row.executor == "slurm" and row.job_id]
    if slurm_ids:
        completed = subprocess.run(["scancel", *slurm_ids], capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise UserError(f"scancel failed: {' '.join(completed.stderr.split())[:300]}; "
                            "check the job ids with squeue")
    for row in targets:
        if row.executor == "local" and row.job_id:
            try:
                os.kill(int(row.job_id), signal.SIGINT)
            except (ProcessLookupError, ValueError):
                pass
        sweep.run(row.run_id).record_event("cancelled", job_id=row.job_id)
    print(f"cancelled {len(targets)} run(s)" + (f" ({len(slurm_ids)} SLURM jobs)" if slurm_ids else ""),
          file=sys.stderr)
    return 0
