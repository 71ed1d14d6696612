"""Scheduler states of many jobs at once, and the state of every run of a sweep.

One call asks each scheduler once: a single ``sacct`` for every SLURM job id
(plus one ``squeue`` only for ids that ``sacct`` does not know yet; it lags
the controller by a few seconds), and for local jobs a look at each
controller process (psutil).
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
import re
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import psutil

from isoflop.record_format import RecordError
from isoflop.run_records import JobEvent, PlanRow, RunResult
from isoflop.sweep_dir import RunDir, SweepDir, last_submission

LIVE = ("pending", "running", "preempted")
TERMINAL = ("completed", "diverged", "failed", "cancelled", "blocked")
UNKNOWN = "unknown"  # the scheduler could not be asked: it may be live
STATES = ("planned", "waiting", *LIVE, UNKNOWN, *TERMINAL)
"""``waiting`` / ``blocked``: a branch whose trunk has not reached its fork step yet / has
ended without reaching it (:mod:`isoflop.forks`)."""
SUBMISSION_GRACE_S = 120.0  # a job unknown to the scheduler this soon after submission is pending
SCHEDULER_TIMEOUT_S = 60.0
ABSENT = "ABSENT"  # raw state of a job that neither sacct nor squeue lists (both answered)

# SLURM job state (sacct/squeue) -> scheduler view
SLURM_STATES = {
    "PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "preempted", "REQUEUE_HOLD": "preempted",
    "REQUEUE_FED": "preempted", "PREEMPTED": "preempted", "SUSPENDED": "preempted", "RESIZING": "running",
    "RUNNING": "running", "COMPLETING": "running", "STAGE_OUT": "running", "SIGNALING": "running",
    "COMPLETED": "ended", "CANCELLED": "cancelled", "FAILED": "failed", "TIMEOUT": "failed",
    "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed", "BOOT_FAIL": "failed", "DEADLINE": "failed",
    "REVOKED": "cancelled", "SPECIAL_EXIT": "failed", ABSENT: "absent",
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


def _parse_rows(output: str) -> dict[str, list[str]]:
    """``JOBID|STATE[|REASON]`` lines of sacct/squeue -> fields after the id, by (expanded) job
    id; the state is its first word (``CANCELLED by 0`` -> ``CANCELLED``)."""
    rows: dict[str, list[str]] = {}
    for line in output.splitlines():
        if "|" not in line:
            continue
        job_id, *fields = line.split("|")
        fields[0] = fields[0].split()[0].rstrip("+") if fields[0].strip() else "UNKNOWN"
        for one in expand_job_ids(job_id.strip()):
            rows[one] = [field.strip() for field in fields]
    return rows


def ask_scheduler(command: list[str]) -> tuple[str | None, str | None]:
    """(standard output, None) of a scheduler command, or (None, why it could not be asked)."""
    name = command[0]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=SCHEDULER_TIMEOUT_S,
                                   check=False)
    except FileNotFoundError:
        return None, f"`{name}` is not on PATH"
    except OSError as error:
        return None, f"`{name}` could not run ({error.strerror})"
    except subprocess.TimeoutExpired:
        return None, f"`{name}` did not answer within {SCHEDULER_TIMEOUT_S:g} s"
    if completed.returncode != 0:
        said = " ".join(completed.stderr.split())[:200] or "no message"
        return None, f"`{name}` failed with exit status {completed.returncode} ({said})"
    return completed.stdout, None


def slurm_states(job_ids: Iterable[str]) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(raw SLURM state by job id, squeue's reason by pending job id, why some could not be
    asked): one ``sacct`` call, and one ``squeue`` for the ids it lacks and the reasons of
    pending jobs (sacct's lag). A job that neither lists although both answered is
    :data:`ABSENT`; a job missing from the states could not be asked about."""
    job_ids = sorted(set(job_ids))
    if not job_ids:
        return {}, {}, []
    states: dict[str, str] = {}
    reasons: dict[str, str] = {}
    problems = []
    output, problem = ask_scheduler(["sacct", "--noheader", "--parsable2", "--allocations",
                                     "--format=JobID,State", f"--jobs={','.join(job_ids)}"])
    if problem is None:
        states.update({job_id: fields[0] for job_id, fields in _parse_rows(output or "").items()})
    else:
        problems.append(problem)
    missing = [job_id for job_id in job_ids if job_id not in states]
    if missing or any(states.get(job_id) == "PENDING" for job_id in job_ids):
        output, problem = ask_scheduler(["squeue", "--noheader", "--array", "--format=%i|%T|%r"])
        if problem is None:
            queue = _parse_rows(output or "")
            states.update({job_id: queue[job_id][0] if job_id in queue else ABSENT for job_id in missing})
            reasons = {job_id: queue[job_id][-1] for job_id in job_ids
                       if job_id in queue and queue[job_id][0] == "PENDING" and len(queue[job_id]) > 1}
        else:
            problems.append(problem)
    return {job_id: states[job_id] for job_id in job_ids if job_id in states}, reasons, problems


# squeue's reasons for a pending job that it will not start as it was asked, and the
# settings that asked it (https://slurm.schedmd.com/job_reason_codes.html)
NEVER_STARTS = {
    "PartitionConfig": "it asks for more than the partition's nodes have: cluster.cpus_per_task, "
                       "tasks_per_node, gpus_per_node, mem_gb",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows: cluster.nodes",
    "PartitionTimeLimit": "its time limit is above the partition's: cluster.timeout_min",
    "BadConstraints": "no node satisfies what it asks: cluster.constraint, gpus_per_node, mem_gb",
    "AccountNotAllowed": "the partition does not take its account: cluster.account",
    "InvalidAccount": "its account is not valid: cluster.account",
    "QOSNotAllowed": "the partition does not take its QOS: cluster.qos",
    "InvalidQOS": "its QOS is not valid: cluster.qos",
    "DependencyNeverSatisfied": "it depends on a job that will never end as required",
}


def never_starts_warnings(reasons: dict[str, str], sweep_path: str) -> list[str]:
    """One line per reason for SLURM jobs pending for a reason that does not pass on its own
    (:data:`NEVER_STARTS`, a per-job limit of the account or QOS, a hold), naming the fix."""
    by_reason: dict[str, list[str]] = {}
    for job_id, reason in sorted(reasons.items(), key=lambda item: [int(n) for n in re.findall(r"\d+", item[0])]):
        by_reason.setdefault(reason, []).append(job_id)
    warnings = []
    for reason, job_ids in by_reason.items():
        shown = ", ".join(job_ids[:3]) + (f" and {len(job_ids) - 3} more" if len(job_ids) > 3 else "")
        if reason in NEVER_STARTS or "PerJob" in reason:
            why = NEVER_STARTS.get(reason, "it is above a per-job limit of its account or QOS (`sacctmgr show qos`)")
            warnings.append(f"SLURM will not start job(s) {shown} as asked ({reason}: {why}); cancel them "
                            f"(`isoflop cancel {sweep_path}`), then submit again with --retry-failed and settings the "
                            "partition allows (`scontrol show partition`)")
        elif reason.startswith("JobHeld"):
            warnings.append(f"SLURM job(s) {shown} are held ({reason}); `scontrol release JOB_ID` lets them start")
    return warnings


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
