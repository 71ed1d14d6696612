"""Two CPU processes (gloo DDP) follow the single-process loss trajectory for
the same global batch and evaluate to the same loss (equal within fp32
tolerance: only the summation order of the gradients differs), for the
families the studies compare: dense, expert choice (each rank's micro-batch
holds whole routing groups), PEER and PKM (causal query normalisation, no
running statistics)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isoflop.study_config import DataConfig
from isoflop.train import run
from train_support import PEER_TINY, logged_losses, tiny_spec, train_in_processes, write_corpus, write_run

EXPERT_CHOICE_TINY = {"family": "expert_choice_moe", "n_experts": 4, "routing_group": 2}
PKM_TINY = {"family": "pkm", "n_experts": 256, "n_heads": 2, "top_k": 4, "d_key": 16}


@pytest.mark.slow
@pytest.mark.parametrize("ffw, sparse", [(None, False), (PEER_TINY, True), (EXPERT_CHOICE_TINY, False),
                                         (PKM_TINY, False)], ids=["dense", "peer-sparse", "expert-choice", "pkm"])
def test_two_processes_match_one(tmp_path: Path, ffw, sparse) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    data = DataConfig(source="files", paths=[str(corpus)], validation_fraction=0.1)
    # 4 sequences a step: one process runs 2 micro-batches of 2, each of two processes one of 2.
    spec = tiny_spec(steps=6, method=ffw["family"] if ffw else "dense", ffw=ffw, data=data, micro_batch_size=2,
                     sparse_tables=sparse)
    single = run(spec, tmp_path / "single")

    run_dir = write_run(tmp_path / "ddp", spec)
    train_in_processes(run_dir, 2, tmp_path)
    distributed = json.loads((run_dir / "result.json").read_text())
    assert distributed["world_size"] == 2
    assert logged_losses(run_dir) == pytest.approx(logged_losses(tmp_path / "single"), rel=1e-5, abs=1e-6)
    assert distributed["eval"]["validation"]["loss"] == pytest.approx(single.eval["validation"].loss, rel=1e-5)
