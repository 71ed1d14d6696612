"""Shared fixtures: the orchestration test sweep and a real single-node SLURM cluster.

The SLURM cluster is started by ``scripts/slurm/start.sh`` (CI runs it before
pytest); tests marked ``slurm`` skip with the reason when none answers.
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread per process: the suite runs several training processes
# at once on small machines, and oversubscribed BLAS threads slow the
# optimisers' small matrix work by an order of magnitude. Set before numpy loads.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

# The tokenized-corpus cache (isoflop.token_cache) of the suite's own: shared by the suite's
# training processes, never the user's ~/.cache, and removed when the suite ends (~120 MB).
import atexit  # noqa: E402
import shutil as _shutil  # noqa: E402
import tempfile  # noqa: E402

if "ISOFLOP_CACHE_DIR" not in os.environ:
    os.environ["ISOFLOP_CACHE_DIR"] = tempfile.mkdtemp(prefix="isoflop-test-cache-")
    atexit.register(_shutil.rmtree, os.environ["ISOFLOP_CACHE_DIR"], ignore_errors=True)

# Triton kernels run on the CPU interpreter when there is no GPU; the variable
# must be set before anything imports triton (see tests/kernel_support.py).
import kernel_support  # noqa: E402,F401

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from isoflop.cli import main
from isoflop.atomic_files import read_jsonl

REPOSITORY = Path(__file__).resolve().parents[1]
SWEEP = "orchestration_test"
LONG_RUN = ("--budget", "3e10", "ladder.shapes=[[1,32,2]]")  # one run of 1731 steps (~4 s of training), to interrupt


def isoflop(*argv: str) -> int:
    """Run the ``isoflop`` CLI in this process; returns its exit status."""
    return main([str(arg) for arg in argv])


def heavy_imports(modules: tuple[str, ...], heavy: tuple[str, ...]) -> list[str]:
    """Which of ``heavy`` a fresh interpreter has loaded after importing ``modules``."""
    code = (f"import sys, {', '.join(modules)}; "
            f"print(','.join(name for name in {heavy!r} if name in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True,
                               check=True)
    return [name for name in completed.stdout.strip().split(",") if name]


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def events(run_dir: Path) -> list[dict]:
    """Records of the run's jobs.jsonl (a line being written is skipped)."""
    return read_jsonl(run_dir / "jobs.jsonl")


def metrics(run_dir: Path) -> list[dict]:
    """Records of the run's metrics.jsonl (a line being written is skipped)."""
    return read_jsonl(run_dir / "metrics.jsonl")


def status_rows(sweep: Path, capsys: pytest.CaptureFixture) -> list[dict]:
    capsys.readouterr()
    assert isoflop("status", sweep, "--format", "json") == 0
    return json.loads(capsys.readouterr().out)["runs"]


@pytest.fixture(scope="session")
def reference_result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """result.json of the long run trained without interruption (in-process)."""
    root = tmp_path_factory.mktemp("reference")
    assert isoflop("submit", "--sweep", SWEEP, "--root", root, *LONG_RUN, "cluster=debug") == 0
    (result,) = (root / SWEEP / "runs").glob("*/result.json")
    return json.loads(result.read_text())


def _slurm_problem() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("sacct") is None:
        return "no SLURM client commands on PATH (run scripts/slurm/start.sh)"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, check=False)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return f"no SLURM controller answers ({' '.join((ping.stdout + ping.stderr).split())[:120]})"
    accounting = subprocess.run(["sacct", "--noheader", "--starttime=now-1minute"], capture_output=True,
                                text=True, check=False)
    if accounting.returncode != 0:
        return f"SLURM accounting is not running ({' '.join(accounting.stderr.split())[:120]})"
    return None


def _skip_or_fail_without_slurm(problem: str) -> None:
    """Skip a ``slurm`` test with ``problem`` as the reason, or fail it where a cluster is
    required (``ISOFLOP_REQUIRE_SLURM=1``, set by CI, so a broken cluster cannot hide behind a skip)."""
    if os.environ.get("ISOFLOP_REQUIRE_SLURM") == "1":
        pytest.fail(f"ISOFLOP_REQUIRE_SLURM=1 but {problem}")
    pytest.skip(problem)


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The name of the default partition of a running SLURM cluster (skips without one,
    fails without one under ``ISOFLOP_REQUIRE_SLURM=1``)."""
    problem = _slurm_problem()
    if problem:
        _skip_or_fail_without_slurm(problem)
    partitions = subprocess.run(["sinfo", "--noheader", "--format=%P"], capture_output=True, text=True,
                                check=True).stdout.split()
    default = next((name.rstrip("*") for name in partitions if name.endswith("*")), partitions[0])
    return default


@pytest.fixture(scope="session")
def urgent_partition(slurm_cluster: str) -> str:
    """A partition whose jobs preempt the default one's (scripts/slurm/slurm.conf.in: ``urgent``)."""
    partitions = subprocess.run(["sinfo", "--noheader", "--format=%P"], capture_output=True, text=True,
                                check=True).stdout.split()
    if "urgent" not in partitions:
        _skip_or_fail_without_slurm("no `urgent` partition to preempt with (start the cluster with "
                                    "scripts/slurm/start.sh)")
    return "urgent"


def analyze(*argv: object) -> int:
    """Run ``isoflop analyze`` through :mod:`analysis.command` in this process; returns its exit status."""
    from analysis import command

    return command.run(command.parse_args([str(arg) for arg in argv]))
