"""``isoflop cancel SWEEP_DIR [--run RUN_ID]...``: cancel live jobs of a sweep.

SLURM jobs are cancelled with one ``scancel`` call; local jobs get SIGINT
(submitit's cancel: the controller stops its tasks) and, if they still run
after a grace period — a process started where SIGINT is ignored, such as
under ``nohup`` or a non-interactive background shell, never sees it — the
controller and its tasks are killed. The run resumes from its last checkpoint. Each cancelled run gets
a ``cancelled`` record in its jobs.jsonl; ``submit --retry-failed`` resumes it.

Cancel holds the sweep's submission lock, so a submit in progress finishes
first and its jobs are cancelled too (it waits up to 30 s for it).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LOCAL_GRACE_S = 5.0
SUBMIT_WAIT_S = 30.0  # a local or SLURM submit holds the sweep's lock for seconds; a debug one while it trains


def stop_local_job(controller_pid: int, grace_s: float = LOCAL_GRACE_S) -> None:
    """SIGINT a local job's controller; SIGKILL it and its tasks if it outlives ``grace_s``."""
    import psutil

    from isoflop.scheduler_state import local_job_alive

    try:
        controller = psutil.Process(controller_pid)
        tasks = controller.children()
        controller.send_signal(signal.SIGINT)
    except psutil.NoSuchProcess:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not local_job_alive(str(controller_pid)):
            return
        time.sleep(0.1)
    for process in (*tasks, controller):
        try:
            process.kill()  # psutil checks the pid still names the same process
        except psutil.Error:  # gone meanwhile
            pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR", help="the folder `isoflop submit` printed")
    parser.add_argument("--run", dest="run_ids", action="append", default=None, metavar="RUN_ID",
                        help="cancel only this run (repeatable; default: every live run)")


def run(args: argparse.Namespace) -> int:
    from isoflop.errors import UserError
    from isoflop.sweep_dir import SweepDir

    sweep = SweepDir.open(args.sweep_dir)
    with contextlib.ExitStack() as held:
        try:  # no job is submitted while we cancel
            held.enter_context(sweep.submission_lock(timeout_s=SUBMIT_WAIT_S))
        except TimeoutError:
            raise UserError(f"a submit of {sweep.path} is still in progress after {SUBMIT_WAIT_S:g} s (the debug "
                            "executor trains while it submits); stop it with Ctrl-C, or cancel again once it has "
                            "ended") from None
        return cancel_live_runs(sweep, args.run_ids)


def cancel_live_runs(sweep: Any, run_ids: list[str] | None) -> int:
    """Cancel the live runs among ``run_ids`` (default: all) of ``sweep``; returns the exit status."""
    from isoflop.errors import UserError
    from isoflop.run_records import JobEvent
    from isoflop.scheduler_state import LIVE, UNKNOWN, sweep_status

    status = sweep_status(sweep)
    rows = {row.run_id: row for row in status.runs}
    unknown = [run_id for run_id in run_ids or [] if run_id not in rows]
    if unknown:
        raise UserError(f"--run {unknown[0]}: no such run in {sweep.path}; see `isoflop status {sweep.path}`")
    targets = [rows[run_id] for run_id in dict.fromkeys(run_ids or rows) if rows[run_id].state in LIVE]
    slurm_ids = [row.job_id for row in targets if row.executor == "slurm" and row.job_id]
    if slurm_ids:
        completed = subprocess.run(["scancel", *slurm_ids], capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise UserError(f"scancel failed: {' '.join(completed.stderr.split())[:300]}; "
                            "check the job ids with squeue")
    cancelled = 0
    for row in targets:
        if row.executor == "local" and row.job_id and row.job_id.isdigit():
            stop_local_job(int(row.job_id))
        run_dir = sweep.run(row.run_id)
        if run_dir.result() is not None:  # it finished before the signal reached it
            continue
        run_dir.record_event(JobEvent.now("cancelled", job_id=row.job_id))
        cancelled += 1
    print(f"cancelled {cancelled} run(s)" + (f" ({len(slurm_ids)} SLURM jobs)" if slurm_ids else ""),
          file=sys.stderr)
    unknown = [row for row in rows.values() if row.state == UNKNOWN and row.run_id in (run_ids or rows)]
    if unknown:
        print(f"left alone {len(unknown)} run(s) whose state is unknown ({'; '.join(status.problems)}); "
              "cancel them again once the scheduler answers", file=sys.stderr)
    return 0
