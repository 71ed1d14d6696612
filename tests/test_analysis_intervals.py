"""Interval rules (analysis.intervals): one rule for estimates and intervals, censoring, usable counts, coverage."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from analysis.fits import fit_all_optima, fit_optimum
from analysis.intervals import LINE_THROUGH_TWO_POINTS
from analysis.powerlaw import fit_all_power_laws, fit_power_law
from analysis_support import CHINCHILLA, surface_runs

BUDGET = 1e19
TRUE_LOG10_VERTEX = 8.1


def parabola_runs(log_sizes: np.ndarray, vertex: float = TRUE_LOG10_VERTEX, noise_std: float = 0.01, seed: int = 0,
                  budget: float = BUDGET, curvature: float = 0.5) -> pd.DataFrame:
    """Runs whose metric is an exact parabola in log10(params) (vertex known) plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    params = 10.0 ** np.asarray(log_sizes, dtype=float)
    loss = 3.0 + curvature * (np.log10(params) - vertex) ** 2 + noise_std * rng.standard_normal(params.size)
    return pd.DataFrame(dict(method="g", budget=budget, params=params, tokens=budget / (6 * params), loss=loss))


def optimum_of(runs: pd.DataFrame, n_bootstrap: int = 400, seed: int = 0, confidence: float = 0.95,
               resampling: str = "residuals"):
    return fit_optimum("g", float(runs["budget"].iloc[0]), runs, "loss", np.random.default_rng(seed), n_bootstrap,
                       False, confidence, resampling)


def test_three_sizes_give_no_interval_four_are_marked_unreliable() -> None:
    three = optimum_of(parabola_runs([7.6, 8.1, 8.6]))
    assert three.status == "ok" and three.n_interval.status == "none"
    assert "only 3 distinct sizes" in three.n_interval.note and np.isnan(three.n_opt_lo)
    four = optimum_of(parabola_runs([7.6, 7.95, 8.3, 8.6], seed=2))
    assert four.status == "ok" and four.n_interval.status == "unreliable"
    assert "only 4 distinct sizes" in four.n_interval.note
    assert 10**7.6 <= four.n_opt_lo <= four.n_opt <= four.n_opt_hi <= 10**8.6


def test_replicates_without_an_interior_minimum_push_the_end_to_the_edge() -> None:
    """The vertex sits near the largest size: replicates that put it past the edge are censored, not dropped."""
    runs = parabola_runs(np.linspace(7.0, 8.2, 7), vertex=8.1, noise_std=0.02, seed=1)
    optimum = optimum_of(runs, n_bootstrap=1000)
    interval = optimum.n_interval
    assert optimum.status == "ok"
    assert interval.replicates == 1000 and 0 < interval.usable < 1000
    assert interval.status == "unreliable" and "upper end reaches the largest sampled size" in interval.note
    assert interval.high == pytest.approx(10**8.2)
    assert 10**7.0 <= interval.low < optimum.n_opt
    located = optimum.log10_n_opt_bootstrap
    assert np.sum((located >= 7.0) & (located <= 8.2)) == interval.usable


def test_extrapolated_optimum_has_no_interval() -> None:
    optimum = optimum_of(parabola_runs(np.linspace(7.0, 7.8, 6), vertex=8.5))
    assert optimum.status == "vertex_outside_range" and optimum.n_opt == pytest.approx(10**8.5, rel=0.05)
    assert optimum.n_interval.status == "none" and "extrapolated" in optimum.n_interval.note
    assert np.isnan(optimum.n_opt_lo) and np.isnan(optimum.n_opt_hi)


@pytest.mark.parametrize("resampling", ["residuals", "runs"])
def test_no_printed_interval_reaches_past_the_sampled_sizes(resampling: str) -> None:
    for seed, (low, high, vertex) in itertools.product(range(4), [(7.0, 8.2, 8.1), (7.0, 9.0, 7.1), (7.5, 8.5, 8.0)]):
        runs = parabola_runs(np.linspace(low, high, 6), vertex=vertex, noise_std=0.03, seed=seed)
        optimum = optimum_of(runs, n_bootstrap=300, seed=seed, resampling=resampling)
        for interval in (optimum.n_interval, optimum.d_interval):
            if interval.printable:
                assert interval.low <= interval.high
        if optimum.n_interval.printable:
            assert 10**low * (1 - 1e-9) <= optimum.n_opt_lo and optimum.n_opt_hi <= 10**high * (1 + 1e-9)
        if optimum.d_interval.printable:
            tokens = runs["tokens"]
            assert tokens.min() * (1 - 1e-9) <= optimum.d_opt_lo and optimum.d_opt_hi <= tokens.max() * (1 + 1e-9)


def test_too_few_replicates_are_marked() -> None:
    optimum = optimum_of(parabola_runs(np.linspace(7.5, 8.7, 9)), n_bootstrap=50)
    assert optimum.n_interval.status == "unreliable"
    assert "50 usable replicates, fewer than the 200 a 95% interval needs" in optimum.n_interval.note
    assert optimum_of(parabola_runs(np.linspace(7.5, 8.7, 9)), n_bootstrap=50, confidence=0.8).n_interval.status == "ok"


def test_80_percent_interval_is_the_10th_to_90th_percentile_and_narrower() -> None:
    """Hoffmann et al.'s interval: 10th-90th percentile of the replicates, each widened for 9 points by
    sqrt(9/8) t_6 / z (Student's correction with 9 - 3 residual degrees of freedom)."""
    from scipy.stats import norm, t

    runs = parabola_runs(np.linspace(7.5, 8.7, 9), noise_std=0.01)
    wide, narrow = optimum_of(runs, confidence=0.95), optimum_of(runs, confidence=0.8)
    assert narrow.n_interval.confidence == 0.8 and narrow.n_interval.status == "ok"
    assert wide.n_opt_lo < narrow.n_opt_lo < narrow.n_opt < narrow.n_opt_hi < wide.n_opt_hi
    vertex = np.log10(narrow.n_opt)
    factor = np.sqrt(9 / 8) * t.ppf(0.9, 6) / norm.ppf(0.9)
    widened = vertex + factor * (narrow.log10_n_opt_bootstrap - vertex)
    low, high = np.quantile(widened, [0.1, 0.9], method="inverted_cdf")
    assert (np.log10(narrow.n_opt_lo), np.log10(narrow.n_opt_hi)) == pytest.approx((low, high), abs=1e-9)


def budgets_runs(budget_vertices: dict[float, float], log_sizes_of, noise_std: float = 0.01, seed: int = 0) -> pd.DataFrame:
    frames = [parabola_runs(log_sizes_of(vertex), vertex=vertex, noise_std=noise_std, seed=seed + index, budget=budget)
              for index, (budget, vertex) in enumerate(budget_vertices.items())]
    return pd.concat(frames, ignore_index=True)


def test_power_law_reports_its_usable_replicates() -> None:
    """A replicate of the line is usable only when every budget's replicate is interior; the count is reported."""
    vertices = {1e19: 8.0, 1e20: 8.5, 1e21: 9.0}
    near_edge = {1e21: 9.25}  # the largest budget's optimum sits near its largest size
    runs = budgets_runs(vertices, lambda v: np.linspace(v - 0.6, v + 0.6, 7), noise_std=0.02)
    runs = pd.concat([runs[runs["budget"] < 1e21],
                      parabola_runs(np.linspace(8.4, 9.3, 7), vertex=near_edge[1e21], noise_std=0.04, budget=1e21)])
    optima = fit_all_optima(runs, "loss", group_column="method", n_bootstrap=500, seed=3)
    law = fit_power_law("g", optima, "params")
    stacked = np.stack([o.log10_n_opt_bootstrap for o in optima], axis=1)
    lows = np.array([o.params_fit.log10_min for o in optima])
    highs = np.array([o.params_fit.log10_max for o in optima])
    expected_usable = int(np.all((stacked >= lows) & (stacked <= highs), axis=1).sum())
    assert law.exponent_interval.replicates == 500
    assert law.exponent_interval.usable == expected_usable < 500
    assert optima[-1].n_interval.usable == expected_usable  # only the edge budget loses replicates


def corner_slopes(optima, quantity: str = "params") -> tuple[float, float]:
    """Flattest and steepest least-squares slope with every budget's optimum somewhere in its sampled sizes."""
    x = np.log10([o.budget for o in optima])
    ranges = [(o.axis_fit(quantity).log10_min, o.axis_fit(quantity).log10_max) for o in optima]
    slopes = [np.polyfit(x, corner, 1)[0] for corner in itertools.product(*ranges)]
    return min(slopes), max(slopes)


def test_censored_power_law_interval_stops_at_the_slopes_the_sizes_allow() -> None:
    """Pairs resampling of 4-size budgets often loses an end of the grid: the exponent's interval is censored
    and printed at the steepest/flattest line that stays within every budget's sampled sizes."""
    vertices = {1e19: 8.0, 1e20: 8.5, 1e21: 9.0}
    runs = budgets_runs(vertices, lambda v: np.linspace(v - 0.3, v + 0.3, 4), noise_std=0.02, seed=5)
    optima = fit_all_optima(runs, "loss", n_bootstrap=400, seed=0, resampling="runs")
    law = fit_power_law("g", optima, "params")
    interval = law.exponent_interval
    low_support, high_support = corner_slopes(optima)
    assert interval.status == "unreliable" and interval.usable < interval.replicates
    assert low_support - 1e-9 <= interval.low <= law.exponent <= interval.high <= high_support + 1e-9
    assert interval.low == pytest.approx(low_support) or interval.high == pytest.approx(high_support)
    assert "distinct sizes" in interval.note


def test_two_budget_power_law_is_a_line_through_two_points() -> None:
    runs = budgets_runs({1e19: 8.0, 1e20: 8.5}, lambda v: np.linspace(v - 0.6, v + 0.6, 7))
    optima = fit_all_optima(runs, "loss", n_bootstrap=200)
    law = fit_power_law("g", optima, "params", predict_budgets=(1e22,))
    assert law.through_two_points and law.exponent == pytest.approx(0.5, abs=0.02)
    for interval in (law.exponent_interval, law.coefficient_interval, law.predictions[0].interval):
        assert interval.status == "none" and interval.note == LINE_THROUGH_TWO_POINTS
        assert np.isnan(interval.low)


def test_scatter_beyond_the_bootstrap_noise_widens_the_exponent_interval() -> None:
    """Optima that scatter around their line more than their own noise explains (scatter ratio F >> 1) get an
    interval about as wide as ordinary least squares on the optima says, not the narrow two-stage one."""
    budgets = np.geomspace(1e18, 1e22, 9)
    rng = np.random.default_rng(11)
    vertices = {b: 7.0 + 0.5 * np.log10(b / 1e18) + 0.06 * rng.standard_normal() for b in budgets}
    runs = budgets_runs(vertices, lambda v: np.linspace(v - 0.6, v + 0.6, 9), noise_std=0.002)
    optima = fit_all_optima(runs, "loss", n_bootstrap=1000)
    law = fit_power_law("g", optima, "params")
    x = np.log10(budgets)
    y = np.log10([o.n_opt for o in optima])
    residuals = y - np.polyval(np.polyfit(x, y, 1), x)
    standard_error = np.sqrt(residuals @ residuals / (len(x) - 2) / np.sum((x - x.mean()) ** 2))
    assert law.scatter_ratio > 10
    width = law.exponent_interval.high - law.exponent_interval.low
    assert 0.6 < width / (2 * 1.96 * standard_error) < 1.6


COVERAGE_SEEDS = 400


@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_optimum_interval_covers_the_true_vertex_at_the_stated_level(confidence: float) -> None:
    """Noisy parabolas, 9 sizes, vertex off the grid's centre: coverage of the true N* within 3 standard errors."""
    hits = 0
    for seed in range(COVERAGE_SEEDS):
        runs = parabola_runs(np.linspace(7.4, 8.6, 9), noise_std=0.01, seed=seed)
        interval = optimum_of(runs, n_bootstrap=300, seed=seed, confidence=confidence).n_interval
        hits += interval.printable and interval.low <= 10**TRUE_LOG10_VERTEX <= interval.high
    coverage = hits / COVERAGE_SEEDS
    sampling_error = np.sqrt(confidence * (1 - confidence) / COVERAGE_SEEDS)
    assert abs(coverage - confidence) <= 3 * sampling_error, coverage


# On Chinchilla's surface with grids centred on the optimum at a fixed width, approach 2's vertex is off by the same
# factor at every budget, so the fitted exponent is unbiased and the coverage of its interval can be measured.


@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_exponent_interval_covers_the_true_exponent_at_the_stated_level(confidence: float) -> None:
    seeds = 150
    hits = 0
    for seed in range(seeds):
        runs = surface_runs(CHINCHILLA, np.geomspace(1e18, 1e21, 5), 0.6, 7, noise_std=0.01, seed=seed)
        optima = fit_all_optima(runs, "loss", n_bootstrap=300, seed=seed, confidence=confidence)
        law = next(law for law in fit_all_power_laws(optima, confidence=confidence) if law.quantity == "params")
        interval = law.exponent_interval
        hits += interval.printable and interval.low <= CHINCHILLA.params_exponent <= interval.high
    coverage = hits / seeds
    assert abs(coverage - confidence) <= 3 * np.sqrt(confidence * (1 - confidence) / seeds), coverage
