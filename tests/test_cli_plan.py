"""``isoflop plan`` output formats and its bad-input contract (exit 2, one line, no traceback)."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from isoflop.cli import main
from isoflop.commands.common import writable_file, write_output_file
from isoflop.errors import UserError


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
    (["budgets=[inf]"], "must be a finite positive number of FLOPs"),
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


def test_out_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "target.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to("target.csv")
    status, _, err = run_cli(capsys, "plan", "--format", "csv", "--out", str(link))
    assert status == 0, err
    assert link.is_symlink() and os.readlink(link) == "target.csv"
    assert target.read_text().startswith("run_id,method,budget")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link.csv", "target.csv"]  # no temporary left


def test_out_through_a_dangling_symlink_creates_its_target(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    link = tmp_path / "link.csv"
    link.symlink_to("new.csv")
    status, _, err = run_cli(capsys, "plan", "--format", "csv", "--out", str(link))
    assert status == 0, err
    assert link.is_symlink() and (tmp_path / "new.csv").read_text().startswith("run_id,method,budget")


def test_out_through_a_symlink_into_a_missing_folder_is_one_line(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "missing" / "plan.csv")
    status, _, err = run_cli(capsys, "plan", "--format", "csv", "--out", str(link))
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"no such directory {tmp_path / 'missing'}" in err
    assert link.is_symlink() and sorted(path.name for path in tmp_path.iterdir()) == ["link.csv"]


def test_out_to_a_symlink_loop_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    status, _, err = run_cli(capsys, "plan", "--out", str(tmp_path / "a"))
    assert status == 2 and err.count("\n") == 1 and "cannot write" in err
    assert (tmp_path / "a").is_symlink() and (tmp_path / "b").is_symlink()


def test_out_to_a_fifo_writes_into_it_and_keeps_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "plan.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    status, _, err = run_cli(capsys, "plan", "--format", "csv", "--out", str(fifo))
    reader.join(timeout=60)
    assert status == 0, err
    assert not reader.is_alive() and received[0].decode().startswith("run_id,method,budget")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert [path.name for path in tmp_path.iterdir()] == ["plan.fifo"]


def test_write_output_file_to_a_fifo_whose_reader_left_is_one_user_error(tmp_path: Path) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reader = threading.Thread(target=lambda: os.close(os.open(fifo, os.O_RDONLY)), daemon=True)
    reader.start()  # opens and closes at once: the write gets EPIPE
    with pytest.raises(UserError, match=r"^--json .*out\.fifo: cannot write \(Broken pipe\)"):
        write_output_file(fifo, "x" * (1 << 20), "--json")
    reader.join(timeout=60)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_writable_file_accepts_a_fifo_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    assert writable_file(str(fifo)) == fifo  # would block if it opened the FIFO: no reader
    assert [path.name for path in tmp_path.iterdir()] == ["out.fifo"]


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
