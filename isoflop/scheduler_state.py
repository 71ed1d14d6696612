"""Scheduler states of many jobs at once, and the state of every run of a sweep.

One call asks each scheduler once: a single ``sacct`` for every SLURM job id
(plus one ``squeue`` for ids that ``sacct`` does not know yet, as it lags the
controller by a few seconds, and for why pending jobs wait;
:mod:`isoflop.slurm_queue`), and for local jobs a look at each controller
process (psutil).
The run's own files (``result.json``, ``jobs.jsonl``, ``metrics.jsonl``)
then decide the state shown by ``isoflop status``. Torch-free.

A scheduler that cannot be asked (``sacct`` and ``squeue`` failing or timing
out, a local job of another host) is not a failed job: such runs are
``unknown``, never retried by ``submit --retry-failed`` (they may still be
running), and the reason comes back in :attr:`SweepStatus.problems`. A run
is ``failed`` only when the scheduler says so, says the job is gone (neither
in its accounting nor in its queue), or the run's own ``jobs.jsonl`` says so.
"""

from __future__ import annotations

import json
import math
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from isoflop.record_format import RecordError
from isoflop.run_records import JobEvent, PlanRow, RunResult
from isoflop.slurm_queue import SLURM_STATES, never_starts_warnings, slurm_states
from isoflop.sweep_dir import RunDir, SweepDir, last_submission

LIVE = ("pending", "running", "preempted")
TERMINAL = ("completed", "diverged", "failed", "cancelled", "blocked")
UNKNOWN = "unknown"  # the scheduler could not be asked: it may be live
STATES = ("planned", "waiting", *LIVE, UNKNOWN, *TERMINAL)
"""``waiting`` / ``blocked``: a branch whose trunk has not reached its fork step yet / has
ended without reaching it (:mod:`isoflop.forks`)."""
SUBMISSION_GRACE_S = 120.0  # a job unknown to the scheduler this soon after submission is pending
def local_job_alive(job_id: str) -> bool | None:
    """Whether the local job's controller process (pid ``job_id``) still runs: it
    exists, is no zombie, and is submitit's (a reused pid is someone else's).
    None when it cannot be told (the process is not ours to look at)."""
    try:
        process = psutil.Process(int(job_id))
        return process.status() != psutil.STATUS_ZOMBIE and "submitit" in " ".join(process.cmdline())
    except psutil.AccessDenied:
        return None
    except (ValueError, psutil.Error):  # not a pid; gone; a zombie
        return False


def scheduler_view(submissions: list[JobEvent]) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """(scheduler view by job id, why some jobs could not be asked about, squeue's reason
    by pending SLURM job id).

    Views: pending/running/preempted/ended/failed/cancelled, ``absent`` (the
    scheduler answered and knows no such job) or ``unknown`` (it could not be
    asked). ``submissions`` are ``submitted`` events of jobs.jsonl; each
    executor is asked once.
    """
    view: dict[str, str] = {}
    slurm_ids = [record.job_id for record in submissions if record.executor == "slurm"]
    raw, reasons, problems = slurm_states(slurm_ids)
    here = socket.gethostname()
    elsewhere = set()
    for record in submissions:
        job_id, executor = record.job_id, record.executor
        if executor == "slurm":
            view[job_id] = SLURM_STATES.get(raw.get(job_id, ""), UNKNOWN)
        elif executor == "local" and record.host not in (None, here):
            view[job_id] = UNKNOWN
            elsewhere.add(record.host)
        elif executor == "local":
            alive = local_job_alive(job_id)
            view[job_id] = UNKNOWN if alive is None else "running" if alive else "ended"
            if alive is None:
                problems.append(f"the process of local job {job_id} is not ours to look at")
        else:
            view[job_id] = "ended"
    problems += [f"local jobs of host {host} cannot be seen from {here}; run `isoflop status` there"
                 for host in sorted(elsewhere)]
    return view, problems, reasons


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
    submission and the scheduler's view of that job (:func:`scheduler_view`)."""
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
    if view == "absent" and now - submission.time < SUBMISSION_GRACE_S:
        return "pending"  # accounting lags the controller by a few seconds
    if view == UNKNOWN:  # only the run's own records can say it ended
        return "failed" if since_submission and since_submission[-1] == "failed" else UNKNOWN
    return "failed"


def _number(value: Any) -> float | None:
    """A metrics value if it is a finite number, None if it is null."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return value


def training_progress(run: RunDir) -> tuple[int, float | None]:
    """(steps done, last loss) from the last training record of the run's metrics.jsonl.

    Raises:
        RecordError: when that record's ``step`` is not a whole number >= 0 or its
            ``loss`` not a number (a damaged or hand-edited line).
    """
    metrics = run.last_metrics() or {}
    try:
        step = _number(metrics.get("step", 0))
        if step is None or step < 0 or not float(step).is_integer():
            raise ValueError(f"step {step!r} is not a whole number of steps")
        loss = _number(metrics.get("loss"))
    except ValueError as error:
        raise RecordError(f"{run.metrics_jsonl}: the last training record {json.dumps(metrics)[:80]} is not "
                          f"valid ({error}); remove that line") from None
    return int(step), loss


def run_status(run: RunDir, planned: PlanRow | None, events: list[JobEvent], submission: JobEvent | None,
               view: str | None, now: float) -> RunStatus:
    """One run's row of ``isoflop status``: its state, and its progress from the
    last training line of metrics.jsonl (or its result)."""
    result = run.result()
    state = run_state(result, events, submission, view, now)
    steps = planned.steps if planned else 0
    step, loss = training_progress(run)
    if result is not None:
        step = result.steps
    return RunStatus(
        run_id=run.run_id, method=planned.method if planned else "?",
        budget_flops=planned.budget if planned else 0.0, n_params=planned.n_params_total if planned else 0,
        state=state, step=step, steps=steps,
        progress=1.0 if state == "completed" else (min(1.0, step / steps) if steps else 0.0),
        last_loss=float(loss) if loss is not None else None,
        job_id=submission.job_id if submission else None, executor=submission.executor if submission else None)


@dataclass(frozen=True)
class SweepStatus:
    """Every run's row; why the scheduler could not be asked about some jobs (their runs are
    ``unknown``), empty when it answered; and why some pending jobs will not start as they
    were asked (``stuck``: one line each, naming the fix)."""

    runs: list[RunStatus]
    problems: tuple[str, ...] = ()
    stuck: tuple[str, ...] = ()


def sweep_status(sweep: SweepDir, ask_scheduler: bool = True) -> SweepStatus:
    """The status of every run (and trunk) of ``sweep``, with one scheduler query per executor
    (none without ``ask_scheduler``: only the files are read and checked, and the
    states of submitted runs without a result mean nothing).

    Raises:
        UserError: a record of the sweep cannot be read (one line naming the file).
    """
    from isoflop.forks import with_branch_states

    plan = sweep.plan_rows()
    trunks = sweep.trunk_rows()
    runs = [*(sweep.trunk(trunk_id) for trunk_id in trunks), *sweep.runs(plan)]
    events = {run.run_id: run.events() for run in runs}
    submissions = {run_id: last_submission(run_events) for run_id, run_events in events.items()}
    view, problems, reasons = scheduler_view([event for event in submissions.values() if event is not None]) \
        if ask_scheduler else ({}, [], {})
    now = time.time()
    rows = []
    for run in runs:
        submission = submissions[run.run_id]
        job_view = view.get(submission.job_id) if submission else None
        planned = trunks.get(run.run_id) or plan.get(run.run_id)
        rows.append(run_status(run, planned, events[run.run_id], submission, job_view, now))
    return SweepStatus(with_branch_states(sweep, rows, plan, trunks), tuple(dict.fromkeys(problems)),
                       tuple(never_starts_warnings(reasons, str(sweep.path))))
