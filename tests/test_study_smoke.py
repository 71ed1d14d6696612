"""The whole pipeline on the smoke study: plan, train (local processes), analyse."""

from __future__ import annotations

import csv
import json
import typing
from pathlib import Path

import pytest

from analysis.records import FitStatus
from isoflop.cli import main

FIT_STATUSES = set(typing.get_args(FitStatus))


@pytest.mark.slow
def test_smoke_study_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["study", "--sweep", "smoke", "--root", str(tmp_path), "--interval", "1", "--bootstrap", "50"])
    captured = capsys.readouterr()
    assert status == 0, captured.err[-2000:]
    sweep = tmp_path / "smoke"
    run_dirs = sorted((sweep / "runs").iterdir())
    assert len(run_dirs) >= 16
    for run_dir in run_dirs:
        result = json.loads((run_dir / "result.json").read_text())
        assert result["status"] == "completed", run_dir.name
        assert result["eval"]["validation"]["loss"] > 0
    report = sweep / "report"
    with open(report / "optima.csv") as handle:
        optima = list(csv.DictReader(handle))
    assert {row["method"] for row in optima} == {"dense", "moe", "pkm", "peer"}
    assert all(row["status"] in FIT_STATUSES for row in optima)
    assert all(row["n_opt"] for row in optima if row["status"] == "ok")
    assert (report / "powerlaws.csv").stat().st_size > 0
    for figure in ("isoflop.png", "isoflop.pdf", "scaling.png", "scaling.pdf"):
        assert (report / figure).stat().st_size > 1000, figure
    assert "isoflop.png" in (report / "report.md").read_text()
    assert str(report / "report.md") in captured.out

    # Running the same study again continues it: nothing is trained twice.
    assert main(["study", "--sweep", "smoke", "--root", str(tmp_path), "--interval", "1", "--bootstrap", "50"]) == 0
    assert f"submitted 0 of {len(run_dirs)}" in capsys.readouterr().err


@pytest.mark.slow
def test_figure_3a_study_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CPU Figure 3a study at a tenth of its budget: one backbone, dense and four N, its figure and Table 2."""
    args = ["study", "--sweep", "peer_fig3a_tiny", "--budget", "3e10", "--root", str(tmp_path), "--interval", "1",
            "--bootstrap", "0", "train.eval_tokens=8192"]
    status = main(args)
    captured = capsys.readouterr()
    assert status == 0, captured.err[-2000:]
    report = tmp_path / "peer_fig3a_tiny" / "report"
    for name in ("ablation_peer_experts.png", "ablation_peer_experts.pdf"):
        assert (report / name).stat().st_size > 1000, name
    assert "| 3e10 | 16k |" in (report / "table2_peer.md").read_text()
    with open(report / "table2_peer.csv") as handle:
        cells = list(csv.DictReader(handle))
    assert [int(cell["n_experts"]) for cell in cells] == [256, 1024, 4096, 16384]
    assert {cell["query_norm"] for cell in cells} == {"prefix"}
    assert all(0 < float(cell["expert_usage_percent"]) <= 100 and float(cell["unevenness"]) >= 0 for cell in cells)
    report_text = (report / "report.md").read_text()
    assert "ablation_peer_experts.png" in report_text and "table2_peer" in report_text
