"""Scheduler states of many jobs at once, and the state of every run of a sweep.

One call asks each scheduler once: a single ``sacct`` for every SLURM job id
(plus one ``squeue`` only for ids that ``sacct`` does not know yet; it lags
the controller by a few seconds), one scan of ``/proc`` for local jobs.
The run's own files (``result.json``, ``jobs.jsonl``, ``metrics.jsonl``)
then decide the state shown by ``isoflop status``. Torch-free.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable

from isoflop.sweep_dir import SweepDir, last_submission

LIVE = ("pending", "running", "preempted")
TERMINAL = ("completed", "diverged", "failed", "cancelled")
STATES = ("planned", *LIVE, *TERMINAL)
SUBMISSION_GRACE_S = 120.0  # a job unknown to the scheduler this soon after submission is pending

# SLURM job state (sacct/squeue) -> scheduler view
SLURM_STATES = {
    "PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "preempted", "REQUEUE_HOLD": "preempted",
    "REQUEUE_FED": "preempted", "PREEMPTED": "preempted", "SUSPENDED": "preempted", "RESIZING": "running",
    "RUNNING": "running", "COMPLETING": "running", "STAGE_OUT": "running", "SIGNALING": "running",
    "COMPLETED": "ended", "CANCELLED": "cancelled", "FAILED": "failed", "TIMEOUT": "failed",
    "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed", "BOOT_FAIL": "failed", "DEADLINE": "failed",
    "REVOKED": "cancelled", "SPECIAL_EXIT": "failed",
}
_ARRAY_RANGE = re.compile(r"^(?P<main>\d+)_\[(?P<ranges>[\d,\-]+)(%\d+)?\]$")


def expand_job_ids(job_id: str) -> list[str]:
    """``123_[0-2,5%4]`` -> ``123_0 123_1 123_2 123_5``; other ids unchanged."""
    match = _ARRAY_RANGE.match(job_id)
    if not match:
        return [job_id]
    expanded = []
    for part in match.group("ranges").split(","):
        first, _, last = part.partition("-")
        expanded += [f"{match.group('main')}_{index}" for index in range(int(first), int(last or first) + 1)]
    return expanded


def _parse_states(output: str) -> dict[str, str]:
    states: dict[str, str] = {}
    for line in output.splitlines():
        if "|" not in line:
            continue
        job_id, raw = line.split("|", 1)
        for one in expand_job_ids(job_id.strip()):
            states[one] = raw.split()[0].rstrip("+") if raw.strip() else "UNKNOWN"
    return states


def slurm_states(job_ids: Iterable[str]) -> dict[str, str]:
    """Raw SLURM state by job id: one ``sacct`` call, and one ``squeue`` for the ids it lacks."""
    job_ids = sorted(set(job_ids))
    if not job_ids:
        return {}
    states: dict[str, str] = {}
    try:
        output = subprocess.run(["sacct", "--noheader", "--parsable2", "--allocations",
                                 "--format=JobID,State", f"--jobs={','.join(job_ids)}"],
                                capture_output=True, text=True, timeout=60, check=False).stdout
        states.update(_parse_states(output))
    except (OSError, subprocess.TimeoutExpired):
        pass
    missing = [job_id for job_id in job_ids if job_id not in states]
    if missing:
        try:
            output = subprocess.run(["squeue", "--noheader", "--array", "--format=%i|%T"],
                                    capture_output=True, text=True, timeout=60, check=False).stdout
            live = _parse_states(output)
            states.update({job_id: live[job_id] for job_id in missing if job_id in live})
        except (OSError, subprocess.TimeoutExpired):
            pass
    return {job_id: states[job_id] for job_id in job_ids if job_id in states}


def proc_stat_fields(pid: int | str) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state first, then the
    parent pid, see proc(5)), or None if there is no such process."""
    try:
        with open(f"/proc/{int(pid)}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None


def local_job_alive(job_id: str) -> bool:
    """Whether the local job's controller process (pid ``job_id``) still runs."""
    fields = proc_stat_fields(job_id)
    if not fields or fields[0] in ("Z", "X"):
        return False
    try:
        with open(f"/proc/{int(job_id)}/cmdline", "rb") as handle:
            return b"submitit" in handle.read()
    except OSError:
        return False


def scheduler_view(submissions: list[dict[str, Any]]) -> dict[str, str]:
    """Scheduler view (pending/running/preempted/ended/failed/cancelled/unknown) by job id.

    ``submissions`` are ``submitted`` records of jobs.jsonl; each executor is asked once.
    """
    view: dict[str, str] = {}
    slurm_ids = [record["job_id"] for record in submissions if record.get("executor") == "slurm"]
    raw = slurm_states(slurm_ids)
    for record in submissions:
        job_id, executor = record["job_id"], record.get("executor")
        if executor == "slurm":
            view[job_id] = SLURM_STATES.get(raw.get(job_id, ""), "unknown")
        elif executor == "local":
            view[job_id] = "running" if local_job_alive(job_id) else "ended"
        else:
            view[job_id] = "ended"
    return view


@dataclass(frozen=True)
class RunStatus:
    """One row of ``isoflop status``."""

    run_id: str
    method: str
    budget_flops: float
    n_params: int
    state: str
    step: int
    steps: int
    progress: float
    last_loss: float | None
    job_id: str | None
    executor: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_state(result: dict[str, Any] | None, events: list[dict[str, Any]], submission: dict[str, Any] | None,
              view: str | None, now: float) -> str:
    """The state of one run from its result.json, its jobs.jsonl records, its last
    submission and the scheduler's view of that job."""
    if result is not None:
        status = result.get("status")
        return status if status in ("completed", "diverged") else "failed"
    if submission is None:
        return "planned"
    job_id = submission["job_id"]
    events = [event.get("event") for event in events
              if event.get("job_id") == job_id and event.get("time", 0) >= submission.get("time", 0)]
    if view in ("pending", "running") and submission.get("executor") == "local":
        view = "running" if "started" in events else "pending"
    if view == "pending" and "checkpointed" in events:
        return "preempted"
    if view == "running" and events and events[-1] == "checkpointed":
        return "preempted"
    if view in LIVE:
        return view
    if "cancelled" in events or view == "cancelled":
        return "cancelled"
    if view == "unknown" and now - float(submission.get("time", 0)) < SUBMISSION_GRACE_S:
        return "pending"
    return "failed"


def sweep_status(sweep: SweepDir) -> list[RunStatus]:
    """The status of every run of ``sweep``, with one scheduler query per executor."""
    plan = sweep.plan_rows()
    runs = list(sweep.runs(plan))
    events = {run.run_id: run.events() for run in runs}
    submissions = {run_id: last_submission(records) for run_id, records in events.items()}
    view = scheduler_view([record for record in submissions.values() if record is not None])
    now = time.time()
    rows = []
    for run in runs:
        row = plan.get(run.run_id, {})
        submission = submissions[run.run_id]
        job_id = submission["job_id"] if submission else None
        result = run.result()
        state = run_state(result, events[run.run_id], submission, view.get(job_id) if job_id else None, now)
        steps = int(float(row.get("steps", 0) or 0))
        metrics = run.last_metrics() or {}
        step = int(metrics.get("step", 0))
        if state in ("completed", "diverged") and result is not None:
            step = int(result.get("steps", step) or step)
        loss = metrics.get("loss")
        progress = 1.0 if state == "completed" else (min(1.0, step / steps) if steps else 0.0)
        rows.append(RunStatus(
            run_id=run.run_id, method=row.get("method", "?"), budget_flops=float(row.get("budget", 0) or 0),
            n_params=int(float(row.get("n_params_total", 0) or 0)), state=state, step=step, steps=steps,
            progress=progress, last_loss=float(loss) if loss is not None else None, job_id=job_id,
            executor=submission.get("executor") if submission else None))
    return rows
