"""Predict, then verify (analysis.holdout, analysis.loss_law, ``isoflop analyze --holdout-budget``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.fits import fit_all_optima
from analysis.holdout import MIN_BUDGETS_TO_PREDICT, holdout_verdicts, predict_optimum
from analysis.intervals import LINE_THROUGH_TWO_POINTS
from analysis.loss_law import CURVE_THROUGH_THREE_POINTS, fit_curves, fit_loss_law
from analysis_support import CHINCHILLA, surface_runs
from conftest import analyze
from test_analysis_csv import LLAMA3_CSV, needs_llama3
from test_analysis_sweep import write_run

BUDGETS = np.geomspace(1e18, 1e21, 5)
HELD_OUT = float(BUDGETS[-1])
HALF_WIDTH_DECADES = 0.6
SIZES = 7
GAMMA = CHINCHILLA.alpha * CHINCHILLA.beta / (CHINCHILLA.alpha + CHINCHILLA.beta)
"""L*(C) - E ∝ C^-gamma on Chinchilla's surface (Hoffmann et al. 2022, Eq. 4 put into Eq. 2)."""


def chinchilla_optima(budgets=BUDGETS, noise_std: float = 0.0, seed: int = 0, n_bootstrap: int = 0,
                      confidence: float = 0.95) -> list:
    runs = surface_runs(CHINCHILLA, budgets, HALF_WIDTH_DECADES, SIZES, noise_std=noise_std, seed=seed)
    return fit_all_optima(runs, "loss", n_bootstrap=n_bootstrap, seed=seed, confidence=confidence)


def true_optimum_loss(budget: float) -> float:
    params = CHINCHILLA.optimal_params(budget)
    return CHINCHILLA.loss(params, budget / (6.0 * params))


def test_loss_law_recovers_an_exact_curve() -> None:
    """E + A·10^(-gamma x) through 6 exact points: the variable-projection search finds E, A, gamma."""
    x = np.linspace(-1.5, 1.5, 6)
    fits = fit_curves(x, (1.7 + 0.6 * 10.0 ** (-0.21 * x))[None, :])
    assert fits.irreducible[0] == pytest.approx(1.7, abs=1e-3)
    assert fits.coefficient[0] == pytest.approx(0.6, abs=1e-3)
    assert fits.decay[0] == pytest.approx(0.21, rel=1e-3)
    assert not fits.at_lower_end[0] and not fits.at_upper_end[0]


def test_loss_law_on_chinchillas_optima_finds_its_irreducible_loss_and_decay() -> None:
    """The true optima's losses lie on E + K·C^-gamma with E = 1.69 and gamma = alpha·beta/(alpha + beta)."""
    budgets = np.geomspace(1e18, 1e24, 7)
    losses = np.array([true_optimum_loss(budget) for budget in budgets])
    fits = fit_curves(np.log10(budgets / 1e21), losses[None, :])
    assert fits.irreducible[0] == pytest.approx(CHINCHILLA.E, abs=2e-3)
    assert fits.decay[0] == pytest.approx(GAMMA, rel=5e-3)


def test_loss_law_through_three_budgets_has_no_interval() -> None:
    law = fit_loss_law("synthetic", chinchilla_optima(BUDGETS[:3], noise_std=0.01, n_bootstrap=100), (HELD_OUT,))
    assert not law.predictions[0].interval.printable
    assert law.predictions[0].interval.note == CURVE_THROUGH_THREE_POINTS


def test_predict_optimum_says_what_each_number_of_budgets_gives() -> None:
    """1 budget: None; 2: N*, D* on the line through them, no interval, no L*; 3: L* without interval; 4: all."""
    optima = chinchilla_optima(noise_std=0.01, n_bootstrap=200)
    others = [o for o in optima if o.budget != HELD_OUT]
    assert MIN_BUDGETS_TO_PREDICT == 2
    assert predict_optimum(others[:1], HELD_OUT) is None

    two = predict_optimum(others[:2], HELD_OUT)
    assert two.params.value is not None and two.tokens.value is not None
    assert not two.params.interval.printable and LINE_THROUGH_TWO_POINTS in two.params.note
    assert two.loss.value is None and "needs at least 3" in two.loss.note

    three = predict_optimum(others[:3], HELD_OUT)
    assert three.params.interval.printable and three.tokens.interval.printable
    assert three.loss.value is not None and not three.loss.interval.printable

    four = predict_optimum(others, HELD_OUT)
    assert all(four.quantity(q).interval.printable for q in ("params", "tokens", "loss"))
    assert four.budgets_given == tuple(sorted(o.budget for o in others))


def test_noise_free_prediction_matches_the_held_out_fit() -> None:
    """Grids centred on the optimum at a fixed width: approach 2's optima follow the laws exactly, so the
    prediction from the other budgets equals the held-out budget's own optimum (no noise, no bootstrap)."""
    optima = chinchilla_optima()
    measured = optima[-1]
    prediction = predict_optimum(optima[:-1], HELD_OUT)
    assert prediction.params.value == pytest.approx(measured.n_opt, rel=1e-3)
    assert prediction.tokens.value == pytest.approx(measured.d_opt, rel=1e-3)
    assert prediction.loss.value == pytest.approx(measured.loss_opt, abs=1e-4)


def test_prediction_takes_one_group() -> None:
    optima = chinchilla_optima()
    other = surface_runs(CHINCHILLA, BUDGETS, HALF_WIDTH_DECADES, SIZES, method="other")
    with pytest.raises(ValueError, match="one group"):
        predict_optimum(optima + fit_all_optima(other, "loss", n_bootstrap=0), HELD_OUT)


COVERAGE_SEEDS = 200


@pytest.mark.slow
@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_held_out_prediction_covers_the_truth_and_is_called_consistent_at_the_stated_rate(confidence: float) -> None:
    """Chinchilla's surface with noise, 5 budgets, the largest held out (an extrapolation by half a decade).

    The truth at the held-out budget is what approach 2 finds there without noise (its grid-width bias
    is the same factor at every budget, so the laws hold for it exactly). The prediction interval must
    cover it, and the predicted/measured interval must contain 1 (0 for L*), at the stated rate within
    3 standard errors of a binomial proportion.
    """
    truth = chinchilla_optima()[-1]
    true_values = {"params": truth.n_opt, "tokens": truth.d_opt, "loss": truth.loss_opt}
    covered = {quantity: 0 for quantity in true_values}
    consistent = dict(covered)
    for seed in range(COVERAGE_SEEDS):
        optima = chinchilla_optima(noise_std=0.01, seed=seed, n_bootstrap=200, confidence=confidence)
        (verdict,) = holdout_verdicts(optima, HELD_OUT, confidence)
        for quantity in verdict.quantities:
            interval = quantity.interval
            covered[quantity.quantity] += interval.printable and interval.low <= true_values[quantity.quantity] <= interval.high
            consistent[quantity.quantity] += bool(quantity.consistent)
    tolerance = 3 * np.sqrt(confidence * (1 - confidence) / COVERAGE_SEEDS)
    for quantity in true_values:
        assert abs(covered[quantity] / COVERAGE_SEEDS - confidence) <= tolerance, (quantity, covered)
        assert abs(consistent[quantity] / COVERAGE_SEEDS - confidence) <= tolerance, (quantity, consistent)


def test_a_law_that_bends_is_found_inconsistent() -> None:
    """The held-out budget's runs are twice as large for the same losses: its optimum moves by a factor of 2."""
    runs = surface_runs(CHINCHILLA, BUDGETS, HALF_WIDTH_DECADES, SIZES, noise_std=0.002, seed=3)
    runs.loc[runs["budget"] == HELD_OUT, "params"] *= 2.0  # the same losses, at twice the sizes
    runs.loc[runs["budget"] == HELD_OUT, "tokens"] /= 2.0
    (verdict,) = holdout_verdicts(fit_all_optima(runs, "loss", n_bootstrap=200, seed=3), HELD_OUT)
    params = verdict.quantities[0]
    assert params.quantity == "params" and params.inside is False and params.consistent is False
    assert params.difference.high < 1.0  # predicted well below what the held-out budget now measures


def synthetic_csv(path: Path, noise_std: float = 0.01, seed: int = 0) -> Path:
    surface_runs(CHINCHILLA, BUDGETS, HALF_WIDTH_DECADES, SIZES, noise_std=noise_std, seed=seed).to_csv(path, index=False)
    return path


def test_analyze_holdout_budget_writes_its_rows_json_figure_and_report(tmp_path: Path) -> None:
    csv = synthetic_csv(tmp_path / "runs.csv")
    out = tmp_path / "report"
    assert analyze("--csv", csv, "--out", out, "--bootstrap", "200", "--holdout-budget", "1e21") == 0
    document = json.loads((out / "holdout.json").read_text())
    assert document["held_out_budget"] == pytest.approx(1e21)
    (method,) = document["methods"].values()
    assert method["budgets_given"] == pytest.approx(list(BUDGETS[:-1]))
    for quantity in ("params", "tokens", "loss"):
        entry = method["quantities"][quantity]
        low, high = entry["interval"]
        assert low < entry["predicted"] < high
        assert entry["inside"] == (low <= entry["measured"] <= high)
        assert entry["budgets_used"] == pytest.approx(list(BUDGETS[:-1]))
    optima = pd.read_csv(out / "optima.csv")
    prediction = optima[optima["row"] == "holdout_prediction"]
    assert len(prediction) == 1 and prediction["budget"].iloc[0] == pytest.approx(1e21)
    assert prediction["n_opt"].iloc[0] == pytest.approx(method["quantities"]["params"]["predicted"])
    assert (optima["row"] == "fit").sum() == len(BUDGETS)
    laws = pd.read_csv(out / "powerlaws.csv")
    held_out = laws[laws["row"] == "holdout_prediction"]
    assert set(held_out["quantity"]) == {"params", "tokens", "loss"}
    assert (laws.loc[laws["row"] == "holdout_fit", "n_budgets"] == len(BUDGETS) - 1).all()
    assert set(laws.loc[laws["row"] == "fit", "n_budgets"]) == {len(BUDGETS)}
    report = (out / "report.md").read_text()
    assert "## Held-out budget C = 1e21" in report and "![holdout](holdout.png)" in report
    assert (out / "holdout.png").stat().st_size > 0 and (out / "holdout.pdf").stat().st_size > 0


def test_without_holdout_budget_nothing_changes_in_the_tables(tmp_path: Path) -> None:
    csv = synthetic_csv(tmp_path / "runs.csv")
    assert analyze("--csv", csv, "--out", tmp_path / "report", "--bootstrap", "50") == 0
    assert "row" not in pd.read_csv(tmp_path / "report" / "optima.csv").columns
    assert not (tmp_path / "report" / "holdout.json").exists()


@needs_llama3
def test_llama3_largest_budget_held_out(tmp_path: Path) -> None:
    """Llama 3's 1e22 predicted from its 9 smaller budgets.

    What happens: the optima up to 3e21 give D* ∝ C^0.511, and 1e22's own optimum (2.4e11 tokens) lies above
    the predicted 1.7e11 [1.5e11, 2.0e11]: the held-out budget steepens the law (0.537 with it). Asserted:
    that direction (robust: the ratio's interval ends far from 1), and a finite prediction interval per quantity.
    """
    assert analyze("--csv", LLAMA3_CSV, "--out", tmp_path, "--bootstrap", "400", "--holdout-budget", "1e22") == 0
    document = json.loads((tmp_path / "holdout.json").read_text())
    quantities = document["methods"]["all"]["quantities"]
    assert len(document["methods"]["all"]["budgets_given"]) == 9
    for entry in quantities.values():
        assert entry["interval_status"] == "ok" and np.isfinite(entry["interval"]).all()
    tokens, params = quantities["tokens"], quantities["params"]
    assert tokens["predicted"] < tokens["measured"] and params["predicted"] > params["measured"]
    assert tokens["predicted_over_measured"][1] < 1.0 and tokens["consistent"] is False
    laws = pd.read_csv(tmp_path / "powerlaws.csv")
    exponents = laws[laws["quantity"] == "tokens"].set_index("row")["exponent"]
    assert exponents["holdout_fit"] < exponents["fit"]


def test_analyze_holdout_budget_on_a_sweep(tmp_path: Path) -> None:
    """Sweep input: runs/<id>/run.json and result.json, 4 budgets of 7 sizes with noise, the smallest held out
    (L* through the 3 others has no interval, so no verdict); a second method has runs at the held-out
    budget only, so it gets no prediction and says why."""
    rng = np.random.default_rng(0)
    budgets = (1e18, 4e18, 1.6e19, 6.4e19)
    for budget in budgets:
        center = np.log10(CHINCHILLA.optimal_params(budget))
        for index, log_params in enumerate(np.linspace(center - 0.6, center + 0.6, 7)):
            write_run(tmp_path / "sweep" / "runs", f"dense-{budget:.0e}-{index}", "dense", budget, 10.0**log_params,
                      {"family": "dense"}, offset=0.005 * rng.standard_normal())
            if budget == budgets[0]:
                write_run(tmp_path / "sweep" / "runs", f"pkm-{index}", "pkm", budget, 10.0**log_params, {"family": "pkm"})
    assert analyze(tmp_path / "sweep", "--bootstrap", "100", "--holdout-budget", "1e18") == 0
    document = json.loads((tmp_path / "sweep" / "report" / "holdout.json").read_text())
    dense, pkm = document["methods"]["dense"], document["methods"]["pkm"]
    assert dense["budgets_given"] == pytest.approx(list(budgets[1:]))
    assert dense["quantities"]["params"]["inside"] is not None and dense["quantities"]["tokens"]["inside"] is not None
    assert dense["quantities"]["loss"]["inside"] is None and CURVE_THROUGH_THREE_POINTS in dense["quantities"]["loss"]["note"]
    assert pkm["quantities"] == {} and "0 other budget(s)" in pkm["note"]
    assert "- **pkm**: no prediction: 0 other budget(s)" in (tmp_path / "sweep" / "report" / "report.md").read_text()
