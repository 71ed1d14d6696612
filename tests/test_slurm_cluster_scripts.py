"""The test SLURM cluster's own scripts and CI's rule: under CI (``ISOFLOP_REQUIRE_SLURM=1``) a
missing cluster fails the ``slurm`` tests instead of skipping them, so a broken orchestration
path cannot pass as a green run; scripts/slurm/start.sh owns the config files it writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("required", [False, True])
def test_a_missing_cluster_skips_or_fails(tmp_path: Path, required: bool) -> None:
    environment = {**os.environ, "PATH": str(tmp_path)}  # no sbatch, sacct or scontrol on PATH
    environment.pop("ISOFLOP_REQUIRE_SLURM", None)
    if required:
        environment["ISOFLOP_REQUIRE_SLURM"] = "1"
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "tests/test_slurm_sweep.py::test_sweep_runs_as_one_job_array_without_duplicates"],
        cwd=REPOSITORY, env=environment, capture_output=True, text=True, check=False)
    output = completed.stdout + completed.stderr
    assert "no SLURM client commands on PATH" in output, output
    if required:
        assert completed.returncode != 0 and "1 error" in output, output
    else:
        assert completed.returncode == 0 and "1 skipped" in output, output


@pytest.mark.slurm
def test_start_script_owns_the_config_files_it_writes(slurm_cluster: str) -> None:
    """slurmdbd refuses a slurmdbd.conf its SlurmUser (root) does not own; a file left by an
    earlier SLURM set-up with another owner must be replaced, not rewritten in place."""
    config = Path("/etc/slurm/slurmdbd.conf")
    if os.geteuid() != 0 or not config.exists():
        pytest.skip("needs root and the cluster of scripts/slurm/start.sh")
    os.chown(config, _uid_of("slurm"), -1)
    subprocess.run(["bash", str(REPOSITORY / "scripts/slurm/start.sh")], check=True, capture_output=True)
    status = config.stat()
    assert (status.st_uid, status.st_gid, status.st_mode & 0o777) == (0, 0, 0o600)


def _uid_of(name: str) -> int:
    """The uid of user ``name``, or 1 (daemon) when there is no such user: any owner but root."""
    import pwd

    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return 1
