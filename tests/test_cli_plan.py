"""``isoflop plan`` output formats and its bad-input contract (exit 2, one line, no traceback)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from isoflop.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = main(list(argv))
    except SystemExit as exit_:
        status = int(exit_.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_table_is_grouped_and_fits_120_columns(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "plan", "--budget", "6e18")
    assert status == 0
    assert "budget 6e+18 FLOPs · method peer" in out
    assert max(len(line) for line in out.splitlines()[:-1]) <= 120


def test_json_has_the_documented_fields(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "plan", "--budget", "6e18", "--format", "json")
    rows = json.loads(out)
    required = {"run_id", "method", "budget", "n_layers", "d_model", "n_heads", "n_params_total",
                "n_params_active", "n_params_embedding", "flops_per_token_train", "tokens", "steps",
                "batch_size", "seq_len", "realized_flops", "model"}
    assert status == 0 and rows and required <= set(rows[0])
    assert rows[0]["model"]["ffw"]["family"] == "dense"
    assert all(row["causal"] for row in rows)  # the default study's layers are all causal


def test_the_papers_query_batchnorm_is_marked_non_causal(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "plan", "--budget", "6e18", "--format", "csv",
                             "methods.peer.query_norm_statistics=batch")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert status == 0
    assert {row["causal"] for row in rows if row["method"] == "peer"} == {"False"}
    assert all("qnorm=batch NON-CAUSAL" in row["ffw"] for row in rows if row["method"] == "peer")
    assert {row["causal"] for row in rows if row["method"] != "peer"} == {"True"}


def test_csv_to_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.csv"
    status, stdout, _ = run_cli(capsys, "plan", "--format", "csv", "--out", str(out))
    assert status == 0 and stdout == ""
    lines = out.read_text().splitlines()
    assert lines[0].startswith("run_id,method,budget") and len(lines) > 40


@pytest.mark.parametrize("argv, expected", [
    (["--budget", "abc"], "'abc' is not a number"),
    (["--budget", "-1"], "positive number"),
    (["--budget", "0"], "positive number"),
    (["--budget", "1e12"], "use a budget >="),
    (["budgets=[inf]"], "must be a finite number > 0 FLOPs"),
    (["--sweep", "nosuch"], "unknown study; available: "),
    (["nosuch_key=1"], "nosuch_key"),
    (["model.d_model=100", "model.n_heads=8"], "divisible by n_heads=8"),
    (["--format", "xml"], "invalid choice: 'xml'"),
    (["--out", "/nonexistent-dir/plan.txt"], "cannot write"),
    (["methods.peer.n_experts=1000"], "perfect-square"),
    (["cluster=nosuch"], "cluster/nosuch"),
    (["train.micro_batch_size=8"], "methods.moe.routing_group=16: each forward holds 8 sequences per process"),
])
def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                                          expected: str) -> None:
    status, _, err = run_cli(capsys, "plan", *argv)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert "Traceback" not in err


def test_a_failed_plan_keeps_the_existing_out_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.txt"
    out.write_text("keep me")
    status, _, _ = run_cli(capsys, "plan", "--budget", "1e12", "--out", str(out))
    assert status == 2 and out.read_text() == "keep me"
    status, _, _ = run_cli(capsys, "plan", "--out", str(tmp_path))
    assert status == 2 and out.read_text() == "keep me"


def test_console_script_answers_without_traceback() -> None:
    result = subprocess.run([sys.executable, "-m", "isoflop.cli", "plan", "--budget", "abc"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_verify_flops_holds_every_smoke_model(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "plan", "--sweep", "smoke", "--verify-flops", "--format", "json")
    rows = json.loads(out)
    assert status == 0, err
    assert {row["method"] for row in rows} == {"dense", "moe", "pkm", "peer"}
    assert all(abs(row["measured_over_accounted"] - 1) <= 0.01 for row in rows)


def test_verify_flops_measures_at_the_micro_batch_a_rank_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    import models.verify
    from isoflop.commands.plan import verify_flops, within_tolerance
    from isoflop.compose import load_study
    from isoflop.planner import plan

    measured_batches = []

    def record(config: object, seq_len: int, batch_size: int) -> float:
        measured_batches.append(batch_size)
        from isoflop.flops import model_costs
        return model_costs(config, seq_len).flops_per_token_forward_measurable

    monkeypatch.setattr(models.verify, "measure_forward_flops_per_token", record)
    study = load_study("smoke", ["train.micro_batch_size=8", "methods.moe.routing_group=4"]).study
    runs = plan(study).runs
    assert within_tolerance(verify_flops(runs, world_size=2))
    # 16 sequences on 2 processes: 8 per rank, micro-batch 8 -> 8; on 4 processes -> 4.
    assert set(measured_batches) == {8}
    measured_batches.clear()
    verify_flops(runs, world_size=4)
    assert set(measured_batches) == {4}
