"""Exact resume: a run preempted at an arbitrary step and resumed from its
checkpoint follows the uninterrupted run bit for bit (CPU, fp32)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from isoflop import checkpoint
from isoflop.errors import UserError
from isoflop.preemption import checkpoint_active_run
from isoflop.run_records import RunResult
from isoflop.study_config import DataConfig
from isoflop.train import run
from conftest import metrics
from train_support import PEER_TINY, tiny_spec, write_corpus


class Preempted(Exception):
    """What the submission code's exit after checkpoint() looks like to the loop."""


def training_losses(run_dir: Path) -> dict[int, float]:
    """step -> loss of metrics.jsonl; after a resume the later line of a step wins."""
    losses = {}
    for record in metrics(run_dir):
        if "loss" in record and record.get("kind") is None:
            losses[record["step"]] = record["loss"]
    return losses


@pytest.mark.parametrize("ffw, sparse", [(None, False), (PEER_TINY, True)], ids=["dense", "peer-sparse"])
def test_preempted_run_resumes_bitwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ffw, sparse) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    data = DataConfig(source="files", paths=[str(corpus)], validation_fraction=0.1)
    spec = tiny_spec(steps=10, method="peer" if ffw else "dense", ffw=ffw, data=data,
                     micro_batch_size=2, checkpoint_every_steps=4, sparse_tables=sparse)
    reference = run(spec, tmp_path / "reference")

    # Preemption: the signal arrives during step 7; the handler installed before
    # the run (submitit's, here a stand-in) runs once the step has finished: it
    # checkpoints and leaves.
    def handler(signum, frame):
        assert checkpoint_active_run()
        raise Preempted

    from isoflop.data import PackedCorpus

    original_next_batch = PackedCorpus.next_batch
    calls = {"count": 0}

    def next_batch_with_signal(self, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 7:
            os.kill(os.getpid(), signal.SIGUSR2)
        return original_next_batch(self, *args, **kwargs)

    previous = signal.signal(signal.SIGUSR2, handler)
    monkeypatch.setattr(PackedCorpus, "next_batch", next_batch_with_signal)
    try:
        with pytest.raises(Preempted):
            run(spec, tmp_path / "resumed")
    finally:
        signal.signal(signal.SIGUSR2, previous)
        monkeypatch.setattr(PackedCorpus, "next_batch", original_next_batch)
    saved = sorted(path.name for path in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert saved == ["step_000004", "step_000007"]  # the last two: periodic, then at the step boundary
    assert not (tmp_path / "resumed" / "result.json").exists()

    resumed = run(spec, tmp_path / "resumed")
    assert training_losses(tmp_path / "resumed") == training_losses(tmp_path / "reference")
    assert resumed.final_train_loss == reference.final_train_loss
    assert resumed.eval["validation"].loss == reference.eval["validation"].loss
    assert resumed.steps == spec.steps and resumed.status == "completed"
    # a completed run is returned as is, without training
    assert run(spec, tmp_path / "resumed") == RunResult.read(tmp_path / "resumed" / "result.json")


def test_corrupt_checkpoint_falls_back_to_the_previous_good_one(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    data = DataConfig(source="files", paths=[str(corpus)], validation_fraction=0.1)
    spec = tiny_spec(steps=6, data=data, checkpoint_every_steps=2)
    reference = run(spec, tmp_path / "reference")
    run_dir = tmp_path / "run"
    shutil.copytree(tmp_path / "reference" / "checkpoints", run_dir / "checkpoints")  # steps 2 and 4
    newest = max((run_dir / "checkpoints" / "step_000004").glob("*.distcp"), key=lambda path: path.stat().st_size)
    newest.write_bytes(newest.read_bytes()[:1000])  # a partial write
    result = run(spec, run_dir)
    assert result.final_train_loss == reference.final_train_loss
    assert (run_dir / "checkpoints" / "corrupt-step_000004").is_dir()


def test_only_corrupt_checkpoints_is_a_user_error(tmp_path: Path) -> None:
    spec = tiny_spec(steps=2)
    state_dir = tmp_path / "checkpoints" / "step_000001"
    state_dir.mkdir(parents=True)
    (state_dir / "state.pt").write_bytes(b"garbage")
    (state_dir / "manifest.json").write_text(json.dumps({"run_id": spec.run_id, "sha256": "0", "bytes": 7}))
    with pytest.raises(UserError, match="unusable"):
        checkpoint.newest_good(tmp_path, spec.run_id)
    assert state_dir.is_dir()  # left untouched for the user
