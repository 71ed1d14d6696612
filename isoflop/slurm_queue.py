"""What SLURM says about jobs: their states (one ``sacct``, and ``squeue`` for what
it lags on) and why pending jobs wait, with the reasons that do not pass by
waiting named with the setting to change. Torch-free.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable

from isoflop.errors import listed

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
        shown = listed(job_ids, 3)
        if reason in NEVER_STARTS or "PerJob" in reason:
            why = NEVER_STARTS.get(reason, "it is above a per-job limit of its account or QOS (`sacctmgr show qos`)")
            warnings.append(f"SLURM will not start job(s) {shown} as asked ({reason}: {why}); cancel them "
                            f"(`isoflop cancel {sweep_path}`), then submit again with --retry-failed and settings the "
                            "partition allows (`scontrol show partition`)")
        elif reason.startswith("JobHeld"):
            warnings.append(f"SLURM job(s) {shown} are held ({reason}); `scontrol release JOB_ID` lets them start")
    return warnings
