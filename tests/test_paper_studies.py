"""The paper studies as sweeps: each matches its paper's settings, the planner's ladder modes they use
(a pinned backbone, ``ladder.backbones_from``), and every planned model's FLOPs within 1%."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace

import pytest

from isoflop.compose import load_study
from isoflop.errors import UserError
from isoflop.planner import plan
from isoflop.study_config import LadderConfig, StudyConfig
from test_cli_plan import run_cli

PAPER_STUDIES = ("peer_fig3a", "peer_fig3b", "peer_fig4", "peer_table2", "sigma_moe_paper")
CPU_STUDIES = tuple(f"{name}_tiny" for name in ("peer_fig3a", "peer_fig3b", "peer_fig4", "peer_table2", "sigma_moe"))


def shape(run) -> tuple[int, int, int]:
    backbone = run.model.backbone
    return backbone.n_layers, backbone.d_model, backbone.n_heads


def shapes_by_budget_and_method(runs) -> dict[tuple[float, str], set]:
    found = defaultdict(set)
    for run in runs:
        found[(run.budget_flops, run.method)].add(shape(run))
    return found


@pytest.mark.parametrize("sweep", PAPER_STUDIES)
def test_paper_scale_studies_train_as_the_peer_paper_does(sweep: str) -> None:
    study = load_study(sweep).study
    assert (study.train.batch_size, study.train.seq_len) == (128, 2048)
    assert (study.data.name, study.cluster.executor) == ("allenai/c4", "slurm")
    assert study.model.replace_blocks == ("all" if sweep == "sigma_moe_paper" else "middle")


def test_figure_3a_and_table2_vary_n_and_the_query_norm_on_one_backbone_at_2e19() -> None:
    fig3a, table2 = load_study("peer_fig3a").study, load_study("peer_table2").study
    assert fig3a.budgets == table2.budgets == (2e19,)
    peers = [ffw for ffw in table2.methods.values() if ffw.family == "peer"]
    assert {(ffw.n_experts, ffw.query_norm) for ffw in peers} == {
        (side**2, norm) for side in (128, 256, 512, 1024) for norm in (None, "prefix", "batch")}
    assert {(ffw.n_heads, ffw.top_k) for ffw in peers} == {(8, 16)}
    assert set(fig3a.methods) < set(table2.methods) and fig3a.methods["dense"].family == "dense"
    runs = plan(table2).runs
    assert {shape(run) for run in runs} == {(19, 1216, 19)} and len(runs) == 13


def test_figure_3b_composes_each_hk_from_several_heads_at_a_million_experts() -> None:
    methods = load_study("peer_fig3b").study.methods.values()
    compositions = defaultdict(set)
    for ffw in methods:
        assert (ffw.family, ffw.n_experts, ffw.query_norm) == ("peer", 1024**2, "prefix")
        assert 2 <= ffw.top_k <= 64
        compositions[ffw.n_heads * ffw.top_k].add(ffw.n_heads)
    assert sorted(compositions) == [32, 64, 128, 256, 512]
    assert all(len(heads) >= 3 for heads in compositions.values())
    assert 8 in compositions[128]  # the paper's default composition, h = 8 of top-16


def test_figure_4_compares_the_query_norms_over_figure_1s_ladder() -> None:
    study = load_study("peer_fig4").study
    assert study.budgets == (6e18, 2e19)
    assert sorted(str(ffw.query_norm) for ffw in study.methods.values()) == ["None", "batch", "prefix"]
    paper = load_study("peer_paper").study
    assert study.ladder == paper.ladder and study.methods["peer"] == paper.methods["peer"]
    runs = plan(study).runs
    assert {method for method in study.methods if not study.methods[method].causal} == {"peer_batchnorm"}
    by_method = shapes_by_budget_and_method(runs)
    assert all(len(shapes) == 6 for shapes in by_method.values())


@pytest.mark.parametrize("sweep", ["sigma_moe_paper", "sigma_moe_tiny"])
def test_sigma_moe_study_matches_total_and_active_parameters_on_shared_backbones(sweep: str) -> None:
    study = load_study(sweep).study
    assert study.model.activation == "relu" and study.model.replace_blocks == "all"
    families = {name: (ffw.family, getattr(ffw, "router", None)) for name, ffw in study.methods.items()}
    assert families == {"dense": ("dense", None), "sigma_moe": ("token_choice_moe", "sigmoid"),
                        "switch": ("token_choice_moe", "softmax"), "sbase": ("token_choice_moe", "sinkhorn"),
                        "softmax_topk": ("token_choice_moe", "softmax"), "topk_activation": ("topk_activation", None)}
    sigma = study.methods["sigma_moe"]
    assert (sigma.init, sigma.entropy_weight > 0, sigma.expert_dropout > 0) == ("sigma_moe", True, True)
    runs = plan(study).runs
    by_method = shapes_by_budget_and_method(runs)
    for budget in study.budgets:
        assert len({frozenset(by_method[(budget, method)]) for method in study.methods}) == 1
    rows = defaultdict(dict)
    for run in runs:
        rows[(run.budget_flops, shape(run))][run.method] = run
    assert len(rows) >= 2 * len(study.budgets)
    for row in rows.values():
        dense = row["dense"].costs
        for method in ("sigma_moe", "switch", "sbase", "softmax_topk", "topk_activation"):
            assert row[method].costs["n_params_total"] == pytest.approx(dense["n_params_total"], rel=0.02), method
        moe_active = {row[method].costs["n_params_active"] for method in ("sigma_moe", "sbase", "softmax_topk")}
        assert len(moe_active) == 1
        assert row["switch"].costs["n_params_active"] == pytest.approx(moe_active.pop(), rel=0.01)


def test_backbones_from_keeps_the_reference_ladder_and_gives_it_to_every_method() -> None:
    shared = load_study("tiny", ["ladder.backbones_from=dense"]).study
    alone = load_study("tiny").study
    shared_plan, alone_plan = plan(shared), plan(alone)
    dense_ids = lambda runs: [run.run_id for run in runs if run.method == "dense"]  # noqa: E731
    assert dense_ids(shared_plan.runs) == dense_ids(alone_plan.runs)
    by_method = shapes_by_budget_and_method(shared_plan.runs)
    for budget in shared.budgets:
        for method in shared.methods:
            assert by_method[(budget, method)] == by_method[(budget, "dense")], method
    assert by_method != shapes_by_budget_and_method(alone_plan.runs)  # the default: a ladder per method


def test_backbones_from_drops_a_method_too_costly_for_min_steps_on_a_shared_backbone() -> None:
    study = load_study("tiny", ["ladder.backbones_from=dense"]).study
    fewest_dense_steps = min(run.steps for run in plan(study).runs if run.method == "dense")
    strict = replace(study, ladder=replace(study.ladder, min_steps=fewest_dense_steps))
    study_plan = plan(strict)
    reasons = [d.reason for d in study_plan.dropped if d.method != "dense"]  # the MoE costs more per token than dense
    assert reasons and all("on dense's backbone" in reason for reason in reasons)
    assert all(run.steps >= fewest_dense_steps for run in study_plan.runs)


def test_backbones_from_must_name_a_method(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(capsys, "plan", "--sweep", "sigma_moe_tiny", "ladder.backbones_from=densee")
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "ladder.backbones_from='densee'" in err and "dense, sigma_moe" in err
    with pytest.raises(UserError, match="backbones_from"):
        StudyConfig(name="s", budgets=[1e12], methods={"dense": {"family": "dense"}},
                    ladder=LadderConfig(backbones_from="moe"))


def test_a_pinned_backbone_plans_one_shape_without_a_ladder_note(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "plan", "--sweep", "peer_fig3a_tiny")
    assert status == 0 and "note:" not in err
    assert {shape(run) for run in plan(load_study("peer_fig3a_tiny").study).runs} == {(2, 24, 2)}
    status, _, err = run_cli(capsys, "plan", "--sweep", "peer_fig3a_tiny", "model.n_layers=null")
    assert status == 0 and "widen the ladder" in err  # a ladder again: bracketing notes are back


@pytest.mark.parametrize("sweep", CPU_STUDIES)
def test_cpu_studies_hold_every_planned_model_to_its_measured_flops(sweep: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "plan", "--sweep", sweep, "--verify-flops", "--format", "json")
    assert status == 0
    ratios = [row["measured_over_accounted"] for row in json.loads(out)]
    assert ratios and all(abs(ratio - 1.0) <= 0.01 for ratio in ratios)
