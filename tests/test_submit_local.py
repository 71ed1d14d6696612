"""Local executor end to end: a tiny sweep completes, resubmission is a no-op,
a SIGKILLed job resumes from its checkpoint when resubmitted."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from conftest import LONG_RUN, SWEEP, events, isoflop, metrics, status_rows, wait_until


@pytest.mark.slow
def test_local_sweep_completes_and_resubmitting_submits_nothing(tmp_path: Path, capsys) -> None:
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, "cluster=local",
                   "cluster.max_parallel=2") == 0
    sweep = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert sweep == tmp_path / SWEEP
    assert (sweep / "study.yaml").is_file() and (sweep / "plan.csv").is_file()
    assert isoflop("wait", sweep, "--interval", "0.5", "--timeout", "240") == 0
    rows = status_rows(sweep, capsys)
    assert len(rows) >= 4 and {row["state"] for row in rows} == {"completed"}
    assert all(row["progress"] == 1.0 and row["last_loss"] is not None for row in rows)
    for run_dir in (sweep / "runs").iterdir():
        assert {"run.json", "jobs.jsonl", "metrics.jsonl", "result.json"} <= {p.name for p in run_dir.iterdir()}
        submitted = [e for e in events(run_dir) if e["event"] == "submitted"]
        assert len(submitted) == 1 and (sweep / "code" / submitted[0]["code_hash"] / "isoflop").is_dir()
        kernel_sources = sweep / "code" / submitted[0]["code_hash"] / "kernels"
        assert (kernel_sources / "row_topk.c").is_file() and (kernel_sources / "vector_clones.h").is_file()  # C kernels too
        started = [e for e in events(run_dir) if e["event"] == "started"]
        assert started[0]["code"] == str(sweep / "code" / submitted[0]["code_hash"])  # ran the snapshot
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, "cluster=local") == 0
    assert "submitted 0 of" in capsys.readouterr().err
    assert all(len([e for e in events(d) if e["event"] == "submitted"]) == 1 for d in (sweep / "runs").iterdir())


@pytest.mark.slow
def test_local_job_killed_mid_run_resumes_from_checkpoint(tmp_path: Path, capsys, reference_result) -> None:
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, *LONG_RUN, "cluster=local") == 0
    sweep = tmp_path / SWEEP
    (run_dir,) = (sweep / "runs").iterdir()
    wait_until(lambda: any(m.get("step", 0) >= 40 for m in metrics(run_dir))
               and any((run_dir / "checkpoints").glob("*")), 120, "training past a checkpoint")
    started = next(e for e in events(run_dir) if e["event"] == "started")
    os.kill(int(started["job_id"]), signal.SIGKILL)  # the controller, then the task itself
    os.kill(started["pid"], signal.SIGKILL)
    wait_until(lambda: status_rows(sweep, capsys)[0]["state"] == "failed", 30, "the killed run to show failed")
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, *LONG_RUN, "cluster=local") == 0
    assert "submitted 0 of 1" in capsys.readouterr().err  # failed runs wait for --retry-failed
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, *LONG_RUN, "cluster=local",
                   "--retry-failed") == 0
    assert isoflop("wait", sweep, "--interval", "0.5", "--timeout", "180") == 0
    resumes = [m for m in metrics(run_dir) if m.get("kind") == "resume"]
    assert resumes and resumes[0]["step"] >= 10
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["steps"] == reference_result["steps"]
    assert result["final_train_loss"] == pytest.approx(reference_result["final_train_loss"], rel=1e-5)


@pytest.mark.slow
def test_local_job_of_two_tasks_trains_once_with_one_slot(tmp_path: Path, capsys) -> None:
    """A local job of two tasks (DDP in the job) holds one slot: its rank 0 takes it, rank 1
    waits for it, so even ``max_parallel=1`` trains it as one world of two processes."""
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, "--budget", "3e9", "ladder.shapes=[[1,32,2]]",
                   "cluster=local", "cluster.tasks_per_node=2", "cluster.max_parallel=1") == 0
    sweep = tmp_path / SWEEP
    assert isoflop("wait", sweep, "--interval", "0.5", "--timeout", "180") == 0
    (run_dir,) = (sweep / "runs").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["world_size"] == 2
    assert len([e for e in events(run_dir) if e["event"] == "started"]) == 1  # rank 0 records it
    # the mark goes with the slot, when the job ends (just after result.json, which ended the wait)
    wait_until(lambda: sorted(path.name for path in (sweep / "slots").iterdir()) == ["0.lock"], 60,
               "the job to release its slot and mark")
