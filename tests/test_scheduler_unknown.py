""""Unknown" is not "failed": a run whose scheduler cannot be asked is shown as unknown,
``status`` says why, and ``submit --retry-failed`` (which ``isoflop study`` always passes)
leaves it alone. ``wait`` ends, with a line saying so, on runs that were never submitted.

The SLURM case runs on the real test cluster with ``sacct`` (and ``squeue``) made to fail
by scripts earlier on PATH; the cluster itself is left running.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import SWEEP, events, isoflop, metrics, status_rows, wait_until
from isoflop.atomic_files import append_jsonl
from isoflop.commands.submit import submission_in_progress
from isoflop.sweep_dir import SweepDir

ONE_RUN = ("--sweep", SWEEP, "--budget", "5e8", "ladder.shapes=[[1,32,2]]")
LONG_SLURM_RUN = ("--sweep", SWEEP, "--budget", "1e11", "ladder.shapes=[[1,32,2]]")  # 5770 steps


def status_json(sweep: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    capsys.readouterr()
    assert isoflop("status", sweep, "--format", "json") == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


@pytest.fixture
def completed_sweep(tmp_path: Path) -> Path:
    assert isoflop("submit", "--root", tmp_path, *ONE_RUN, "cluster=debug") == 0
    return tmp_path / SWEEP


def test_a_local_job_of_another_host_is_unknown_and_not_resubmitted(completed_sweep: Path, capsys) -> None:
    (run_dir,) = (completed_sweep / "runs").iterdir()
    (run_dir / "result.json").unlink()
    (run_dir / "jobs.jsonl").unlink()
    append_jsonl(run_dir / "jobs.jsonl", {"event": "submitted", "time": 1.0, "job_id": "4242", "executor": "local",
                                          "host": "another-host"})
    report, warning = status_json(completed_sweep, capsys)
    assert report["runs"][0]["state"] == "unknown"
    assert report["scheduler_problems"] == [f"local jobs of host another-host cannot be seen from "
                                            f"{socket.gethostname()}; run `isoflop status` there"]
    assert warning.startswith("isoflop status: warning: the scheduler could not be asked") and \
        warning.count("\n") == 1

    assert isoflop("submit", "--root", completed_sweep.parent, *ONE_RUN, "cluster=debug", "--retry-failed") == 0
    err = capsys.readouterr().err
    assert "submitted 0 of 1 runs" in err and "left alone: 1 unknown" in err and "another-host" in err
    assert [event["event"] for event in events(run_dir)] == ["submitted"]  # nothing submitted, nothing trained


def test_wait_ends_on_runs_that_were_never_submitted(completed_sweep: Path, capsys) -> None:
    (run_dir,) = (completed_sweep / "runs").iterdir()
    (run_dir / "result.json").unlink()
    (run_dir / "jobs.jsonl").unlink()  # planned, never submitted
    sweep = SweepDir(completed_sweep)
    with sweep.submission_lock():  # a submit of this sweep in progress: its planned runs are waited for
        assert submission_in_progress(sweep)
        assert isoflop("wait", completed_sweep, "--interval", "0.1", "--timeout", "0.5") == 3
    assert not submission_in_progress(sweep)
    capsys.readouterr()
    assert isoflop("wait", completed_sweep, "--interval", "0.1", "--timeout", "60") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 run(s) are planned but were never submitted" in err[0]
    assert "isoflop submit" in err[0]


def failing_command(folder: Path, name: str) -> None:
    (folder / name).write_text(f"#!/bin/sh\necho '{name}: error: Problem talking to the database' >&2\nexit 1\n")
    (folder / name).chmod(0o755)


def slurm_overrides(partition: str) -> tuple[str, ...]:
    return ("cluster=slurm", f"cluster.partition={partition}", "cluster.cpus_per_task=1", "cluster.gpus_per_node=0",
            "cluster.timeout_min=60", "cluster.mem_gb=1")


@pytest.mark.slurm
@pytest.mark.slow
def test_a_running_job_whose_scheduler_cannot_be_asked_is_never_resubmitted(
        tmp_path: Path, capsys, slurm_cluster: str, monkeypatch: pytest.MonkeyPatch) -> None:
    submit = ("submit", "--root", tmp_path, *LONG_SLURM_RUN, *slurm_overrides(slurm_cluster))
    assert isoflop(*submit) == 0
    sweep = tmp_path / SWEEP
    (run_dir,) = (sweep / "runs").iterdir()
    try:
        wait_until(lambda: any(record.get("step", 0) >= 5 for record in metrics(run_dir)), 180,
                   "the job to train")
        shims = tmp_path / "bin"
        shims.mkdir()
        failing_command(shims, "sacct")
        monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")

        # accounting down, the controller up: squeue still confirms the job runs
        report, warning = status_json(sweep, capsys)
        assert report["runs"][0]["state"] == "running"
        assert len(report["scheduler_problems"]) == 1 and "`sacct` failed with exit status 1" in \
            report["scheduler_problems"][0] and "Problem talking to the database" in warning

        # neither answers: unknown, for as long as it lasts, and not resubmitted
        failing_command(shims, "squeue")
        report, warning = status_json(sweep, capsys)
        assert report["runs"][0]["state"] == "unknown"
        assert "`sacct` failed" in warning and "`squeue` failed" in warning
        assert isoflop(*submit, "--retry-failed") == 0
        err = capsys.readouterr().err
        assert "submitted 0 of 1 runs" in err and "left alone: 1 unknown" in err
        assert sum(event["event"] == "submitted" for event in events(run_dir)) == 1
    finally:
        monkeypatch.undo()
        job_id = next(event["job_id"] for event in events(run_dir) if event["event"] == "submitted")
        subprocess.run(["scancel", job_id], check=False)
    wait_until(lambda: status_rows(sweep, capsys)[0]["state"] in ("cancelled", "failed", "completed"), 120,
               "the job to end")


def test_pending_reasons_that_do_not_pass_are_one_line_each() -> None:
    """squeue's rows of an array are expanded; reasons a job waits out (Priority, Resources) say
    nothing; each reason that does not pass is one line for all its jobs, naming the setting."""
    from isoflop.slurm_queue import _parse_rows, never_starts_warnings

    rows = _parse_rows("7_[0-4]|PENDING|PartitionConfig\n8|PENDING|Priority\n9|PENDING|QOSMaxCpuPerJobLimit\n"
                       "10|PENDING|JobHeldUser\n11|RUNNING|None\n12|CANCELLED by 0\n")
    assert rows["7_3"] == ["PENDING", "PartitionConfig"] and rows["12"] == ["CANCELLED"]
    reasons = {job_id: fields[1] for job_id, fields in rows.items() if fields[0] == "PENDING"}
    lines = never_starts_warnings(reasons, "/sweeps/s")
    assert len(lines) == 3
    assert "job(s) 7_0, 7_1, 7_2 and 2 more as asked" in lines[0] and "cluster.cpus_per_task" in lines[0]
    assert "/sweeps/s" in lines[0] and "--retry-failed" in lines[0]
    assert "job(s) 9 as asked (QOSMaxCpuPerJobLimit" in lines[1] and "per-job limit" in lines[1]
    assert "job(s) 10 are held (JobHeldUser)" in lines[2] and "scontrol release" in lines[2]
    assert not any("Priority" in line for line in lines)
