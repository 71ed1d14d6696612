"""Sweep directory primitives: atomic writes, job events, array-id expansion, run states."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from record_support import run_result

from isoflop.atomic_files import append_jsonl, read_json, read_jsonl, write_json_atomic
from isoflop.run_records import JobEvent
from isoflop.scheduler_state import run_state
from isoflop.slurm_queue import expand_job_ids
from isoflop.sweep_dir import RunDir


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "result.json", {"status": "completed"})
    write_json_atomic(tmp_path / "result.json", {"status": "diverged"})
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    assert read_json(tmp_path / "result.json") == {"status": "diverged"}


def test_atomic_writes_get_the_usual_permissions(tmp_path: Path) -> None:
    mask = os.umask(0o027)
    try:
        write_json_atomic(tmp_path / "result.json", {"status": "completed"})
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == 0o640


def test_a_torn_last_record_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    append_jsonl(path, {"event": "submitted", "job_id": "1"})
    with path.open("a") as handle:
        handle.write('{"event": "sta')
    assert read_jsonl(path) == [{"event": "submitted", "job_id": "1"}]
    append_jsonl(path, {"event": "failed", "job_id": "1"})  # not glued to the torn line, so not lost
    assert read_jsonl(path) == [{"event": "submitted", "job_id": "1"}, {"event": "failed", "job_id": "1"}]


def test_pending_array_ranges_expand() -> None:
    assert expand_job_ids("12_[0-2,5%4]") == ["12_0", "12_1", "12_2", "12_5"]
    assert expand_job_ids("12_3") == ["12_3"]


def test_run_state_from_files_and_scheduler_view(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run_state(run.result(), run.events(), None, None, now=0) == "planned"
    submission = JobEvent(event="submitted", job_id="7_0", executor="slurm", time=100.0)
    # the scheduler answered and does not know the job: pending while accounting lags, then gone
    assert run_state(run.result(), run.events(), submission, "absent", now=110) == "pending"
    assert run_state(run.result(), run.events(), submission, "absent", now=1000) == "failed"
    # the scheduler could not be asked: unknown however long ago it was submitted (may be running)
    assert run_state(run.result(), run.events(), submission, "unknown", now=110) == "unknown"
    assert run_state(run.result(), run.events(), submission, "unknown", now=10**6) == "unknown"
    run.record_event(JobEvent(event="started", job_id="7_0", time=150.0))
    run.record_event(JobEvent(event="checkpointed", job_id="7_0", time=160.0, saved=True))
    assert run_state(run.result(), run.events(), submission, "pending", now=200) == "preempted"
    assert run_state(run.result(), run.events(), submission, "cancelled", now=200) == "cancelled"
    assert run_state(run.result(), run.events(), submission, "unknown", now=200) == "unknown"
    run.record_event(JobEvent(event="failed", job_id="7_0", time=170.0, error="RuntimeError: x"))
    assert run_state(run.result(), run.events(), submission, "unknown", now=200) == "failed"  # its own record
    run_result(status="completed").write(run.result_json)
    assert run_state(run.result(), run.events(), submission, "running", now=200) == "completed"
