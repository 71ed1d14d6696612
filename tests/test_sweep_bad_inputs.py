"""Damaged sweep and run folders, for every command that reads them: exactly one stderr
line naming the file and the fix, exit status 2, no traceback, and every file that was
there before byte-identical afterwards (the run lock's holder record excepted: whoever
takes the lock writes its name there).

The sweep is a real one (one dense run trained by the ``debug`` executor, with
checkpoints), damaged one way per case.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import SWEEP, isoflop
from isoflop.run_lock import LOCK_FILE

ONE_RUN = ("--sweep", SWEEP, "--budget", "5e8", "ladder.shapes=[[1,32,2]]", "cluster=debug",
           "train.checkpoint_every_steps=5")
Damage = Callable[[Path, Path], None]  # (sweep folder, run folder) -> None


@pytest.fixture(scope="module")
def trained_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep with one completed run, its checkpoints, metrics and job records."""
    root = tmp_path_factory.mktemp("base")
    assert isoflop("submit", "--root", root, *ONE_RUN) == 0
    return root / SWEEP


def write(relative: str, content: str | bytes) -> Damage:
    """Replace the file at ``relative`` (under the run folder when it starts with ``run/``)."""
    def damage(sweep: Path, run: Path) -> None:
        path = run / relative[4:] if relative.startswith("run/") else sweep / relative
        if path.is_dir():
            shutil.rmtree(path)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return damage


def cut_short(relative: str, size: int) -> Damage:
    """The file at ``relative`` cut to its first ``size`` bytes."""
    def damage(sweep: Path, run: Path) -> None:
        path = run / relative[4:] if relative.startswith("run/") else sweep / relative
        path.write_bytes(path.read_bytes()[:size])
    return damage


def folder_instead(relative: str) -> Damage:
    def damage(sweep: Path, run: Path) -> None:
        path = run / relative[4:] if relative.startswith("run/") else sweep / relative
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        path.mkdir()
    return damage


def unfinished(damage: Damage | None = None) -> Damage:
    """The run without its result (so its records decide its state), then ``damage``."""
    def both(sweep: Path, run: Path) -> None:
        (run / "result.json").unlink()
        if damage is not None:
            damage(sweep, run)
    return both


def edited_run_json(**changes: object) -> Damage:
    def damage(sweep: Path, run: Path) -> None:
        values = json.loads((run / "run.json").read_text())
        values.update(changes)
        (run / "run.json").write_text(json.dumps(values))
    return unfinished(damage)


def every_manifest(manifest: object) -> Damage:
    """Every checkpoint's manifest.json replaced by ``manifest`` ("RUN" standing for the run's id)."""
    def damage(sweep: Path, run: Path) -> None:
        for path in (run / "checkpoints").glob("step_*/manifest.json"):
            path.write_text(json.dumps(manifest).replace('"RUN"', json.dumps(run.name)))
    return unfinished(damage)


def checkpoints_file(sweep: Path, run: Path) -> None:
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").write_text("x")


def plan_run_id(new_id: str) -> Damage:
    def damage(sweep: Path, run: Path) -> None:
        (sweep / "plan.csv").write_text((sweep / "plan.csv").read_text().replace(run.name, new_id))
    return damage


def removed(*relatives: str, then: Damage | None = None) -> Damage:
    def damage(sweep: Path, run: Path) -> None:
        for relative in relatives:
            path = sweep / relative
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if then is not None:
            then(sweep, run)
    return damage


def job_line(**record: object) -> Damage:
    return unfinished(write("run/jobs.jsonl", json.dumps(record) + "\n"))


def metrics_line(text: str) -> Damage:
    return unfinished(write("run/metrics.jsonl", text + "\n"))


# (case, damage, text the one line must contain); every one of status, wait, cancel, submit
SWEEP_RECORDS = [
    ("plan.csv not a plan", write("plan.csv", 'run_id,method\nx\n"unterminated'), "its header lacks batch_size"),
    ("plan.csv cut in a row", cut_short("plan.csv", 450), "plan.csv line 2: not a valid plan"),
    ("plan.csv not UTF-8", write("plan.csv", b"\xff\xfe\x00"), "plan.csv: cannot read the plan"),
    ("plan.csv a folder", folder_instead("plan.csv"), "plan.csv: cannot read the plan (Is a directory)"),
    ("plan.csv cut in its header", cut_short("plan.csv", 100), "plan.csv: not a valid plan (its header lacks"),
    ("plan.csv run_id a path", plan_run_id("../../elsewhere"), "is not a folder name"),
    ("plan.csv and runs/ missing", removed("plan.csv", "runs"), "no plan.csv and no readable runs/ folder"),
    ("runs/ a file, no plan.csv", removed("plan.csv", "runs", then=write("runs", "x")), "no readable runs/"),
    ("result.json []", write("run/result.json", "[]"), "result.json: not a valid run result (JSON list"),
    ("result.json not JSON", write("run/result.json", "{oops"), "result.json: not a valid run result (not JSON"),
    ("result.json a folder", folder_instead("run/result.json"), "result.json: cannot read the run result"),
    ("jobs.jsonl line 42", unfinished(write("run/jobs.jsonl", "42\n")), "jobs.jsonl record 1: not a valid job event"),
    ("submitted without job_id", job_line(event="submitted", time=1.0, executor="local"), "needs its job_id"),
    ("unknown job event", job_line(event="exploded", time=1.0), "'event': 'exploded' is not one of"),
    ("job event of version 99", job_line(event="started", time=1.0, version=99), "newer than this isoflop"),
    ("jobs.jsonl a folder", unfinished(folder_instead("run/jobs.jsonl")), "jobs.jsonl: cannot read the job events"),
    ("metrics loss not a number", metrics_line('{"step": 3, "loss": "low"}'), "'low' is not a finite number"),
    ("metrics step null", metrics_line('{"step": null, "loss": 2.5}'), "step None is not a whole number"),
    ("metrics step infinite", metrics_line('{"step": 1e400, "loss": 2.5}'), "metrics.jsonl: the last training"),
    ("metrics step negative", metrics_line('{"step": -3, "loss": 2.5}'), "step -3 is not a whole number"),
]
SUBMIT_ONLY = [
    ("study.yaml not YAML", write("study.yaml", "train: [unclosed\n"), "study.yaml: cannot read the study"),
    ("study.yaml not UTF-8", write("study.yaml", b"\xff\xfe"), "study.yaml: cannot read the study"),
    ("submit lock a folder", folder_instead(".submit.lock"), "cannot lock the sweep"),
    ("code/ a file", unfinished(removed("code", then=write("code", "x"))), "cannot write the sweep directory"),
    ("run.json not JSON", unfinished(write("run/run.json", "{oops")), "run.json is not readable JSON"),
    ("run.json cut short", unfinished(cut_short("run/run.json", 150)), "delete it, and this `isoflop submit` writes"),
    ("run.json a folder", unfinished(folder_instead("run/run.json")), "run.json is not a file; move it aside"),
    ('run.json "steps": -5', edited_run_json(steps=-5), "steps=-5 must be a whole number >= 1"),
    ("run.json edited", edited_run_json(learning_rate=0.5), "run.json is not the run's planned spec"),
    ("run.json of version 99", edited_run_json(version=99), "newer than this isoflop"),
]
TRAIN = [
    ('"costs": {}', edited_run_json(costs={}), "costs.flops_per_token_train=None must be a finite number > 0"),
    ('"steps": -5', edited_run_json(steps=-5), "steps=-5 must be a whole number >= 1"),
    ('"steps": 1.5', edited_run_json(steps=1.5), "steps=1.5 must be a whole number"),
    ('"steps": "5"', edited_run_json(steps="5"), "steps='5' must be a whole number"),
    ('"seed": -1', edited_run_json(seed=-1), "seed=-1 must be in [0, 2**32)"),
    ('"run_id": "../x"', edited_run_json(run_id="../x"), "run_id='../x' is not a folder name"),
    ('"model": {}', edited_run_json(model={}), "run.json is not a valid run spec"),
    ("run.json not JSON", unfinished(write("run/run.json", "{oops")), "run.json is not readable JSON"),
    ("run.json a folder", unfinished(folder_instead("run/run.json")), "run.json: no such file"),
    ("result.json []", write("run/result.json", "[]"), "result.json: not a valid run result"),
    ("manifest []", every_manifest([]), "is unusable (missing or unreadable manifest.json)"),
    ("manifest of another run", every_manifest({"run_id": "other", "format": 2}), "it belongs to run 'other'"),
    ("manifest without files", every_manifest({"format": 2, "run_id": "RUN"}), "does not list the checkpoint"),
    ("manifest of a newer format", every_manifest({"format": 9, "run_id": "RUN"}), "format 9 is not one"),
    ("checkpoints/ a file", unfinished(checkpoints_file), "checkpoints is not a folder"),
    ("metrics.jsonl a folder", unfinished(folder_instead("run/metrics.jsonl")), "Is a directory"),
]


def command_line(command: str, sweep: Path, run: Path) -> list[object]:
    return {"status": ["status", sweep], "wait": ["wait", sweep, "--timeout", "5", "--interval", "0.1"],
            "cancel": ["cancel", sweep], "submit": ["submit", "--root", sweep.parent, "--name", sweep.name,
                                                    *ONE_RUN, "--retry-failed"],
            "train": ["train", run]}[command]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` but the run lock: file bytes, None for a folder."""
    return {str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
            for path in sorted(folder.rglob("*")) if path.name != LOCK_FILE}


CASES = ([pytest.param(command, damage, expected, id=f"{command}: {case}")
          for command in ("status", "wait", "cancel", "submit") for case, damage, expected in SWEEP_RECORDS]
         + [pytest.param("submit", damage, expected, id=f"submit: {case}") for case, damage, expected in SUBMIT_ONLY]
         + [pytest.param("train", damage, expected, id=f"train: {case}") for case, damage, expected in TRAIN])


@pytest.mark.parametrize("command, damage, expected", CASES)
def test_a_damaged_sweep_is_one_line_and_changes_nothing(command: str, damage: Damage, expected: str,
                                                         trained_sweep: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / SWEEP
    shutil.copytree(trained_sweep, sweep, symlinks=True)
    (run,) = (sweep / "runs").iterdir()
    damage(sweep, run)
    before = snapshot(sweep)
    capsys.readouterr()
    status = isoflop(*command_line(command, sweep, run))
    error = capsys.readouterr().err
    lines = error.strip().splitlines()
    assert status == 2, error
    assert len(lines) == 1 and lines[0].startswith(f"isoflop {command}: error: "), error
    assert expected in lines[0], lines[0]
    assert "Traceback" not in error
    assert snapshot(sweep) == before
