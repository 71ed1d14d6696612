"""The whole pipeline with cooldown branches (the smoke_wsd study): plan trunks and branches,
train them on local processes (each trunk submitting its branches), analyse, draw the
training curves; running it again trains nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from isoflop.cli import main


@pytest.mark.slow
def test_smoke_wsd_study_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["study", "--sweep", "smoke_wsd", "--root", str(tmp_path), "--interval", "1", "--bootstrap", "50"]
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 0, captured.err[-2000:]
    sweep = tmp_path / "smoke_wsd"
    trunks, branches = sorted((sweep / "trunks").iterdir()), sorted((sweep / "runs").iterdir())
    assert len(trunks) >= 4 and len(branches) > len(trunks)
    for run_dir in (*trunks, *branches):
        result = json.loads((run_dir / "result.json").read_text())
        assert result["status"] == "completed", run_dir.name
        evaluations = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                       if '"kind": "eval"' in line]
        assert evaluations and evaluations[-1]["validation_loss"] == result["eval"]["validation"]["loss"]
    for run_dir in branches:
        spec = json.loads((run_dir / "run.json").read_text())
        assert json.loads((run_dir / "fork.json").read_text())["step"] == spec["cooldown_start_step"]
        assert json.loads((run_dir / "result.json").read_text())["steps"] == spec["steps"]
    report = sweep / "report"
    with open(report / "optima.csv") as handle:
        assert {row["method"] for row in csv.DictReader(handle)} == {"dense", "peer"}
    assert (report / "training_curves.png").stat().st_size > 1000
    assert "training_curves.png" in (report / "report.md").read_text()

    assert main(argv) == 0
    assert f"submitted 0 of {len(trunks) + len(branches)}" in capsys.readouterr().err
