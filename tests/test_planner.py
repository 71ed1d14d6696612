"""Planner properties: budgets spent, optimum bracketed, deterministic ids."""

from __future__ import annotations

import pytest

from isoflop.compose import load_study
from isoflop.errors import UserError
from isoflop.planner import per_rank_micro_batch_size, plan
from isoflop.run_spec import RunSpec


@pytest.fixture(scope="module")
def peer_study():
    return load_study("peer_paper").study


@pytest.fixture(scope="module")
def peer_plan(peer_study):
    return plan(peer_study)


def test_realized_flops_within_one_step_of_budget(peer_plan) -> None:
    for run in peer_plan.runs:
        step_flops = run.flops_per_token_train * run.batch_size * run.seq_len
        assert run.realized_flops <= run.budget_flops
        assert run.budget_flops - run.realized_flops < step_flops
        assert run.steps == int(run.budget_flops // step_flops)
        assert run.tokens == run.steps * run.batch_size * run.seq_len


def test_at_least_five_sizes_bracketing_the_estimate(peer_study, peer_plan) -> None:
    study = peer_study
    for budget in (6e18, 2e19):
        for method in ("dense", "moe", "pkm", "peer"):
            runs = [r for r in peer_plan.runs if r.budget_flops == budget and r.method == method]
            assert len(runs) >= 5, (budget, method)
            ratio = [r.tokens / r.costs["n_params_active_non_embedding"] for r in runs]
            target = study.ladder.tokens_per_param
            assert sum(value >= target for value in ratio) >= 2
            assert sum(value < target for value in ratio) >= 2


def test_run_ids_are_deterministic_and_unique(peer_plan) -> None:
    again = plan(load_study("peer_paper").study)
    assert [r.run_id for r in again.runs] == [r.run_id for r in peer_plan.runs]
    assert len({r.run_id for r in peer_plan.runs}) == len(peer_plan.runs)
    changed = plan(load_study("peer_paper", ["train.seed=1"]).study)
    assert not {r.run_id for r in changed.runs} & {r.run_id for r in peer_plan.runs}


def test_run_spec_round_trips_through_json(peer_plan) -> None:
    import json
    import pickle

    for run in peer_plan.runs[:3] + peer_plan.runs[-3:]:
        restored = RunSpec.from_dict(json.loads(json.dumps(run.to_dict())))
        assert restored == run
        assert restored.with_run_id().run_id == run.run_id
        assert pickle.loads(pickle.dumps(run)) == run


def test_budget_too_small_names_the_smallest_feasible_budget() -> None:
    with pytest.raises(UserError, match=r"too small .* use a budget >= [0-9.e+]+ FLOPs"):
        plan(load_study("peer_paper", budgets=[1e12]).study)


def test_short_runs_are_dropped_with_a_reason() -> None:
    study = load_study("peer_paper", ["ladder.min_steps=20000"], budgets=[6e18]).study
    result = plan(study)
    assert result.dropped and all("min_steps=20000" in d.reason for d in result.dropped)
    assert all(run.steps >= 20000 for run in result.runs)


def test_pinned_width_varies_depth_only() -> None:
    study = load_study("peer_paper", ["model.d_model=512", "model.n_heads=8", "ladder.size_ratio=1.2", "ladder.max_layers=160"], budgets=[6e18]).study
    result = plan(study)
    assert {run.model.backbone.d_model for run in result.runs} == {512}
    assert len({run.model.backbone.n_layers for run in result.runs if run.method == "dense"}) >= 5


@pytest.mark.parametrize("batch, micro, world, expected", [(128, 128, 1, 128), (128, 16, 8, 16), (128, 48, 1, 32),
                                                           (128, 128, 8, 16), (12, 8, 2, 6), (16, 6, 2, 4)])
def test_per_rank_micro_batch_is_the_largest_divisor_of_the_rank_batch(batch: int, micro: int, world: int,
                                                                      expected: int) -> None:
    assert per_rank_micro_batch_size(batch, micro, world) == expected


def test_a_micro_batch_of_partial_routing_groups_is_a_user_error() -> None:
    with pytest.raises(UserError, match="each forward holds 8 sequences per process .* on 2 processes"):
        plan(load_study("tiny", ["cluster.tasks_per_node=2"]).study)  # 16 sequences over 2 ranks, group 16
    assert plan(load_study("tiny", ["cluster.tasks_per_node=2", "methods.moe.routing_group=8"]).study).runs
