"""Power laws of the compute-optimal allocation across budgets (Hoffmann et al. 2022, approach 2).

N*(C) = G · C^a and D*(C) = H · C^b, with C in FLOPs, fitted as least-squares
lines in log10-log10 through the per-budget optima of one group whose fit
status is ``ok`` (extrapolated vertices and concave fits are left out and
listed). Intervals bootstrap the whole two-stage pipeline: replicate r takes the
r-th replicate vertex of every budget (each budget resampled independently by
:func:`analysis.fits.fit_optimum`) and refits the line. A replicate is usable
when every budget's vertex is an interior minimum; the rest are censored (see
:mod:`analysis.intervals`), and an end they decide is printed at the flattest
or steepest line that stays inside every budget's sampled sizes.

Through two budgets the line passes exactly through both optima: it is
reported as such, with no interval for its exponent, coefficient or predictions.
"""

from __future__ import annotations

import numpy as np

from analysis.formatting import budget_text
from analysis.intervals import (LINE_THROUGH_TWO_POINTS, MIN_SIZES_FOR_RELIABLE_INTERVAL, Support, censored_interval,
                                line_weights, linear_support, map_bounds, mark_unreliable, small_sample_expansion)
from analysis.records import Axis, Interval, Optimum, PowerLawFit, PowerLawPrediction, PowerLawSkipped


def fit_lines(log10_budget: np.ndarray, log10_optimum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares lines y = intercept + slope x, batched over rows of ``log10_optimum`` (R, B)."""
    x_centered = log10_budget - log10_budget.mean()
    y = np.atleast_2d(log10_optimum)
    slope = (y * x_centered).sum(axis=1) / (x_centered**2).sum()
    intercept = y.mean(axis=1) - slope * log10_budget.mean()
    return slope, intercept


def _line_interval(replicate_values: np.ndarray, weights: np.ndarray, lows: np.ndarray, highs: np.ndarray,
                   confidence: float, words: str) -> Interval:
    """Censored interval of sum(weights * y) over the usable replicate rows (NaN rows are unusable)."""
    support_low, support_high = linear_support(weights, lows, highs)
    support = Support(support_low, support_high, f"the lowest {words} the sampled sizes allow",
                      f"the highest {words} the sampled sizes allow")
    unusable = np.zeros(replicate_values.shape, dtype=bool)
    return censored_interval(replicate_values, unusable, unusable, support, confidence)


def scatter_ratio(design: np.ndarray, optima: np.ndarray, replicate_variances: np.ndarray) -> float:
    """How much more the optima scatter around their fitted law than their bootstrap variances explain.

    F = RSS / E[RSS], with E[RSS] = sum_b sum_j M_bj^2 var_j for the least-squares residual
    maker M = I - H of the law's design matrix (budgets, parameters): [1, log10 C] for a line
    in log-log, the Jacobian at the fit for a nonlinear law (:mod:`analysis.loss_law`), and
    the per-budget replicate variances var_j (units of ``optima``). F near 1: the law's
    residuals are what the per-budget noise predicts; F > 1: the optima deviate from the law
    by more than their own noise (misspecification, run-to-run variation), and the bootstrap
    alone would understate the uncertainty. NaN when undefined.
    """
    residual_maker = np.eye(design.shape[0]) - design @ np.linalg.pinv(design)
    residuals = residual_maker @ optima
    expected = float(np.sum(residual_maker**2 @ replicate_variances))
    return float(residuals @ residuals / expected) if expected > 0 else float("nan")


def birge_inflation(ratio: float) -> float:
    """sqrt(max(1, F)) for a :func:`scatter_ratio` F: the factor on replicate deviations from the fitted law
    (the Birge ratio, Birge 1932, Phys. Rev. 40, 207); 1 when F is not defined."""
    return float(np.sqrt(max(1.0, ratio))) if np.isfinite(ratio) else 1.0


def pooled_expansion(optima: list[Optimum], confidence: float) -> float:
    """t_nu / z: Student's correction for a law whose noise scale is estimated from every budget's residuals.

    A law's replicates rest on each budget's residuals, so its interval covers like a z-interval
    with an estimated scale, with nu = :func:`residual_degrees_of_freedom` (16 for 4 budgets of 7
    runs: 93% for a nominal 95%). Replicate deviations from the law are multiplied by this ratio,
    as :func:`analysis.fits.expansion` does per budget; its plug-in factor sqrt(n / (n - 1)) is left
    out here (the Birge factor's floor at 1 already widens a little). On Chinchilla's surface with
    noise, 5 budgets with the largest held out (tests/test_analysis_holdout.py), the prediction
    intervals covered the truth 94.3% of the time at 95% and 84% at 80% (300 seeds each).
    """
    return small_sample_expansion(residual_degrees_of_freedom(optima), confidence)


def residual_degrees_of_freedom(optima: list[Optimum]) -> int:
    """Residual degrees of freedom of the optima's parabolas together: sum over budgets of (runs - 3)."""
    return int(sum(o.n_points - 3 for o in optima))


def interior_replicates(optima: list[Optimum], quantity: Axis) -> tuple[np.ndarray, np.ndarray]:
    """The replicate vertices of every budget, (R, budgets) in log10, and the mask (R,) of the replicates
    whose vertex is interior at every budget (the usable replicates of a law through these optima)."""
    fits = [o.axis_fit(quantity) for o in optima]
    lows = np.array([fit.log10_min for fit in fits])
    highs = np.array([fit.log10_max for fit in fits])
    stacked = np.stack([o.bootstrap_log10(quantity) for o in optima], axis=1)
    return stacked, np.all((stacked >= lows) & (stacked <= highs), axis=1)


def few_sizes_reason(optima: list[Optimum]) -> str:
    """Why a law through these optima has an unreliable interval because of small grids ('' when none is small)."""
    few_sizes = [f"{budget_text(o.budget)} ({o.n_sizes})" for o in optima if o.n_sizes < MIN_SIZES_FOR_RELIABLE_INTERVAL]
    if not few_sizes:
        return ""
    return "too few distinct sizes to know the optimum's uncertainty at budget(s) " + ", ".join(few_sizes)


def _bootstrap_intervals(usable: list[Optimum], quantity: Axis, log10_budget: np.ndarray, log10_optimum: np.ndarray,
                         predict_budgets: tuple[float, ...], confidence: float):
    """Exponent, coefficient and prediction intervals, the scatter ratio, and the usable replicate lines.

    Replicate lines are refitted through the budgets' replicate vertices. When the optima
    scatter around the line more than their replicates do (:func:`scatter_ratio` F > 1),
    each replicate's deviation from the fitted line is scaled by sqrt(F) (the Birge ratio,
    Birge 1932, Phys. Rev. 40, 207), so the interval reflects the observed scatter.
    """
    lows = np.array([o.axis_fit(quantity).log10_min for o in usable])
    highs = np.array([o.axis_fit(quantity).log10_max for o in usable])
    stacked, located = interior_replicates(usable, quantity)  # (R, budgets), (R,)
    slopes = np.full(stacked.shape[0], np.nan)
    intercepts = np.full(stacked.shape[0], np.nan)
    ratio = float("nan")
    if located.sum() > 1:
        design = np.stack([np.ones_like(log10_budget), log10_budget], axis=1)
        ratio = scatter_ratio(design, log10_optimum, np.var(stacked[located], axis=0))
        inflation = birge_inflation(ratio) * pooled_expansion(usable, confidence)
        slope, intercept = (float(value[0]) for value in fit_lines(log10_budget, log10_optimum[None, :]))
        replicate_slopes, replicate_intercepts = fit_lines(log10_budget, stacked[located])
        slopes[located] = slope + inflation * (replicate_slopes - slope)
        intercepts[located] = intercept + inflation * (replicate_intercepts - intercept)

    small_grids = few_sizes_reason(usable)

    def interval_of(samples: np.ndarray, at_log10_budget: float | None, words: str) -> Interval:
        interval = _line_interval(samples, line_weights(log10_budget, at_log10_budget), lows, highs, confidence, words)
        return mark_unreliable(interval, small_grids) if small_grids else interval

    exponent = interval_of(slopes, None, "exponent")
    coefficient = map_bounds(interval_of(intercepts, 0.0, "coefficient"), lambda value: 10.0**value)
    predictions = []
    for budget in predict_budgets:
        log10_budget_new = float(np.log10(budget))
        interval = interval_of(intercepts + slopes * log10_budget_new, log10_budget_new, "prediction")
        predictions.append(map_bounds(interval, lambda value: 10.0**value))
    return exponent, coefficient, predictions, ratio, slopes[located], intercepts[located]


def fit_power_law(group: str, optima: list[Optimum], quantity: Axis, predict_budgets: tuple[float, ...] = (),
                  confidence: float = 0.95) -> PowerLawFit | PowerLawSkipped:
    """Fit optimum(C) = coefficient · C^exponent for one group and one quantity (params or tokens).

    Args:
        optima: the group's per-budget optima (any status; only ``ok`` fits are used).
        predict_budgets: budgets in FLOPs at which to predict the optimum.
    """
    usable = sorted((o for o in optima if o.axis_fit(quantity).status == "ok"), key=lambda o: o.budget)
    left_out = tuple(f"{budget_text(o.budget)} ({o.axis_fit(quantity).status})" for o in sorted(optima, key=lambda o: o.budget)
                     if o.axis_fit(quantity).status != "ok")
    if len(usable) < 2:
        reason = f"needs at least 2 budgets with an ok optimum, has {len(usable)}"
        if left_out:
            reason += "; left out: " + ", ".join(left_out)
        return PowerLawSkipped(group=group, quantity=quantity, reason=reason)
    log10_budget = np.log10([o.budget for o in usable])
    log10_optimum = np.array([o.axis_fit(quantity).vertex_log10 for o in usable])
    slope, intercept = fit_lines(log10_budget, log10_optimum[None, :])
    exponent, log10_coefficient = float(slope[0]), float(intercept[0])
    replicates = min(o.bootstrap_log10(quantity).size for o in usable)
    no_interval = Interval(note=LINE_THROUGH_TWO_POINTS if len(usable) == 2 else "no bootstrap (--bootstrap 0)",
                           confidence=confidence, replicates=replicates)
    exponent_interval = coefficient_interval = no_interval
    prediction_intervals = [no_interval] * len(predict_budgets)
    boot_slope = boot_intercept = np.empty(0)
    ratio = float("nan")
    if len(usable) > 2 and replicates > 0:
        exponent_interval, coefficient_interval, prediction_intervals, ratio, boot_slope, boot_intercept = (
            _bootstrap_intervals(usable, quantity, log10_budget, log10_optimum, predict_budgets, confidence))
    predictions = tuple(
        PowerLawPrediction(budget=float(budget), value=float(10.0 ** (log10_coefficient + exponent * np.log10(budget))),
                           interval=interval)
        for budget, interval in zip(predict_budgets, prediction_intervals))
    return PowerLawFit(
        group=group, quantity=quantity, coefficient=10.0**log10_coefficient, exponent=exponent,
        budgets=tuple(o.budget for o in usable), exponent_interval=exponent_interval,
        coefficient_interval=coefficient_interval, predictions=predictions, left_out=left_out, scatter_ratio=ratio,
        bootstrap_log10_coefficient=boot_intercept, bootstrap_exponent=boot_slope,
    )


def fit_all_power_laws(optima: list[Optimum], predict_budgets: tuple[float, ...] = (),
                       confidence: float = 0.95) -> list[PowerLawFit | PowerLawSkipped]:
    """Power laws for params and tokens for every group present in ``optima``."""
    results: list[PowerLawFit | PowerLawSkipped] = []
    for group in sorted({o.group for o in optima}):
        group_optima = [o for o in optima if o.group == group]
        for quantity in ("params", "tokens"):
            results.append(fit_power_law(group, group_optima, quantity, predict_budgets, confidence))
    return results


def power_law_table(results: list[PowerLawFit | PowerLawSkipped]):
    """Rows of ``powerlaws.csv``.

    Fit rows (``row == "fit"``): method, quantity, coefficient, exponent,
    exponent_lo, exponent_hi, n_budgets, coefficient_lo, coefficient_hi, and the
    interval's quality: ``interval`` (ok, unreliable, none), ``confidence``,
    ``replicates``, ``replicates_usable`` (a replicate is usable when every
    budget's optimum was interior), ``scatter_ratio`` (:func:`scatter_ratio`),
    ``note`` (why unreliable or none).
    Prediction rows (``row == "prediction"``): method, quantity, budget (FLOPs),
    predicted, predicted_lo, predicted_hi (params or tokens).
    Skipped groups (``row == "skipped"``) carry the reason in ``note``.
    """
    import pandas as pd

    rows = []
    for result in results:
        if isinstance(result, PowerLawSkipped):
            rows.append(dict(row="skipped", method=result.group, quantity=result.quantity, note=result.reason))
            continue
        interval = result.exponent_interval
        rows.append(dict(row="fit", method=result.group, quantity=result.quantity, coefficient=result.coefficient,
                         exponent=result.exponent, exponent_lo=interval.low, exponent_hi=interval.high,
                         coefficient_lo=result.coefficient_interval.low, coefficient_hi=result.coefficient_interval.high,
                         n_budgets=result.n_budgets, interval=interval.status, confidence=interval.confidence,
                         replicates=interval.replicates, replicates_usable=interval.usable,
                         scatter_ratio=result.scatter_ratio, note=interval.note))
        for prediction in result.predictions:
            rows.append(dict(row="prediction", method=result.group, quantity=result.quantity, budget=prediction.budget,
                             predicted=prediction.value, predicted_lo=prediction.interval.low,
                             predicted_hi=prediction.interval.high, interval=prediction.interval.status,
                             note=prediction.interval.note))
    columns = ["method", "quantity", "coefficient", "exponent", "exponent_lo", "exponent_hi", "n_budgets",
               "coefficient_lo", "coefficient_hi", "row", "budget", "predicted", "predicted_lo", "predicted_hi",
               "interval", "confidence", "replicates", "replicates_usable", "scatter_ratio", "note"]
    table = pd.DataFrame(rows, columns=columns)
    for column in ("n_budgets", "replicates", "replicates_usable"):
        table[column] = table[column].astype("Int64")
    return table
