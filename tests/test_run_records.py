"""The typed records between the stages: files from before versioning are read,
round trips are exact, and a version or shape this isoflop does not read is
refused with one line (exit 2) that names the file and the version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import heavy_imports, isoflop, status_rows
from isoflop.commands.plan import plan_rows
from isoflop.errors import UserError
from isoflop.compose import load_study
from isoflop.planner import plan
from isoflop.run_records import EvalScores, JobEvent, PlanRow, RunResult
from isoflop.run_spec import RunSpec
from isoflop.sweep_dir import SweepDir
from record_support import run_result

UNVERSIONED_SWEEP = Path(__file__).parent / "data" / "unversioned_sweep"  # written by isoflop 0.1.0
RUN_ID = "dense-L1-d32-5e08-0b3156f8"


@pytest.fixture
def old_sweep(tmp_path: Path) -> SweepDir:
    """A copy of a sweep directory written before the records carried a version."""
    shutil.copytree(UNVERSIONED_SWEEP, tmp_path / "sweep")
    return SweepDir(tmp_path / "sweep")


def test_files_without_a_version_are_read_as_version_1(old_sweep: SweepDir, capsys) -> None:
    run = old_sweep.run(RUN_ID)
    result = run.result()
    assert result is not None and result.version == 1
    assert (result.status, result.steps, result.tokens) == ("completed", 28, 3584)
    assert result.eval["validation"] == EvalScores(loss=3.7240112721920013, perplexity=41.430249247884234,
                                                   tokens=1024, requested_tokens=1024, capped=False)
    assert result.params.active_non_embedding == 20608 and result.data["content_hash"] == "4aed743daa1919b2"
    events = run.events()
    assert [event.event for event in events] == ["submitted", "started", "finished"]
    assert events[0].executor == "debug" and events[1].pid == 21801 and events[2].status == "completed"
    (row,) = old_sweep.plan_rows().values()
    assert (row.run_id, row.steps, row.budget, row.n_params_total) == (RUN_ID, 28, 5e8, 28832)
    assert isinstance(row.steps, int) and isinstance(row.budget, float)
    assert RunSpec.read(run.run_json).run_id == RUN_ID
    (status,) = status_rows(old_sweep.path, capsys)
    assert (status["state"], status["step"], status["steps"], status["progress"]) == ("completed", 28, 28, 1.0)


def test_a_completed_run_from_before_versioning_is_not_trained_again(old_sweep: SweepDir, capsys) -> None:
    run = old_sweep.run(RUN_ID)
    before = run.result_json.read_bytes()
    assert isoflop("train", run.path) == 0
    assert "already completed after 28 steps, validation loss 3.7240" in capsys.readouterr().out
    assert run.result_json.read_bytes() == before and not (run.path / "metrics.jsonl").exists()


def test_records_round_trip_and_carry_their_version(tmp_path: Path) -> None:
    data = {"source": "files", "content_hash": "ab", "n_documents": 3, "epochs": 0.5,
            "validation_documents": 1, "validation_content_hash": "cd"}  # keys owned by isoflop.data
    result = run_result(data=data, notes=("eval x: capped",), mfu=None, final_train_loss=None)
    result.write(tmp_path / "result.json")
    assert json.loads((tmp_path / "result.json").read_text())["version"] == RunResult.VERSION
    assert RunResult.read(tmp_path / "result.json") == result

    events = [JobEvent.now("submitted", job_id="12_3", executor="slurm", code_hash="abc", isoflop_version="0.1"),
              JobEvent.now("checkpointed", job_id="12_3", saved=False)]
    for event in events:
        event.append_to(tmp_path / "jobs.jsonl")
    assert JobEvent.read_all(tmp_path / "jobs.jsonl") == events
    assert all(json.loads(line)["version"] == 1 for line in (tmp_path / "jobs.jsonl").read_text().splitlines())

    rows = plan_rows(plan(load_study("orchestration_test", [], None).study).runs)
    (tmp_path / "plan.csv").write_text(PlanRow.csv_text(rows))
    assert list(PlanRow.read_csv(tmp_path / "plan.csv").values()) == rows


def test_keys_a_newer_writer_added_are_ignored(tmp_path: Path) -> None:
    values = run_result().to_dict() | {"energy_joules": 12.5}
    (tmp_path / "result.json").write_text(json.dumps(values))
    assert RunResult.read(tmp_path / "result.json") == run_result()


def _with_version(path: Path, version: object) -> None:
    """Give the record file at ``path`` the format ``version``."""
    if path.suffix == ".csv":
        header, *rows = path.read_text().splitlines()
        path.write_text("\n".join([header + ",version", *(row + f",{version}" for row in rows)]) + "\n")
    elif path.suffix == ".jsonl":
        lines = [json.loads(line) | {"version": version} for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    else:
        path.write_text(json.dumps(json.loads(path.read_text()) | {"version": version}))


@pytest.mark.parametrize("file, command", [("plan.csv", "status"), (f"runs/{RUN_ID}/jobs.jsonl", "status"),
                                           (f"runs/{RUN_ID}/result.json", "status"),
                                           (f"runs/{RUN_ID}/run.json", "train")])
@pytest.mark.parametrize("version", [2, 0, "two"])
def test_a_version_this_isoflop_does_not_read_is_refused_in_one_line(
        old_sweep: SweepDir, capsys, file: str, command: str, version: object) -> None:
    path = old_sweep.path / file
    if command == "train":
        old_sweep.run(RUN_ID).result_json.unlink()  # a completed run is returned before run.json is read
    _with_version(path, version)
    files = {item: item.read_bytes() for item in old_sweep.path.rglob("*") if item.is_file()}
    target = old_sweep.path if command == "status" else old_sweep.run(RUN_ID).path
    capsys.readouterr()
    assert isoflop(command, target) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert path.name in line and f"version {version!r}".replace("'", "") in line.replace("'", "")
    assert ("upgrade isoflop" in line) == (version == 2)
    assert {item: item.read_bytes() for item in old_sweep.path.rglob("*") if item.is_file()} == files


@pytest.mark.parametrize("file, content", [
    ("result.json", "[]"), ("result.json", '{"status": "completed"}'),
    ("result.json", json.dumps(run_result().to_dict() | {"status": "running"})),
    ("result.json", json.dumps(run_result().to_dict() | {"steps": "many"})),
    ("jobs.jsonl", "42\n"), ("jobs.jsonl", '{"event": "submitted", "time": 1.0}\n'),
    ("jobs.jsonl", '{"event": "exploded", "time": 1.0}\n')])
def test_a_malformed_record_is_refused_in_one_line(old_sweep: SweepDir, capsys, file: str, content: str) -> None:
    path = old_sweep.run(RUN_ID).path / file
    path.write_text(content)
    assert isoflop("status", old_sweep.path) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("isoflop status: error:") and str(path) in line and "not a valid" in line
    assert path.read_text() == content


def test_the_analysis_reads_results_through_the_same_record(old_sweep: SweepDir) -> None:
    from analysis.collect import collect_sweep

    collection = collect_sweep(old_sweep.path)
    (row,) = collection.runs.to_dict("records")
    assert (row["run_id"], row["loss"], row["params"], row["ffw_family"]) == (RUN_ID, 3.7240112721920013, 28832,
                                                                             "dense")
    _with_version(old_sweep.run(RUN_ID).result_json, 2)
    with pytest.raises(UserError, match="no completed runs") as refused:
        collect_sweep(old_sweep.path)
    assert "run result format version 2 is newer" in refused.value.message


def test_the_records_and_the_orchestration_commands_import_no_torch() -> None:
    modules = ("isoflop.run_records", "isoflop.record_format", "isoflop.atomic_files", "isoflop.run_spec",
               "isoflop.sweep_dir", "isoflop.scheduler_state", "isoflop.submission", "isoflop.preemption",
               "isoflop.commands.submit", "isoflop.commands.status", "isoflop.commands.wait",
               "isoflop.commands.cancel", "isoflop.commands.train")
    assert heavy_imports(modules, ("torch", "pandas", "matplotlib", "rich")) == []  # rich: on a terminal only
