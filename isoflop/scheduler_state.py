"""Scheduler states of many jobs at once, and the state of every run of a sweep.

One call asks each scheduler once: a single ``sacct`` for every SLURM job id
(plus one ``squeue`` only for ids that ``sacct`` does not know yet; it lags
the controller by a few seconds), and for local jobs a look at each
controller process (psutil).
The run's own files (``result.json``, ``jobs.jsonl``, ``metrics.jsonl``)
then decide the state shown by ``isoflop status``. Torch-free.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import psutil

from isoflop.run_records import JobEvent, PlanRow, RunResult
from isoflop.sweep_dir import RunDir, SweepDir, last_submission

LIVE = ("pending", "running", "preempted")
TERMINAL = ("completed", "diverged", "failed", "cancelled", "blocked")
STATES = ("planned", "waiting", *LIVE, *TERMINAL)
"""``waiting`` / ``blocked``: a branch whose trunk has not reached its fork step yet / has
ended without reaching it (:mod:`isoflop.forks`)."""
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


def local_job_alive(job_id: str) -> bool:
    """Whether the local job's controller process (pid ``job_id``) still runs: it
    exists, is no zombie, and is submitit's (a reused pid is someone else's)."""
    try:
        process = psutil.Process(int(job_id))
        return process.status() != psutil.STATUS_ZOMBIE and "submitit" in " ".join(process.cmdline())
    except (ValueError, psutil.Error):  # not a pid; gone; a zombie; not ours to look at
        return False


def scheduler_view(submissions: list[JobEvent]) -> dict[str, str]:
    """Scheduler view (pending/running/preempted/ended/failed/cancelled/unknown) by job id.

    ``submissions`` are ``submitted`` events of jobs.jsonl; each executor is asked once.
    """
    view: dict[str, str] = {}
    slurm_ids = [record.job_id for record in submissions if record.executor == "slurm"]
    raw = slurm_states(slurm_ids)
    for record in submissions:
        job_id, executor = record.job_id, record.executor
        if executor == "slurm":
            view[job_id] = SLURM_STATES.get(raw.get(job_id, ""), "unknown")
        elif executor == "local":
            view[job_id] = "running" if local_job_alive(job_id) else "ended"
        else:
            view[job_id] = "ended"
    return view


@dataclass(frozen=True)
class RunStatus:
    """One row of ``isoflop status``. ``role``: ``run``, or ``trunk`` / ``branch`` with
    cooldown branches; ``waits_for``: what a waiting branch waits for."""

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
    role: str = "run"
    waits_for: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_state(result: RunResult | None, events: list[JobEvent], submission: JobEvent | None,
              view: str | None, now: float) -> str:
    """The state of one run from its result.json, its jobs.jsonl events, its last
    submission and the scheduler's view of that job."""
    if result is not None:
        return result.status
    if submission is None:
        return "planned"
    since_submission = [event.event for event in events
                        if event.job_id == submission.job_id and event.time >= submission.time]
    if view in ("pending", "running") and submission.executor == "local":
        view = "running" if "started" in since_submission else "pending"
    if view == "pending" and "checkpointed" in since_submission:
        return "preempted"
    if view == "running" and since_submission and since_submission[-1] == "checkpointed":
        return "preempted"
    if view in LIVE:
        return view
    if "cancelled" in since_submission or view == "cancelled":
        return "cancelled"
    if view == "unknown" and now - submission.time < SUBMISSION_GRACE_S:
        return "pending"
    return "failed"


def _number(value: Any) -> float | None:
    """A metrics value if it is a number (a hand-edited or damaged line may hold anything)."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def run_status(run: RunDir, planned: PlanRow | None, events: list[JobEvent], submission: JobEvent | None,
               view: str | None, now: float) -> RunStatus:
    """One run's row of ``isoflop status``: its state, and its progress from the
    last training line of metrics.jsonl (or its result)."""
    result = run.result()
    state = run_state(result, events, submission, view, now)
    steps = planned.steps if planned else 0
    metrics = run.last_metrics() or {}
    step = int(_number(metrics.get("step")) or 0)
    if result is not None:
        step = result.steps
    loss = _number(metrics.get("loss"))
    return RunStatus(
        run_id=run.run_id, method=planned.method if planned else "?",
        budget_flops=planned.budget if planned else 0.0, n_params=planned.n_params_total if planned else 0,
        state=state, step=step, steps=steps,
        progress=1.0 if state == "completed" else (min(1.0, step / steps) if steps else 0.0),
        last_loss=float(loss) if loss is not None else None,
        job_id=submission.job_id if submission else None, executor=submission.executor if submission else None)


def sweep_status(sweep: SweepDir) -> list[RunStatus]:
    """The status of every run (and trunk) of ``sweep``, with one scheduler query per executor."""
    from isoflop.forks import with_branch_states

    plan = sweep.plan_rows()
    trunks = sweep.trunk_rows()
    runs = [*(sweep.trunk(trunk_id) for trunk_id in trunks), *sweep.runs(plan)]
    events = {run.run_id: run.events() for run in runs}
    submissions = {run_id: last_submission(run_events) for run_id, run_events in events.items()}
    view = scheduler_view([event for event in submissions.values() if event is not None])
    now = time.time()
    rows = []
    for run in runs:
        submission = submissions[run.run_id]
        job_view = view.get(submission.job_id) if submission else None
        planned = trunks.get(run.run_id) or plan.get(run.run_id)
        rows.append(run_status(run, planned, events[run.run_id], submission, job_view, now))
    return with_branch_states(sweep, rows, plan, trunks)
