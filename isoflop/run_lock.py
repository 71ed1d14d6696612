"""One live writer per run directory: a lock the trainer holds for its whole life.

``<run_dir>/train.lock`` is locked with ``flock`` (exclusive, non-blocking)
by the process that trains the run (rank 0 of a multi-process run) before it
reads a checkpoint or writes anything, and released when it ends. While
locked, the file holds who holds it (JSON: host, pid, job id, since), so a
second ``isoflop train`` on the same folder can say who is training it and
exit with status 2 instead of pruning the first one's checkpoints.

A lock left by a process that died (``kill -9``, a node that lost power) is
no lock: the kernel releases an ``flock`` with the last descriptor of the
process that held it, so the next trainer takes it over; the stale holder
record is simply overwritten. On network file systems ``flock`` works where
the file system supports locks across hosts (NFSv4, Lustre mounted with
``flock``, GPFS); a file system mounted without lock support refuses it
(``ENOLCK``), which is reported as such. Torch-free.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from isoflop.errors import UserError, file_system_error

if TYPE_CHECKING:
    from isoflop.distributed import DistributedContext

LOCK_FILE = "train.lock"


def current_job_id() -> str | None:
    """The scheduler's id of the job this process runs in (submitit or SLURM), if any."""
    if "SUBMITIT_EXECUTOR" in os.environ:
        import submitit

        return str(submitit.JobEnvironment().job_id)
    if "SLURM_ARRAY_JOB_ID" in os.environ and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def describe_holder(text: str) -> str:
    """``pid 12 on host n1 (job 7_3) since 2024-05-01 10:00:00`` from a lock file's record."""
    try:
        holder = json.loads(text)
        pid, host, job_id, since = holder["pid"], holder["host"], holder.get("job_id"), holder["since"]
    except (ValueError, TypeError, KeyError):
        return "another process (it has not written its name yet)"
    job = f" (job {job_id})" if job_id else ""
    return f"pid {pid} on host {host}{job} since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}"


class RunLock:
    """The exclusive lock of one run directory, held from :meth:`acquire` to :meth:`release`.

    Use it as a context manager. Acquiring also checks that the folder can be
    written (a read-only folder is refused before any training is done).

    Raises (on entering):
        UserError: another live process holds the lock (named), or the folder
            cannot be written or locked.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._descriptor: int | None = None

    def acquire(self) -> None:
        try:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise file_system_error(error, f"lock the run folder {self.run_dir}") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(descriptor, 4096, 0).decode(errors="replace")
            os.close(descriptor)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(f"{self.run_dir} is being trained by {describe_holder(holder)}; one run folder "
                                "takes one trainer: wait for it to end, or stop it (isoflop cancel) and run "
                                "this again") from None
            raise file_system_error(error, f"lock the run folder {self.run_dir}") from None
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "job_id": current_job_id(),
                             "since": time.time()}).encode()
        try:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, record, 0)
            os.fsync(descriptor)
            probe = self.run_dir / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as error:
            os.close(descriptor)
            raise file_system_error(error, f"write in the run folder {self.run_dir}") from None
        self._descriptor = descriptor

    def release(self) -> None:
        """Unlock (the holder record stays; it names the last holder and locks nothing)."""
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the last descriptor releases the flock
            self._descriptor = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, error_type: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()


@contextlib.contextmanager
def exclusive_writer(run_dir: Path, context: DistributedContext) -> Iterator[None]:
    """Hold the run folder's :class:`RunLock` on rank 0 while the block runs; every rank
    learns whether rank 0 got it, so all of them stop together when another trainer holds it."""
    lock = RunLock(run_dir) if context.is_main else None
    problem: UserError | None = None
    if lock is not None:
        try:
            lock.acquire()
        except UserError as error:
            problem = error
    try:
        if not context.all_ranks(problem is None):
            raise problem or UserError(f"rank 0 could not lock the run folder {run_dir} (its log says why); "
                                       "wait for the other trainer to end, then run this again")
        yield
    finally:
        if lock is not None:
            lock.release()
