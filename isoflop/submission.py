"""Submitting runs through submitit: executors, the code snapshot, the job.

Every run becomes one :class:`RunJob`, a ``submitit.helpers.Checkpointable``:
on preemption or timeout, submitit's signal handler calls
:meth:`RunJob.checkpoint`, which saves the run in progress
(:func:`isoflop.preemption.checkpoint_active_run`; the trainer holds the
signal until the step in flight has finished) and requeues the same job; the
requeued job resumes from ``checkpoints/``.
Timeouts are requeued at most ``cluster.max_requeues`` times (submitit's
``max_num_timeout``); preemptions always are.

Jobs run the code as of submission: the importable packages are copied to
``<sweep>/code/<hash>/`` and put first on the job's ``PYTHONPATH``, and the
hash is recorded with each submission. This module imports no torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from isoflop.errors import UserError
from isoflop.preemption import checkpoint_active_run
from isoflop.run_records import JobEvent, RunResult
from isoflop.study_config import ClusterConfig
from isoflop.sweep_dir import RunDir, SweepDir

SNAPSHOT_PACKAGES = ("isoflop", "models", "kernels")
SNAPSHOT_SUFFIXES = (".py", ".c", ".h")  # the C kernels are built from the snapshot (kernels/compiled.py)
SLOT_POLL_SECONDS = 0.5
SIGNAL_DELAY_S = 120  # SIGUSR2 this long before the time limit: time to checkpoint


def package_version() -> str:
    from isoflop import __version__

    return __version__


def snapshot_code(sweep: SweepDir) -> tuple[str, Path]:
    """Copy the packages jobs import into ``code/<hash>/``; returns (hash, folder).

    The hash covers every ``.py``, ``.c`` and ``.h`` file's path and bytes, so an unchanged
    checkout reuses its snapshot.
    """
    source_root = Path(__file__).resolve().parents[1]
    files = sorted(path for package in SNAPSHOT_PACKAGES if (source_root / package).is_dir()
                   for path in (source_root / package).rglob("*")
                   if path.suffix in SNAPSHOT_SUFFIXES and "__pycache__" not in path.parts)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(source_root)).encode() + b"\0" + path.read_bytes() + b"\0")
    code_hash = digest.hexdigest()[:12]
    target = sweep.code_dir / code_hash
    if not target.is_dir():
        staging = sweep.code_dir / f".{code_hash}.{os.getpid()}"
        for path in files:
            destination = staging / path.relative_to(source_root)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
        try:
            os.replace(staging, target)
        except OSError:  # another submit made it first
            shutil.rmtree(staging, ignore_errors=True)
    return code_hash, target


def _in_submitit_job() -> bool:
    return "SUBMITIT_EXECUTOR" in os.environ


def _job_id(default: str = "in-process") -> str:
    return str(submitit.JobEnvironment().job_id) if _in_submitit_job() else default


def _global_rank() -> int:
    return int(submitit.JobEnvironment().global_rank) if _in_submitit_job() else 0


class RunJob(Checkpointable):
    """Trains (or resumes) one run; pickled by submitit, so it holds only paths and the spec.

    Args:
        spec: the RunSpec as a dict (``run.json``).
        run_dir: the run's folder.
        in_process_job_id: the job id recorded when not inside a submitit job (debug).
        slots_dir: for local jobs, the folder of ``max_parallel`` lock files a job
            must hold one of to train (a job waiting for a slot shows as pending).
        max_parallel: number of slots.
    """

    def __init__(self, spec: dict[str, Any], run_dir: str, slots_dir: str | None = None,
                 max_parallel: int = 1, in_process_job_id: str = "in-process") -> None:
        self.spec = spec
        self.in_process_job_id = in_process_job_id
        self.run_dir = run_dir
        self.slots_dir = slots_dir
        self.max_parallel = max_parallel

    def __call__(self) -> RunResult:
        run = RunDir(Path(self.run_dir))
        rank = _global_rank()
        job_id = _job_id(self.in_process_job_id)
        slot = self._acquire_slot(job_id) if rank == 0 else None
        if rank == 0:
            run.record_event(JobEvent.now("started", job_id=job_id, host=socket.gethostname(), pid=os.getpid(),
                                          code=str(Path(__file__).resolve().parents[1])))
            self._link_logs(run)
        else:
            self._wait_for_slot(job_id)
        try:
            from isoflop import train
            from isoflop.run_spec import RunSpec

            result = train.run(RunSpec.from_dict(self.spec), Path(self.run_dir))
        except BaseException as error:
            # SystemExit: submitit's requeue; KeyboardInterrupt: the SIGINT of `isoflop cancel`,
            # which records `cancelled` itself. Neither is a failure of the run.
            if rank == 0 and not isinstance(error, (SystemExit, KeyboardInterrupt)):
                # A preempting scheduler may requeue the job itself first, so that
                # submitit's own `scontrol requeue` is refused: not a failure of the run.
                refused = isinstance(error, subprocess.CalledProcessError) and "requeue" in error.cmd
                run.record_event(JobEvent.now("requeue_refused" if refused else "failed", job_id=job_id,
                                              error=f"{type(error).__name__}: {error}"[:500]))
            raise
        finally:
            if slot is not None:
                slot.close()
        if rank == 0:
            run.record_event(JobEvent.now("finished", job_id=job_id, status=result.status))
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Save the run in progress, then requeue this same job (submitit's hook)."""
        saved = checkpoint_active_run()
        if _global_rank() == 0:
            RunDir(Path(self.run_dir)).record_event(
                JobEvent.now("checkpointed", job_id=_job_id(self.in_process_job_id), saved=saved))
        return super().checkpoint(*args, **kwargs)

    def _acquire_slot(self, job_id: str) -> SlotHold | None:
        """Block until one of the ``max_parallel`` slot locks is free (local executor).

        A job holds one slot whatever its number of tasks: rank 0 takes it and
        marks it ``<job id>.held``, which the other ranks wait for.
        """
        if self.slots_dir is None:
            return None
        folder = Path(self.slots_dir)
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            for index in range(self.max_parallel):
                handle = open(folder / f"{index}.lock", "a")  # noqa: SIM115 - held until the run ends
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return SlotHold(handle, folder / f"{job_id}.held")
                except BlockingIOError:
                    handle.close()
            time.sleep(SLOT_POLL_SECONDS)

    def _wait_for_slot(self, job_id: str) -> None:
        """Ranks other than 0 of a local job start training once rank 0 holds the job's slot."""
        if self.slots_dir is None:
            return
        while not (Path(self.slots_dir) / f"{job_id}.held").exists():
            time.sleep(SLOT_POLL_SECONDS)

    @staticmethod
    def _link_logs(run: RunDir) -> None:
        if not _in_submitit_job():
            return
        paths = submitit.JobEnvironment().paths
        run.logs.mkdir(parents=True, exist_ok=True)
        for source in (paths.stdout, paths.stderr):
            link = run.logs / source.name
            if not link.exists():
                try:
                    link.symlink_to(source)
                except OSError:
                    pass


class SlotHold:
    """A held slot lock of the local executor and its ``<job id>.held`` mark (see
    :meth:`RunJob._acquire_slot`); :meth:`close` releases both."""

    def __init__(self, handle: Any, mark: Path) -> None:
        self.handle, self.mark = handle, mark
        mark.touch()

    def close(self) -> None:
        self.mark.unlink(missing_ok=True)
        self.handle.close()


def _python_command(snapshot: Path, threads_per_task: int) -> str:
    """The job's interpreter, with the code snapshot first on its import path.

    ``PYTHONSAFEPATH`` keeps ``python -m`` from putting the working directory
    (often a checkout that keeps changing) ahead of the snapshot.
    """
    import shlex

    python_path = os.pathsep.join(filter(None, [str(snapshot), os.environ.get("PYTHONPATH", "")]))
    # Threads per task = the CPUs the scheduler gives it: torch and BLAS otherwise
    # start one thread per core of the machine, and jobs that share the machine
    # (local max_parallel, or SLURM jobs on one node) slow each other down several-fold.
    threads = [f"{name}={threads_per_task}" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                         "OPENBLAS_NUM_THREADS")]
    return shlex.join(["env", "PYTHONSAFEPATH=1", f"PYTHONPATH={python_path}", *threads, sys.executable])


def make_executor(cluster: ClusterConfig, sweep: SweepDir, snapshot: Path) -> submitit.Executor:
    """A submitit executor (local or slurm) writing into ``<sweep>/submitit/``."""
    folder = sweep.submitit_dir
    python = _python_command(snapshot, cluster.cpus_per_task)
    if cluster.executor == "local":
        executor = submitit.LocalExecutor(folder, max_num_timeout=cluster.max_requeues, python=python)
        executor.update_parameters(timeout_min=cluster.timeout_min, tasks_per_node=cluster.tasks_per_node,
                                   gpus_per_node=cluster.gpus_per_node)
        return executor
    if shutil.which("sbatch") is None:
        raise UserError("cluster=slurm: no `sbatch` on PATH, so jobs cannot be submitted to SLURM; run "
                        "on a SLURM login node or use cluster=local")
    executor = submitit.SlurmExecutor(folder, max_num_timeout=cluster.max_requeues, python=python)
    parameters: dict[str, Any] = {
        "job_name": f"isoflop-{sweep.path.name}", "nodes": cluster.nodes,
        "ntasks_per_node": cluster.tasks_per_node, "cpus_per_task": cluster.cpus_per_task,
        "time": cluster.timeout_min, "array_parallelism": cluster.array_parallelism,
        "signal_delay_s": SIGNAL_DELAY_S,
        "additional_parameters": dict(cluster.additional_parameters),
    }
    optional = {"partition": cluster.partition, "account": cluster.account, "qos": cluster.qos,
                "constraint": cluster.constraint,
                "gpus_per_node": cluster.gpus_per_node or None,
                "mem": f"{int(cluster.mem_gb * 1024)}M" if cluster.mem_gb else None}
    parameters.update({key: value for key, value in optional.items() if value is not None})
    executor.update_parameters(**parameters)
    return executor


def _scheduler_error(error: Exception) -> str:
    """The scheduler's own words from a failed submission, on one line."""
    text = getattr(error, "output", None) or getattr(error, "stderr", None) or str(error)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line.strip() for line in str(text).splitlines() if "error" in line.lower()]
    return (" / ".join(dict.fromkeys(lines)) if lines else " ".join(str(text).split()))[:300]


@contextlib.contextmanager
def _standard_streams_closed_to_children():  # noqa: ANN202 - a context manager
    """Point file descriptors 1 and 2 at /dev/null while local jobs are started.

    submitit's local controllers inherit this process's descriptors; a job
    holding ``isoflop submit``'s stdout open would keep ``isoflop submit | tail``
    waiting until every job ended. The jobs write their own log files.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in (*saved, null):
            os.close(descriptor)


def submit_runs(cluster: ClusterConfig, sweep: SweepDir, runs: list[tuple[RunDir, dict[str, Any]]]
                ) -> list[JobEvent]:
    """Submit one job per (run folder, spec dict); SLURM gets a single job array.

    Each submission is appended to the run's ``jobs.jsonl`` as soon as its job
    id is known. ``debug`` runs every job in this process before returning.
    """
    if not runs:
        return []
    code_hash, snapshot = snapshot_code(sweep)
    if cluster.executor == "debug":
        return _run_in_process(sweep, runs, code_hash)
    executor = make_executor(cluster, sweep, snapshot)
    slots = str(sweep.path / "slots") if cluster.executor == "local" else None
    jobs_to_submit = [RunJob(spec, str(run.path), slots, cluster.max_parallel) for run, spec in runs]
    scheduler_output = io.StringIO()  # submitit echoes sbatch's stderr; the error below says it once
    try:
        detach = _standard_streams_closed_to_children() if cluster.executor == "local" else contextlib.nullcontext()
        with detach, contextlib.redirect_stderr(scheduler_output), executor.batch():
            jobs = [executor.submit(job) for job in jobs_to_submit]
    except (subprocess.CalledProcessError, submitit.core.utils.FailedSubmissionError,
            submitit.core.utils.FailedJobError, OSError) as error:
        raise UserError(f"the scheduler refused the jobs: {_scheduler_error(error)}; check the cluster "
                        "settings (cluster.partition, account, qos, ...) in conf/cluster/") from None
    submissions = []
    for (run, _), job in zip(runs, jobs):
        submission = _submitted(str(job.job_id), cluster.executor, code_hash)
        run.record_event(submission)
        submissions.append(submission)
    return submissions


def _submitted(job_id: str, executor: str, code_hash: str) -> JobEvent:
    """The ``submitted`` event of a job that runs the snapshot ``code_hash``."""
    return JobEvent.now("submitted", job_id=job_id, executor=executor, code_hash=code_hash,
                        isoflop_version=package_version(), host=socket.gethostname())


def _run_in_process(sweep: SweepDir, runs: list[tuple[RunDir, dict[str, Any]]], code_hash: str
                    ) -> list[JobEvent]:
    """The ``debug`` executor: every run in this process, one after another.

    It runs the checkout's code (not the snapshot); a failing run is recorded
    as failed and the next one starts.
    """
    submissions = []
    for index, (run, spec) in enumerate(runs):
        submission = _submitted(f"debug-{os.getpid()}-{int(time.time())}-{index}", "debug", code_hash)
        run.record_event(submission)
        submissions.append(submission)
        try:
            RunJob(spec, str(run.path), in_process_job_id=submission.job_id)()
        except Exception:  # noqa: BLE001 - recorded in jobs.jsonl; the next run still trains
            pass
    return submissions
