"""A branch that starts from its trunk's fork checkpoint ends in exactly the state of the
same RunSpec trained straight through (same data order, same steps; bitwise on the CPU);
periodic evaluation changes nothing; a trunk's checkpoint is handed over as the branch's own."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import metrics
from isoflop import checkpoint
from isoflop.distributed import DistributedContext, setup_distributed, teardown_distributed
from isoflop.errors import UserError
from isoflop.forks import ForkRecord
from isoflop.sweep_dir import RunDir
from isoflop.train import Trainer, run
from branch_support import ONE_SHAPE, branch_sweep
from train_support import tiny_spec

def trained_state(spec, run_dir: Path) -> dict:
    """The whole training state after training ``spec`` in ``run_dir`` (resuming from its checkpoints)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    context = setup_distributed()
    try:
        trainer = Trainer(spec, RunDir(run_dir), context)
        try:
            assert trainer.train(at_step_boundary=lambda: None) is None
            state = trainer.state_dict()
        finally:
            trainer.close()
    finally:
        teardown_distributed(context)
    state["totals"].pop("elapsed_s")  # wall time
    return state


def assert_identical(left, right, where: str = "state") -> None:
    """Bitwise equality of nested training states (tensors, arrays, numbers, containers)."""
    assert type(left) is type(right), where
    if isinstance(left, torch.Tensor):
        assert left.dtype == right.dtype and torch.equal(left, right), where
    elif isinstance(left, np.ndarray):
        assert np.array_equal(left, right), where
    elif isinstance(left, dict):
        assert left.keys() == right.keys(), where
        for key in left:
            assert_identical(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right), where
        for index, (a, b) in enumerate(zip(left, right)):
            assert_identical(a, b, f"{where}[{index}]")
    else:
        assert left == right, where


@pytest.mark.parametrize("family", ONE_SHAPE)
def test_a_branch_from_its_trunk_equals_the_same_run_trained_straight_through(tmp_path: Path, family: str) -> None:
    sweep, study_plan = branch_sweep(tmp_path / "sweep", ONE_SHAPE[family])
    (trunk,) = study_plan.trunks
    branch = min(study_plan.runs, key=lambda spec: spec.steps)  # forks half-way through the trunk
    assert 0 < branch.cooldown_start_step < trunk.steps

    trunk_result = run(trunk, sweep.run(trunk.run_id).path)
    assert trunk_result.steps == trunk.steps and sweep.run(trunk.run_id).path.parent == sweep.trunks_dir
    for spec in study_plan.runs:  # both branches were handed their fork checkpoint
        record = ForkRecord.read(sweep.run(spec.run_id).fork_json)
        assert (record.trunk_id, record.step) == (trunk.run_id, spec.cooldown_start_step)
    forked = trained_state(branch, sweep.run(branch.run_id).path)
    straight = trained_state(branch, tmp_path / "straight")
    assert forked["step"] == straight["step"] == branch.steps
    assert_identical(forked, straight)
    resumes = [line for line in metrics(sweep.run(branch.run_id).path) if line.get("kind") == "resume"]
    assert [line["step"] for line in resumes] == [branch.cooldown_start_step]  # no trunk step trained again


def test_the_fork_checkpoint_is_handed_over_by_hard_links(tmp_path: Path) -> None:
    state = {"step": 3, "weights": torch.arange(4.0), "table": torch.rand(512, 1024)}
    context = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    source = checkpoint.save(tmp_path / "trunk", 3, "trunk-id", state, context)
    adopted = checkpoint.adopt(source, "trunk-id", tmp_path / "branch", "branch-id")
    assert adopted == checkpoint.step_folder(tmp_path / "branch", 3)
    assert checkpoint.verify(adopted, "branch-id") is None and checkpoint.verify(source, "trunk-id") is None
    assert json.loads((adopted / "manifest.json").read_text())["adopted_from"] == "trunk-id"
    (table_file,) = [path.name for path in source.glob("*.distcp") if path.stat().st_size > 1 << 20]
    assert os.stat(adopted / table_file).st_ino == os.stat(source / table_file).st_ino  # no copy
    loaded = checkpoint.load(checkpoint.newest_good(tmp_path / "branch", "branch-id"))
    assert torch.equal(loaded["weights"], state["weights"]) and torch.equal(loaded["table"], state["table"])
    (source / table_file).write_bytes(b"torn")
    with pytest.raises(UserError, match="cannot be handed on"):
        checkpoint.adopt(source, "trunk-id", tmp_path / "other", "other-id")


def test_periodic_evaluation_logs_the_validation_loss_and_changes_no_step(tmp_path: Path) -> None:
    plain = run(tiny_spec(steps=12), tmp_path / "plain")
    spec = tiny_spec(steps=12, eval_every_tokens=5 * 4 * 32)  # every 5 steps of 4 x 32 tokens
    evaluated = run(spec, tmp_path / "evaluated")
    losses = lambda path: [(m["step"], m["loss"]) for m in metrics(path) if "kind" not in m]  # noqa: E731
    assert losses(tmp_path / "evaluated") == losses(tmp_path / "plain")
    assert evaluated.eval["validation"].loss == plain.eval["validation"].loss
    evaluations = [m for m in metrics(tmp_path / "evaluated") if m.get("kind") == "eval"]
    assert [m["step"] for m in evaluations] == [5, 10, 12]
    assert evaluations[-1]["validation_loss"] == plain.eval["validation"].loss
    assert evaluations[0]["flops"] == 5 * 4 * 32 * spec.flops_per_token_train == 5 * 128 * spec.flops_per_token_train
    assert evaluations[0]["validation_loss"] > evaluations[-1]["validation_loss"]
