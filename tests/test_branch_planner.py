"""Planning with cooldown branches: one shared ladder per method, a trunk per shape, a branch
per (budget, shape) that spends its budget like an independent run; `isoflop plan` shows
them and the FLOPs saved, and the independent plan of every existing study is unchanged."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import heavy_imports
from isoflop.branch_planner import plan_branches, shared_ladder, training_cost, trunk_and_branches
from isoflop.cli import main
from isoflop.compose import load_study
from isoflop.optimization import learning_rate_at
from isoflop.planner import budget_candidates, costed_candidates, plan

BEFORE = Path(__file__).parent / "data" / "plan_before_branches"  # `isoflop plan` output before branches existed


@pytest.fixture(scope="module")
def tiny_wsd():
    return load_study("tiny_wsd").study


@pytest.fixture(scope="module")
def branch_plan(tiny_wsd):
    return plan(tiny_wsd)


def shape(run) -> tuple[int, int, int]:
    backbone = run.model.backbone
    return backbone.n_layers, backbone.d_model, backbone.n_heads


def test_branches_are_the_tiny_studys_runs_with_the_same_steps(branch_plan) -> None:
    independent = plan(load_study("tiny").study)
    key = lambda run: (run.method, run.budget_flops, shape(run))  # noqa: E731
    assert sorted(map(key, branch_plan.runs)) == sorted(map(key, independent.runs))
    steps = {key(run): run.steps for run in independent.runs}
    for branch in branch_plan.runs:
        assert branch.steps == steps[key(branch)]
        step_flops = branch.flops_per_token_train * branch.batch_size * branch.seq_len
        assert 0 <= branch.budget_flops - branch.realized_flops < step_flops


def test_each_trunk_serves_every_budget_of_its_shape(tiny_wsd, branch_plan) -> None:
    trunks = {trunk.run_id: trunk for trunk in branch_plan.trunks}
    by_trunk = defaultdict(list)
    for branch in branch_plan.runs:
        by_trunk[branch.trunk_id].append(branch)
    assert set(by_trunk) == set(trunks)
    assert len({(trunk.method, shape(trunk)) for trunk in trunks.values()}) == len(trunks)  # one per shape
    assert max(len(branches) for branches in by_trunk.values()) == len(tiny_wsd.budgets)  # shared by budgets
    for trunk_id, branches in by_trunk.items():
        trunk = trunks[trunk_id]
        forks = sorted(branch.cooldown_start_step for branch in branches)
        assert trunk.steps == forks[-1] and trunk.fork_steps == tuple(sorted(set(forks)))
        assert trunk.cooldown_start_step is None and trunk.trunk_id is None
        shortest = min(branch.steps for branch in branches)
        assert trunk.warmup_steps == math.ceil(tiny_wsd.train.warmup_fraction * shortest)
        for branch in branches:
            assert (branch.method, shape(branch), branch.warmup_steps) == (trunk.method, shape(trunk),
                                                                            trunk.warmup_steps)
            assert branch.steps - branch.cooldown_start_step == round(0.2 * branch.steps)
            fork = branch.cooldown_start_step
            assert [learning_rate_at(step, branch) for step in range(fork)] == \
                [learning_rate_at(step, trunk) for step in range(fork)]
            assert learning_rate_at(branch.steps - 1, branch) == pytest.approx(
                tiny_wsd.train.min_lr_fraction * branch.learning_rate)


def test_training_flops_count_each_shared_trunk_once(branch_plan) -> None:
    # Per trunk: its longest branch's whole run, plus the other branches' cooldowns.
    by_trunk = defaultdict(list)
    for branch in branch_plan.runs:
        by_trunk[branch.trunk_id].append(branch)
    expected = 0.0
    for branches in by_trunk.values():
        branches.sort(key=lambda run: run.steps)
        step_flops = branches[0].flops_per_token_train * branches[0].batch_size * branches[0].seq_len
        expected += branches[-1].realized_flops + sum((run.steps - run.cooldown_start_step) * step_flops
                                                      for run in branches[:-1])
    cost = training_cost(branch_plan)
    assert cost.flops == pytest.approx(expected, rel=1e-12)
    assert cost.independent_flops == pytest.approx(sum(run.realized_flops for run in branch_plan.runs))
    assert 0.8 < cost.ratio < 0.9  # two budgets 3.3x apart: 4 of 6 sizes shared per method


def test_a_trunk_id_names_its_trajectory_not_its_length(tiny_wsd) -> None:
    costed = costed_candidates(tiny_wsd, "dense")
    runs = [next(run for run in budget_candidates(tiny_wsd, "dense", budget, costed) if shape(run) == (1, 24, 2))
            for budget in tiny_wsd.budgets]
    short_trunk, _ = trunk_and_branches(tiny_wsd, runs[:1])
    long_trunk, _ = trunk_and_branches(tiny_wsd, runs)
    assert short_trunk.steps < long_trunk.steps and short_trunk.run_id == long_trunk.run_id


def test_a_given_centre_places_the_ladder_window(tiny_wsd) -> None:
    ladder = [costs.n_params_active_non_embedding for _, costs in shared_ladder(tiny_wsd, "dense")]
    assert ladder == sorted(ladder) and all(b >= 1.3 * a for a, b in zip(ladder, ladder[1:]))
    centre = (ladder[4] + ladder[5]) / 2
    centred = plan(tiny_wsd, centre_params={("dense", 1e12): centre})
    assert kept_sizes(centred, "dense", 1e12) == ladder[2:8]  # sizes_below (3) below the centre, sizes_above (3) above
    assert kept_sizes(centred, "dense", 3e11) == kept_sizes(plan_branches(tiny_wsd), "dense", 3e11)


def test_a_given_centre_places_an_independent_ladder(tiny_wsd) -> None:
    tiny = load_study("tiny").study
    candidates = sorted(costs.n_params_active_non_embedding for _, costs in costed_candidates(tiny, "dense"))
    estimated = kept_sizes(plan(tiny), "dense", 1e12)
    centre = (candidates[3] + candidates[4]) / 2
    kept = kept_sizes(plan(tiny, centre_params={("dense", 1e12): centre}), "dense", 1e12)
    assert kept != estimated  # the D = 100 N estimate centres elsewhere
    below, above = [size for size in kept if size < centre], [size for size in kept if size > centre]
    assert (len(below), len(above)) == (tiny.ladder.sizes_below, tiny.ladder.sizes_above)
    assert max(below) == candidates[3] and min(above) == candidates[4]
    assert all(b >= tiny.ladder.size_ratio * a for a, b in zip(kept, kept[1:]))


def kept_sizes(planned, method: str, budget_flops: float) -> list[int]:
    """Active non-embedding parameters of a plan's runs of one (method, budget), ascending."""
    return sorted(run.costs["n_params_active_non_embedding"] for run in planned.runs
                  if run.method == method and run.budget_flops == budget_flops)


@pytest.mark.parametrize("sweep, output_format", [("tiny", "csv"), ("smoke", "table"),
                                                  ("orchestration_test", "json")])
def test_the_independent_plan_of_existing_studies_is_unchanged(capsys, sweep: str, output_format: str) -> None:
    assert main(["plan", "--sweep", sweep, "--format", output_format]) == 0
    assert capsys.readouterr().out == (BEFORE / f"{sweep}.{output_format}").read_text()


def test_plan_shows_trunks_branches_and_the_flops_ratio(capsys, branch_plan) -> None:
    assert main(["plan", "--sweep", "tiny_wsd"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    trunk_ids = {trunk.run_id for trunk in branch_plan.trunks}
    assert [line.split()[0] for line in lines if line.split()[:1] and line.split()[0] in trunk_ids] == \
        [trunk.run_id for trunk in branch_plan.trunks]
    assert all(f"trunks of method {method}" in out for method in ("dense", "moe", "pkm", "peer"))
    ratio = training_cost(branch_plan).ratio
    assert f"ratio {ratio:.3f}" in lines[-1] and lines[-2].startswith("training FLOPs: ")
    assert max(len(line) for line in lines) <= 120
    fork_column = [line.split()[-1] for line in lines if line.startswith("dense-L1-d24-1e12")]
    assert fork_column == [str(next(run.cooldown_start_step for run in branch_plan.runs
                                    if run.run_id.startswith("dense-L1-d24-1e12")))]

    assert main(["plan", "--sweep", "tiny_wsd", "--format", "json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert len(planned["runs"]) == len(branch_plan.runs) and len(planned["trunks"]) == len(branch_plan.trunks)
    assert planned["training_flops"]["ratio"] == pytest.approx(ratio)
    assert all(run["trunk_id"] in {t["run_id"] for t in planned["trunks"]} for run in planned["runs"])
    assert main(["plan", "--sweep", "tiny_wsd", "--format", "csv"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith(",learning_rate,causal,trunk_id,fork_step")


def test_dry_run_costs_the_shared_total(capsys, tmp_path: Path, branch_plan) -> None:
    assert main(["submit", "--sweep", "tiny_wsd", "--root", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    jobs = len(branch_plan.trunks) + len(branch_plan.runs)
    assert f"in {jobs} jobs" in out and f"{training_cost(branch_plan).flops / 1e12:.3g}TFLOPs" in out
    assert f"would submit {len(branch_plan.runs)} runs and {len(branch_plan.trunks)} trunks" in out
    assert not any(tmp_path.iterdir())


def test_planning_branches_imports_no_torch() -> None:
    assert heavy_imports(("isoflop.branch_planner", "isoflop.commands.plan", "isoflop.forks"),
                         ("torch", "pandas", "matplotlib")) == []
