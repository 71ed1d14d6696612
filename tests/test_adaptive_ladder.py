"""The adaptive ladder (``isoflop study --adaptive``): placement from a synthetic law, the
ladder records, trunk extension, and the study's bad inputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from isoflop.adaptive_ladder import LadderRecord, adaptive_plan, ladders_path, place_budget
from isoflop.compose import load_study
from isoflop.planner import active_size, budget_candidates, costed_candidates
from isoflop.record_format import RecordError

BUDGETS = [3e11, 1e12, 3e12]
IRREDUCIBLE, PARAMS_COEFFICIENT, TOKENS_COEFFICIENT, EXPONENT = 1.5, 30.0, 90.6, 0.3
"""A known law L(N, D) = E + A/N^a + B/D^a (Hoffmann et al. 2022, Eq. 2, equal exponents): its
optimum has D/N = (B/A)^(1/a) = 40 tokens per parameter, 2.5 times fewer than the tiny ladder's
rule (tokens_per_param: 100), so a ladder placed by the rule sits off the optimum."""


def synthetic_loss(params: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    return IRREDUCIBLE + PARAMS_COEFFICIENT * params**-EXPONENT + TOKENS_COEFFICIENT * tokens**-EXPONENT


@pytest.fixture(scope="module")
def dense_study():
    return load_study("tiny_wsd", ["~methods.moe", "~methods.pkm", "~methods.peer"], BUDGETS).study


def trained_frame(runs, seed: int = 0) -> pd.DataFrame:
    """The tidy frame the analysis would collect from ``runs``, their losses drawn from the known law
    with 0.003 nats of noise (about a tenth of the curvature across a tiny ladder)."""
    params = np.array([active_size(run) for run in runs], dtype=float)
    tokens = np.array([run.tokens for run in runs], dtype=float)
    noise = np.random.default_rng(seed).normal(0.0, 0.003, len(runs))
    return pd.DataFrame({"method": [run.method for run in runs], "budget": [run.budget_flops for run in runs],
                         "params": params, "tokens": tokens, "metric": synthetic_loss(params, tokens) + noise})


def place_in_order(study, seed: int = 0) -> list[LadderRecord]:
    """Every budget placed as ``run_adaptive`` does, the runs' losses coming from the known law."""
    records: list[LadderRecord] = []
    for budget in study.budgets:
        placed = sorted({record.budget for record in records})
        runs = [run for run in adaptive_plan(study, records).runs] if records else []
        records += place_budget(study, budget, trained_frame(runs, seed) if placed else None, bootstrap=100)
    return records


def true_optimum(study, budget: float) -> float:
    """The candidate size (active non-embedding parameters) with the lowest loss of the law at ``budget``."""
    candidates = budget_candidates(study, "dense", budget, costed_candidates(study, "dense"))
    losses = synthetic_loss(np.array([active_size(run) for run in candidates], dtype=float),
                            np.array([run.tokens for run in candidates], dtype=float))
    return active_size(candidates[int(np.argmin(losses))])


def steps_from_centre(study, planned, budget: float, size: float) -> float:
    """How many ladder steps ``size`` lies from the centre of the ladder ``planned`` trains at ``budget``:
    |log(size / centre)| / log(step), the centre being the geometric mean of the two sizes around
    it and the step their ratio."""
    kept = sorted(active_size(run) for run in planned.runs if run.budget_flops == budget)
    below, above = kept[study.ladder.sizes_below - 1], kept[study.ladder.sizes_below]
    return abs(math.log(size / math.sqrt(below * above))) / math.log(above / below)


def test_third_budget_centres_within_one_step_of_the_true_optimum(dense_study) -> None:
    records = place_in_order(dense_study)
    by_budget = {record.budget: record for record in records}
    assert [by_budget[budget].placed_by for budget in BUDGETS] == ["rule", "rule", "prediction"]
    assert by_budget[3e12].budgets_given == (3e11, 1e12)
    truth = true_optimum(dense_study, 3e12)
    assert steps_from_centre(dense_study, adaptive_plan(dense_study, records), 3e12, truth) <= 1.0
    rule_placed = records[:2] + [LadderRecord("dense", 3e12, "rule", None, None, None, (), "", 0.0)]
    assert steps_from_centre(dense_study, adaptive_plan(dense_study, rule_placed), 3e12, truth) > 1.0


@pytest.mark.parametrize("seed", range(1, 9))
def test_placement_holds_across_noise_draws(dense_study, seed: int) -> None:
    records = place_in_order(dense_study, seed)
    truth = true_optimum(dense_study, 3e12)
    assert steps_from_centre(dense_study, adaptive_plan(dense_study, records), 3e12, truth) <= 1.0


def test_records_round_trip_and_refuse_a_newer_version(tmp_path) -> None:
    record = LadderRecord("dense", 3e12, "prediction", 1.2e5, 9e4, 1.6e5, (3e11, 1e12), "", 12.5)
    path = ladders_path(tmp_path)
    record.append_to(path)
    path.open("a").write('{"method": "dense"')  # a torn last line
    assert LadderRecord.read_all(path) == [record]
    path.write_text('{"version": 7, "method": "dense"}\n')
    with pytest.raises(RecordError, match="newer than this isoflop reads"):
        LadderRecord.read_all(path)


def test_plan_of_placed_budgets_only(dense_study) -> None:
    records = place_budget(dense_study, 3e11, None, bootstrap=0)
    planned = adaptive_plan(dense_study, records)
    assert {run.budget_flops for run in planned.runs} == {3e11}
    assert all(trunk.steps == max(branch.cooldown_start_step for branch in planned.runs
                                  if branch.trunk_id == trunk.run_id) for trunk in planned.trunks)


@pytest.mark.parametrize("budgets", [["--budget", "1e12"], ["--budget", "3e11", "--budget", "1e12"]])
def test_adaptive_needs_three_budgets(tmp_path, budgets: list[str]) -> None:
    completed = subprocess.run([sys.executable, "-m", "isoflop.cli", "study", "--sweep", "smoke_wsd", "--adaptive",
                                "--root", str(tmp_path), *budgets], capture_output=True, text=True)
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1 and "--adaptive needs at least 3 budgets" in completed.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def sweep_folder_as_submit_writes_it(root, adaptive: bool):
    """The smoke_wsd study's sweep folder, as a first `isoflop study` (with or without
    ``--adaptive``) leaves it before training: study.yaml, plan.csv, sweep.json (and ladders.jsonl)."""
    from isoflop.sweep_dir import SweepDir

    arguments = [argument for argument in ADAPTIVE_SMOKE if argument != "--adaptive"]
    budgets = [float(value) for flag, value in zip(arguments, arguments[1:]) if flag == "--budget"]
    composed = load_study("smoke_wsd", [argument for argument in arguments if "=" in argument or
                                        argument.startswith("~")], budgets)
    sweep = SweepDir(root / "smoke_wsd")
    sweep.create(composed.resolved_yaml, [], {"sweep": "smoke_wsd", "study": "smoke_wsd", "runs": 0})
    if adaptive:
        ladders_path(sweep.path).write_text('{"placed": "a ladder"}\n')
    return sweep


@pytest.mark.parametrize("adaptive_sweep", [True, False], ids=["adaptive_sweep", "fixed_sweep"])
def test_a_sweep_is_continued_only_the_way_its_ladders_were_placed(tmp_path, adaptive_sweep: bool) -> None:
    sweep = sweep_folder_as_submit_writes_it(tmp_path, adaptive_sweep)
    before = {path.name: path.read_bytes() for path in sweep.path.iterdir()}
    arguments = [argument for argument in ADAPTIVE_SMOKE if argument != "--adaptive" or not adaptive_sweep]
    completed = subprocess.run([sys.executable, "-m", "isoflop.cli", "study", *arguments, "--root", str(tmp_path)],
                               capture_output=True, text=True)
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert completed.stderr.count("\n") == 1 and "--name NAME" in completed.stderr
    assert ("is an --adaptive study" if adaptive_sweep else "was planned without --adaptive") in completed.stderr
    assert {path.name: path.read_bytes() for path in sweep.path.iterdir()} == before  # nothing written


ADAPTIVE_SMOKE = ("--sweep", "smoke_wsd", "--adaptive", "--interval", "1", "--bootstrap", "20", "--budget", "1e10",
                  "--budget", "2e10", "--budget", "4e10", "~methods.peer",
                  "ladder.shapes=[[1,8,2],[1,12,2],[1,16,2],[1,24,2]]")


def start_study(root, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "isoflop.cli", "study", *ADAPTIVE_SMOKE, "--root", str(root),
                             *overrides], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def check_resumed_adaptive_study(root, overrides: tuple[str, ...] = ()) -> None:
    """Run the adaptive smoke study, kill it once the second budget is placed (its runs submitted
    or not), run it again: nothing placed twice, no job duplicated, no trunk step trained twice."""
    import signal

    from conftest import events, metrics, wait_until

    sweep = root / "smoke_wsd"
    first = start_study(root, *overrides)
    try:
        wait_until(lambda: len(LadderRecord.read_all(ladders_path(sweep))) >= 2 or first.poll() is not None,
                   600, "the second budget to be placed", interval=0.5)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    placed_before = LadderRecord.read_all(ladders_path(sweep))
    assert [record.budget for record in placed_before] == [1e10, 2e10]
    second = start_study(root, *overrides)
    output, _ = second.communicate(timeout=900)
    assert second.returncode == 0, output[-3000:]

    records = LadderRecord.read_all(ladders_path(sweep))
    assert records[:2] == placed_before and [record.budget for record in records] == [1e10, 2e10, 4e10]
    assert records[2].budgets_given == (1e10, 2e10)
    branches, trunks = sorted((sweep / "runs").iterdir()), sorted((sweep / "trunks").iterdir())
    assert {json.loads((run / "run.json").read_text())["budget_flops"] for run in branches} == {1e10, 2e10, 4e10}
    for run in branches:
        assert json.loads((run / "result.json").read_text())["status"] == "completed", run.name
        assert sum(event["event"] == "submitted" for event in events(run)) == 1, run.name
    forks = {}
    for run in branches:
        spec = json.loads((run / "run.json").read_text())
        forks.setdefault(spec["trunk_id"], []).append(spec["cooldown_start_step"])
    extended = 0
    for trunk in trunks:
        spec, result = json.loads((trunk / "run.json").read_text()), json.loads((trunk / "result.json").read_text())
        assert spec["steps"] == result["steps"] == max(forks[trunk.name]), trunk.name
        steps = [record["step"] for record in metrics(trunk) if "loss" in record and "kind" not in record]
        assert steps == sorted(set(steps)), trunk.name  # no step trained twice
        extended += len(list(trunk.glob("result.step_*.json")))
    assert extended >= 1  # some shape served two budgets: its trunk continued to the later fork
    assert (sweep / "report" / "report.md").is_file()


@pytest.mark.slow
def test_adaptive_study_interrupted_and_resumed_on_local_processes(tmp_path) -> None:
    check_resumed_adaptive_study(tmp_path)


@pytest.mark.slow
@pytest.mark.slurm
def test_adaptive_study_interrupted_and_resumed_on_slurm(tmp_path, slurm_cluster: str) -> None:
    from test_slurm_sweep import slurm_overrides

    check_resumed_adaptive_study(tmp_path, slurm_overrides(slurm_cluster))
