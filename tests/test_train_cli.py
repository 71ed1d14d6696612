"""``isoflop train RUN_DIR`` end to end, and every bad input as one line + exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isoflop.cli import main
from isoflop.study_config import DataConfig
from conftest import metrics
from train_support import tiny_spec, write_corpus, write_run


def assert_one_line_error(capsys: pytest.CaptureFixture, status: int, *fragments: str) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert status == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("isoflop train: error:"), captured.err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_train_command_writes_the_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl".replace(".jsonl", ".txt"))
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("\n".join(json.dumps({"body": f"evaluation document {index} " * 3})
                                   for index in range(20)) + "\n")
    data = DataConfig(source="files", paths=[str(corpus)], validation_fraction=0.1,
                      eval_datasets=[{"name": "heldout_jsonl", "source": "files", "path": str(eval_file),
                                      "text_field": "body"}])
    run_dir = write_run(tmp_path / "run", tiny_spec(steps=3, data=data, eval_tokens=4096))
    assert main(["train", str(run_dir)]) == 0
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["steps"] == 3
    assert set(result["eval"]) == {"validation", "heldout_jsonl"}
    assert result["eval"]["heldout_jsonl"]["capped"] is True  # 20 short documents < 4096 tokens
    assert any("heldout_jsonl" in note for note in result["notes"])
    records = metrics(run_dir)
    assert [record["step"] for record in records] == [1, 2, 3]
    assert {"step", "tokens", "flops", "loss", "lr", "grad_norm", "tokens_per_s", "mfu",
            "elapsed_s"} <= set(records[0])
    assert "loss" in capsys.readouterr().err  # the progress line


def test_missing_run_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert_one_line_error(capsys, main(["train", str(tmp_path)]), "run.json", "no such file")


def test_malformed_run_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "run.json").write_text("{not json")
    assert_one_line_error(capsys, main(["train", str(tmp_path)]), "not readable JSON")
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "x"}))
    assert_one_line_error(capsys, main(["train", str(tmp_path)]), "not a valid run spec")


@pytest.mark.parametrize("case", ["missing", "empty", "unknown-suffix"])
def test_unreadable_or_empty_data_path(tmp_path: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    path = {"missing": tmp_path / "absent.txt", "empty": tmp_path / "empty.txt",
            "unknown-suffix": tmp_path / "corpus.csvx"}[case]
    if case != "missing":
        path.write_text("" if case == "empty" else "text\n")
    run_dir = write_run(tmp_path / "run", tiny_spec(data=DataConfig(source="files", paths=[str(path)])))
    assert_one_line_error(capsys, main(["train", str(run_dir)]), str(path.name))
    assert not (run_dir / "result.json").exists()


def test_corpus_smaller_than_the_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt", n_documents=40)
    data = DataConfig(source="files", paths=[str(corpus)], validation_fraction=0.2)
    run_dir = write_run(tmp_path / "run", tiny_spec(steps=200, data=data))
    assert_one_line_error(capsys, main(["train", str(run_dir)]), "allow_multiple_epochs")


def test_multiple_epochs_when_allowed_warn(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt", n_documents=20)
    data = DataConfig(source="files", paths=[str(corpus)], validation_fraction=0.2, allow_multiple_epochs=True)
    run_dir = write_run(tmp_path / "run", tiny_spec(steps=30, data=data, log_every_steps=10))
    assert main(["train", str(run_dir)]) == 0
    assert "warning: the run repeats its corpus" in capsys.readouterr().err
    described = json.loads((run_dir / "result.json").read_text())["data"]
    assert described["epochs"] > 1
    held_out = described["validation"]  # the validation set's size and content hash are recorded
    assert held_out["documents"] >= 1 and held_out["tokens"] > 0 and len(held_out["content_hash"]) == 16


def test_unknown_tokenizer_offline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = DataConfig(tokenizer="no-such-org/no-such-tokenizer", vocab_size=50000)
    run_dir = write_run(tmp_path / "run", tiny_spec(data=data))
    assert_one_line_error(capsys, main(["train", str(run_dir)]), "no-such-org/no-such-tokenizer")


def test_corrupt_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = tiny_spec(steps=2)
    run_dir = write_run(tmp_path / "run", spec)
    checkpoint_dir = run_dir / "checkpoints" / "step_000001"
    checkpoint_dir.mkdir(parents=True)
    (checkpoint_dir / "state.pt").write_bytes(b"truncated")
    (checkpoint_dir / "manifest.json").write_text(json.dumps({"run_id": spec.run_id, "sha256": "0",
                                                              "bytes": 9, "step": 1}))
    assert_one_line_error(capsys, main(["train", str(run_dir)]), "unusable", "delete")
    assert (checkpoint_dir / "state.pt").read_bytes() == b"truncated"
    assert not (run_dir / "result.json").exists()


def test_divergence_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import isoflop.train as train

    original = train.F.cross_entropy
    calls = {"count": 0}

    def cross_entropy_nan_at_third_step(*args, **kwargs):
        calls["count"] += 1
        loss = original(*args, **kwargs)
        return loss * torch.nan if calls["count"] == 3 else loss

    monkeypatch.setattr(train.F, "cross_entropy", cross_entropy_nan_at_third_step)
    corpus = write_corpus(tmp_path / "corpus.txt")
    result = train.run(tiny_spec(steps=6, data=DataConfig(source="files", paths=[str(corpus)],
                                                            validation_fraction=0.1)), tmp_path / "run")
    assert result.status == "diverged" and result.diverged_at_step == 3 and result.steps == 2
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "diverged"
