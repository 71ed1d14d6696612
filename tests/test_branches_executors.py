"""Trunks and branches on the local executor and on a real SLURM cluster: the trunk's job
submits each branch when it reaches the branch's fork step; a trunk killed (local) or
preempted (SLURM) resumes from its checkpoint; resubmitting never duplicates a job; every
branch ends exactly where the same study trained in one process ends."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import events, isoflop, metrics, status_rows, wait_until
from test_slurm_sweep import slurm_overrides, sweep_jobs

# A trunk of 534 steps; branches fork at step 134 (budget 1e10) and at its end (4e10).
STUDY = ("--sweep", "smoke_wsd", "--budget", "1e10", "--budget", "4e10", "~methods.peer", "ladder.shapes=[[1,8,2]]")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """result.json of every branch of STUDY trained in this process (cluster=debug)."""
    root = tmp_path_factory.mktemp("branch-reference")
    assert isoflop("submit", "--root", root, *STUDY, "cluster=debug") == 0
    return {path.parent.name: json.loads(path.read_text()) for path in (root / "smoke_wsd" / "runs").glob("*/result.json")}


def branch_dirs(sweep: Path) -> list[Path]:
    """The branches, the one forking first first."""
    return sorted((sweep / "runs").iterdir(), key=lambda path: json.loads((path / "run.json").read_text())["steps"])


def submitted(run_dir: Path) -> list[dict]:
    return [event for event in events(run_dir) if event["event"] == "submitted"]


def assert_like_reference(sweep: Path, reference: dict[str, dict]) -> None:
    """Every branch completed once, with the reference's losses exactly; no job was submitted twice."""
    for run_dir in branch_dirs(sweep):
        result = json.loads((run_dir / "result.json").read_text())
        expected = reference[run_dir.name]
        assert (result["steps"], result["final_train_loss"], result["eval"]["validation"]["loss"]) == \
            (expected["steps"], expected["final_train_loss"], expected["eval"]["validation"]["loss"]), run_dir.name
        assert len(submitted(run_dir)) == 1, run_dir.name
        resumes = [line["step"] for line in metrics(run_dir) if line.get("kind") == "resume"]
        assert resumes[0] == json.loads((run_dir / "fork.json").read_text())["step"]


def test_local_trunk_submits_its_branches_and_resumes_after_a_kill(tmp_path: Path, capsys, reference) -> None:
    assert isoflop("submit", "--root", tmp_path, *STUDY, "cluster=local", "cluster.max_parallel=2") == 0
    err = capsys.readouterr().err
    assert "submitted 1 of 3 runs to local" in err and "left alone: 2 waiting" in err
    sweep = tmp_path / "smoke_wsd"
    (trunk_dir,) = (sweep / "trunks").iterdir()
    first, second = branch_dirs(sweep)
    # Nobody but the trunk's job submits now: the first branch is submitted when the trunk reaches step 134.
    wait_until(lambda: submitted(first), 120, "the trunk to submit its first branch")
    assert not submitted(second) and submitted(first)[0]["time"] > submitted(trunk_dir)[0]["time"]
    assert isoflop("submit", "--root", tmp_path, *STUDY, "cluster=local") == 0  # while it trains: nothing new
    assert "submitted 0 of 3" in capsys.readouterr().err

    wait_until(lambda: (trunk_dir / "checkpoints" / "step_000200").is_dir(), 120, "the trunk's checkpoint at 200")
    started = next(event for event in events(trunk_dir) if event["event"] == "started")
    os.kill(int(started["job_id"]), signal.SIGKILL)  # the controller, then the trunk's process
    os.kill(started["pid"], signal.SIGKILL)
    wait_until(lambda: status_rows(sweep, capsys)[0]["state"] == "failed", 30, "the killed trunk to show failed")
    states = {row["run_id"]: row["state"] for row in status_rows(sweep, capsys)}
    assert states[second.name] == "blocked"

    assert isoflop("submit", "--root", tmp_path, *STUDY, "cluster=local", "--retry-failed") == 0
    assert isoflop("wait", sweep, "--interval", "0.5", "--timeout", "240") == 0
    trunk_resumes = [line["step"] for line in metrics(trunk_dir) if line.get("kind") == "resume"]
    assert trunk_resumes and trunk_resumes[0] >= 200
    assert len(submitted(trunk_dir)) == 2  # the first job and the --retry-failed one
    assert_like_reference(sweep, reference)
    assert not (trunk_dir / "forks").exists()  # fork checkpoints are not kept unless asked
    assert isoflop("submit", "--root", tmp_path, *STUDY, "cluster=local") == 0
    assert "submitted 0 of 3" in capsys.readouterr().err


@pytest.mark.slurm
def test_slurm_trunk_submits_its_branches_and_resumes_after_preemption(tmp_path: Path, capsys, reference,
                                                                      slurm_cluster: str) -> None:
    import submitit

    name = f"wsd-{os.getpid()}"
    started = time.time()
    overrides = (*STUDY, "--name", name, *slurm_overrides(slurm_cluster), "cluster.keep_fork_checkpoints=true")
    assert isoflop("submit", "--root", tmp_path, *overrides) == 0
    sweep = tmp_path / name
    (trunk_dir,) = (sweep / "trunks").iterdir()
    first, second = branch_dirs(sweep)
    wait_until(lambda: submitted(first), 180, "the trunk's job to submit its first branch")
    assert not submitted(second)
    trunk_job = submitted(trunk_dir)[0]["job_id"]
    assert submitted(first)[0]["job_id"].split("_")[0] != trunk_job.split("_")[0]  # a job of its own

    submitit.SlurmJob(folder=sweep / "submitit", job_id=trunk_job)._interrupt()  # preemption
    wait_until(lambda: any(event["event"] == "checkpointed" for event in events(trunk_dir)), 60,
               "the preempted trunk to checkpoint")
    assert isoflop("submit", "--root", tmp_path, *overrides) == 0  # while it is requeued: nothing new
    assert "submitted 0 of 3" in capsys.readouterr().err
    assert isoflop("wait", sweep, "--interval", "1", "--timeout", "300") == 0
    assert [event["job_id"] for event in submitted(trunk_dir)] == [trunk_job]  # requeued, not resubmitted
    assert [line for line in metrics(trunk_dir) if line.get("kind") == "resume"]
    assert_like_reference(sweep, reference)
    forks = sorted(path.name for path in (trunk_dir / "forks").iterdir())  # kept, as asked
    assert forks == ["step_000134", "step_000534"]
    ours = sorted(event["job_id"] for run_dir in (trunk_dir, first, second) for event in submitted(run_dir))
    assert wait_until(lambda: sweep_jobs(name, started) if len(sweep_jobs(name, started)) >= 3 else None, 30,
                      "sacct to list the jobs") == ours  # no job was submitted without its record
