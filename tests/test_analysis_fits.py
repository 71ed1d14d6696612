"""Fits recover known scaling laws (Hoffmann et al. 2022 approaches 2 and 3) and flag bad curves."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.approach3 import fit_approach3
from analysis.fits import fit_all_optima
from analysis.parabola import fit_axis
from analysis.powerlaw import fit_all_power_laws
from analysis.records import PowerLawFit
from analysis_support import CHINCHILLA, surface_runs

BUDGETS = (1e18, 3e18, 1e19, 3e19, 1e20, 3e20)
E, A, B, ALPHA, BETA = CHINCHILLA.E, CHINCHILLA.A, CHINCHILLA.B, CHINCHILLA.alpha, CHINCHILLA.beta
PARAMS_EXPONENT = CHINCHILLA.params_exponent
TOKENS_EXPONENT = 1.0 - PARAMS_EXPONENT
true_optimal_params = CHINCHILLA.optimal_params


def surface_points(half_width_decades: float, n_sizes: int, offset_decades: float = 0.05,
                   noise_std: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Runs around the true optimum of Chinchilla's surface, shifted by ``offset_decades``."""
    return surface_runs(CHINCHILLA, BUDGETS, half_width_decades, n_sizes, noise_std, seed,
                        center_of=lambda budget: float(np.log10(true_optimal_params(budget))) + offset_decades)


def power_laws_of(frame: pd.DataFrame, n_bootstrap: int = 0, seed: int = 0) -> dict[str, PowerLawFit]:
    optima = fit_all_optima(frame, "loss", n_bootstrap=n_bootstrap, seed=seed)
    laws = fit_all_power_laws(optima)
    return {law.quantity: law for law in laws if isinstance(law, PowerLawFit)}


def test_noise_free_exponents_match_the_surface() -> None:
    laws = power_laws_of(surface_points(half_width_decades=0.15, n_sizes=15))
    assert laws["params"].exponent == pytest.approx(PARAMS_EXPONENT, abs=1e-6)
    assert laws["tokens"].exponent == pytest.approx(TOKENS_EXPONENT, abs=1e-6)
    assert laws["params"].exponent + laws["tokens"].exponent == pytest.approx(1.0, abs=1e-9)


def test_noise_free_optimum_lies_near_the_true_one() -> None:
    optima = fit_all_optima(surface_points(half_width_decades=0.1, n_sizes=21, offset_decades=0.0), "loss", n_bootstrap=0)
    for optimum in optima:
        assert optimum.status == "ok"
        assert np.log10(optimum.n_opt) == pytest.approx(np.log10(true_optimal_params(optimum.budget)), abs=1e-3)


def test_noisy_bootstrap_intervals_cover_the_truth() -> None:
    laws = power_laws_of(surface_points(half_width_decades=0.6, n_sizes=9, noise_std=0.004, seed=3), n_bootstrap=400, seed=1)
    for quantity, truth in (("params", PARAMS_EXPONENT), ("tokens", TOKENS_EXPONENT)):
        law = laws[quantity]
        assert law.exponent_lo < truth < law.exponent_hi, (quantity, law.exponent_lo, truth, law.exponent_hi)
        assert law.exponent_hi - law.exponent_lo < 0.2


def test_bootstrap_is_reproducible_with_a_seed() -> None:
    frame = surface_points(half_width_decades=0.6, n_sizes=9, noise_std=0.004, seed=3)
    first = power_laws_of(frame, n_bootstrap=100, seed=7)["params"]
    second = power_laws_of(frame, n_bootstrap=100, seed=7)["params"]
    assert (first.exponent_lo, first.exponent_hi) == (second.exponent_lo, second.exponent_hi)


def test_concave_curve_has_no_optimum() -> None:
    sizes = np.array([1e7, 3e7, 1e8, 3e8, 1e9])
    values = 3.0 - (np.log10(sizes) - 8.0) ** 2
    fit = fit_axis("dense", 1e19, sizes, values, "params", robust=False)
    assert fit.status == "concave"
    assert fit.optimum is None and fit.value_at_optimum is None
    frame = pd.DataFrame(dict(method="dense", budget=1e19, params=sizes, tokens=1e19 / (6 * sizes), loss=values))
    optimum = fit_all_optima(frame, "loss", n_bootstrap=50)[0]
    assert optimum.n_opt is None and optimum.loss_opt is None and np.isnan(optimum.n_opt_lo)
    assert optimum.n_interval.status == "none" and "no minimum" in optimum.n_interval.note


def test_too_few_points() -> None:
    fit = fit_axis("dense", 1e19, np.array([1e7, 1e8]), np.array([3.0, 2.9]), "params", robust=False)
    assert fit.status == "too_few_points" and fit.optimum is None
    repeated = fit_axis("dense", 1e19, np.array([1e7, 1e7, 1e8, 1e8]), np.array([3.0, 3.1, 2.9, 2.8]), "params", robust=False)
    assert repeated.status == "too_few_points"


def test_vertex_outside_range_is_flagged_but_reported() -> None:
    sizes = np.array([1e7, 2e7, 4e7, 8e7])
    values = 3.0 + 0.5 * (np.log10(sizes) - 9.0) ** 2  # minimum at 1e9, far right of the samples
    fit = fit_axis("dense", 1e19, sizes, values, "params", robust=False)
    assert fit.status == "vertex_outside_range"
    assert fit.optimum == pytest.approx(1e9, rel=1e-6)


def test_robust_fit_resists_an_outlier() -> None:
    sizes = np.logspace(7, 9, 11)
    values = 3.0 + 0.4 * (np.log10(sizes) - 8.2) ** 2
    values[-1] += 0.5  # one broken run
    least_squares = fit_axis("dense", 1e19, sizes, values, "params", robust=False)
    huber = fit_axis("dense", 1e19, sizes, values, "params", robust=True)
    assert abs(np.log10(huber.optimum) - 8.2) < 0.02
    assert abs(np.log10(least_squares.optimum) - 8.2) > abs(np.log10(huber.optimum) - 8.2)


def test_approach3_lbfgs_recovers_the_surface() -> None:
    frame = surface_points(half_width_decades=0.6, n_sizes=9)
    fit = fit_approach3("synthetic", frame["params"].to_numpy(), frame["tokens"].to_numpy(), frame["loss"].to_numpy())
    assert fit is not None and fit.converged and fit.method == "lbfgs"
    assert fit.alpha == pytest.approx(ALPHA, rel=1e-3)
    assert fit.beta == pytest.approx(BETA, rel=1e-3)
    assert fit.E == pytest.approx(E, rel=1e-3)
    assert fit.A == pytest.approx(A, rel=1e-2)
    assert fit.B == pytest.approx(B, rel=1e-2)
    assert fit.params_exponent == pytest.approx(PARAMS_EXPONENT, rel=1e-3)
    assert fit.optimal_params(1e20) == pytest.approx(true_optimal_params(1e20), rel=1e-2)


def test_approach3_needs_enough_runs() -> None:
    assert fit_approach3("tiny", np.array([1e7, 1e8]), np.array([1e9, 1e10]), np.array([3.0, 2.9])) is None


def test_off_centre_optimum_is_warned_about(tmp_path, capsys) -> None:
    """Sizes from 7.0 to 8.2 decades with the minimum at 7.15: N* sits at 12% of the range, in the outer quarter."""
    from analysis.diagnostics import off_centre_warnings
    from conftest import analyze

    rows = []
    for budget, vertex, low in ((1e19, 7.6, 7.0), (1e20, 8.1, 7.5), (1e21, 7.15 + 1.0, 8.0)):
        for x in np.linspace(low, low + 1.2, 7):
            rows.append(dict(method="m", budget=budget, params=10**x, tokens=budget / (6 * 10**x),
                             loss=3.0 + 0.3 * (x - vertex) ** 2))
    frame = pd.DataFrame(rows)
    optima = fit_all_optima(frame, "loss", n_bootstrap=0)
    positions = [o.params_fit.vertex_position for o in optima]
    assert positions == pytest.approx([0.5, 0.5, 0.125], abs=1e-6)
    (warning,) = off_centre_warnings(optima)
    assert warning.startswith("m at C=1e21: N* sits at 12% of the sampled log-size range") and "add smaller sizes" in warning
    frame.to_csv(tmp_path / "runs.csv", index=False)
    assert analyze("--csv", str(tmp_path / "runs.csv"), "--out", str(tmp_path / "out"), "--bootstrap", "0") == 0
    assert "warning: m at C=1e21: N* sits at 12%" in capsys.readouterr().err
    assert "| 0.125 |" in (tmp_path / "out" / "report.md").read_text()
