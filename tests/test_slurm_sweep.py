"""A real single-node SLURM cluster (scripts/slurm/start.sh): job arrays,
preemption through a higher-priority partition and submitit's ``_interrupt``,
scancel + ``--retry-failed``, no duplicate jobs, one batched sacct per status."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import LONG_RUN, SWEEP, events, isoflop, metrics, status_rows, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def slurm_overrides(partition: str) -> tuple[str, ...]:
    # timeout well above 10 min: submitit classes every signal as a timeout below that
    return ("cluster=slurm", f"cluster.partition={partition}", "cluster.cpus_per_task=1",
            "cluster.gpus_per_node=0", "cluster.timeout_min=60", "cluster.mem_gb=1")


def sweep_jobs(name: str, since: float) -> list[str]:
    """Allocations named for sweep ``name`` submitted since ``since`` (UNIX time)."""
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 1))
    output = subprocess.run(["sacct", "--noheader", "--parsable2", "--allocations", "--duplicates",
                             f"--starttime={start}", f"--name=isoflop-{name}", "--format=JobID"],
                            capture_output=True, text=True, check=True).stdout
    return sorted(set(output.split()))


def test_sweep_runs_as_one_job_array_without_duplicates(tmp_path: Path, capsys, slurm_cluster: str) -> None:
    name = f"array-{os.getpid()}"
    started = time.time()
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, "--name", name,
                   *slurm_overrides(slurm_cluster)) == 0
    sweep = tmp_path / name
    rows = status_rows(sweep, capsys)
    assert len(rows) >= 4 and len({row["job_id"].split("_")[0] for row in rows}) == 1  # one array
    assert isoflop("wait", sweep, "--interval", "1", "--timeout", "240") == 0
    print(f"submit -> all completed on SLURM: {time.time() - started:.1f} s")
    rows = status_rows(sweep, capsys)
    assert {row["state"] for row in rows} == {"completed"}
    results = [json.loads(p.read_text()) for p in (sweep / "runs").glob("*/result.json")]
    assert len(results) == len(rows) and all(r["status"] == "completed" for r in results)
    for _ in range(3):
        assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, "--name", name,
                       *slurm_overrides(slurm_cluster)) == 0
        assert "submitted 0 of" in capsys.readouterr().err
    jobs = wait_until(lambda: sweep_jobs(name, started) if len(sweep_jobs(name, started)) >= len(rows) else None,
                      30, "sacct to list the array")
    assert jobs == sorted(row["job_id"] for row in rows)  # no duplicate job was ever submitted

    # one sacct call per status, however many runs
    log, wrapper = tmp_path / "sacct-calls", tmp_path / "bin"
    wrapper.mkdir()
    real = subprocess.run(["which", "sacct"], capture_output=True, text=True, check=True).stdout.strip()
    (wrapper / "sacct").write_text(f'#!/bin/sh\necho call >> "{log}"\nexec {real} "$@"\n')
    (wrapper / "sacct").chmod(0o755)
    for run_dir in (sweep / "runs").iterdir():
        (run_dir / "result.json").rename(run_dir / "result.moved")  # make status ask the scheduler
    path = os.environ["PATH"]
    try:
        os.environ["PATH"] = f"{wrapper}{os.pathsep}{path}"
        status_rows(sweep, capsys)
    finally:
        os.environ["PATH"] = path
    assert log.read_text().count("call") == 1


def test_preempted_job_checkpoints_requeues_and_finishes_like_an_uninterrupted_run(
        tmp_path: Path, capsys, slurm_cluster: str, urgent_partition: str, reference_result: dict) -> None:
    import submitit

    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, *LONG_RUN,
                   *slurm_overrides(slurm_cluster)) == 0
    sweep = tmp_path / SWEEP
    (run_dir,) = (sweep / "runs").iterdir()

    def progressed_past(step: int) -> bool:
        return any(m.get("step", 0) >= step and "loss" in m for m in metrics(run_dir))

    def count(event: str) -> int:
        return sum(e["event"] == event for e in events(run_dir))

    # 1. a job in the higher-priority partition takes every CPU of the node
    wait_until(lambda: progressed_past(20), 120, "the run to train 20 steps")
    subprocess.run(["sbatch", f"--partition={urgent_partition}", "--cpus-per-task=8", "--mem=500M",
                    "--job-name=isoflop-urgent", f"--output={tmp_path}/urgent-%j.out", "--wrap=sleep 2"],
                   check=True, capture_output=True)
    wait_until(lambda: count("checkpointed") >= 1, 60, "the preempted job to checkpoint")
    wait_until(lambda: status_rows(sweep, capsys)[0]["state"] in ("preempted", "pending", "running"), 30,
               "the job to be requeued")
    wait_until(lambda: count("started") >= 2, 120, "the requeued job to start again")
    resumes = wait_until(lambda: [m for m in metrics(run_dir) if m.get("kind") == "resume"], 60,
                         "the requeued job to resume from its checkpoint")
    resumed_at = resumes[0]["step"]
    assert resumed_at >= 10

    # 2. submitit's simulated preemption, as soon as training has resumed
    wait_until(lambda: progressed_past(resumed_at + 1), 120, "training after the resume")
    job_id = status_rows(sweep, capsys)[0]["job_id"]
    submitit.SlurmJob(folder=sweep / "submitit", job_id=job_id)._interrupt()
    wait_until(lambda: count("checkpointed") >= 2, 60, "the interrupted job to checkpoint")
    wait_until(lambda: count("started") >= 3, 120, "the requeued job to start a third time")

    assert isoflop("wait", sweep, "--interval", "1", "--timeout", "240") == 0
    assert len([m for m in metrics(run_dir) if m.get("kind") == "resume"]) == 2
    assert sum(e["event"] == "submitted" for e in events(run_dir)) == 1  # same job, requeued
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == reference_result["steps"]
    assert result["final_train_loss"] == pytest.approx(reference_result["final_train_loss"], rel=1e-5)


def test_scancelled_job_shows_cancelled_and_retry_failed_completes_it(
        tmp_path: Path, capsys, slurm_cluster: str) -> None:
    one_run = ("--budget", "5e8", "ladder.shapes=[[1,32,2]]")
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, *one_run, *slurm_overrides(slurm_cluster)) == 0
    sweep = tmp_path / SWEEP
    job_id = status_rows(sweep, capsys)[0]["job_id"]
    subprocess.run(["scancel", job_id], check=True)
    wait_until(lambda: status_rows(sweep, capsys)[0]["state"] == "cancelled", 60, "the run to show cancelled")
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, *one_run, *slurm_overrides(slurm_cluster)) == 0
    assert "submitted 0 of 1" in capsys.readouterr().err
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, *one_run, *slurm_overrides(slurm_cluster),
                   "--retry-failed") == 0
    assert isoflop("wait", sweep, "--interval", "1", "--timeout", "180") == 0
    assert status_rows(sweep, capsys)[0]["job_id"] != job_id


def test_unknown_partition_is_one_line_from_slurm(tmp_path: Path, capsys, slurm_cluster: str) -> None:
    status = isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, *slurm_overrides("no_such_partition"))
    error = capsys.readouterr().err.strip()
    assert status == 2 and len(error.splitlines()) == 1
    assert "invalid partition" in error.lower() and "cluster.partition" in error


def test_jobs_slurm_will_never_start_are_named_with_the_fix(tmp_path: Path, capsys, slurm_cluster: str) -> None:
    """Jobs asking more CPUs than the node has stay pending (PartitionConfig); status and wait say
    which setting to change, and cancel + --retry-failed with settings that fit completes them."""
    node_cpus = int(subprocess.run(["sinfo", "--noheader", "--format=%c"], capture_output=True, text=True,
                                   check=True).stdout.split()[0])
    one_run = ("--budget", "5e8", "ladder.shapes=[[1,32,2]]")
    too_big = (*slurm_overrides(slurm_cluster), f"cluster.cpus_per_task={node_cpus + 1}")
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, *one_run, *too_big) == 0
    sweep = tmp_path / SWEEP

    def stuck() -> list[str]:
        capsys.readouterr()
        assert isoflop("status", sweep, "--format", "json") == 0
        return json.loads(capsys.readouterr().out)["stuck_warnings"]

    (line,) = wait_until(stuck, 60, "squeue to give the pending reason")
    assert "PartitionConfig" in line and "cluster.cpus_per_task" in line and f"isoflop cancel {sweep}" in line
    assert status_rows(sweep, capsys)[0]["state"] == "pending"
    assert isoflop("status", sweep) == 0
    warning = capsys.readouterr().err.strip().splitlines()
    assert warning == [f"isoflop status: warning: {line}"]
    assert isoflop("wait", sweep, "--interval", "0.5", "--timeout", "2") == 3
    assert line in capsys.readouterr().err
    assert isoflop("cancel", sweep) == 0
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, *one_run, *slurm_overrides(slurm_cluster),
                   "--retry-failed") == 0
    assert isoflop("wait", sweep, "--interval", "1", "--timeout", "180") == 0
    assert stuck() == []
