"""Power laws of the compute-optimal allocation across budgets (Hoffmann et al. 2022, approach 2).

N*(C) = G · C^a and D*(C) = H · C^b, with C in FLOPs, fitted as least-squares
lines in log10-log10 through the per-budget optima of one group whose fit
status is ``ok`` (extrapolated vertices and concave fits are left out and
listed). Intervals bootstrap the whole two-stage pipeline: replicate r takes the
r-th resampled parabola vertex of every budget (each budget resampled
independently by :func:`analysis.fits.fit_optimum`) and refits the line.
"""

from __future__ import annotations

import numpy as np

from analysis.fits import percentile_interval
from analysis.records import Axis, Optimum, PowerLawFit, PowerLawPrediction, PowerLawSkipped


def fit_lines(log10_budget: np.ndarray, log10_optimum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares lines y = intercept + slope x, batched over rows of ``log10_optimum`` (R, B)."""
    x_centered = log10_budget - log10_budget.mean()
    y = np.atleast_2d(log10_optimum)
    slope = (y * x_centered).sum(axis=1) / (x_centered**2).sum()
    intercept = y.mean(axis=1) - slope * log10_budget.mean()
    return slope, intercept


def fit_power_law(group: str, optima: list[Optimum], quantity: Axis, predict_budgets: tuple[float, ...] = (),
                  confidence: float = 0.95) -> PowerLawFit | PowerLawSkipped:
    """Fit optimum(C) = coefficient · C^exponent for one group and one quantity (params or tokens).

    Args:
        optima: the group's per-budget optima (any status; only ``ok`` fits are used).
        predict_budgets: budgets in FLOPs at which to predict the optimum.
    """
    def axis_fit(optimum: Optimum):
        return optimum.params_fit if quantity == "params" else optimum.tokens_fit

    usable = sorted((o for o in optima if axis_fit(o).status == "ok"), key=lambda o: o.budget)
    if len(usable) < 2:
        left_out = [f"{o.budget:.3g} ({axis_fit(o).status})" for o in optima if axis_fit(o).status != "ok"]
        reason = f"needs at least 2 budgets with an ok optimum, has {len(usable)}"
        if left_out:
            reason += "; left out: " + ", ".join(left_out)
        return PowerLawSkipped(group=group, quantity=quantity, reason=reason)
    log10_budget = np.log10([o.budget for o in usable])
    log10_optimum = np.array([axis_fit(o).vertex_log10 for o in usable])
    slope, intercept = fit_lines(log10_budget, log10_optimum[None, :])
    exponent, log10_coefficient = float(slope[0]), float(intercept[0])

    bootstrap_rows = [o.log10_n_opt_bootstrap if quantity == "params" else o.log10_d_opt_bootstrap for o in usable]
    n_replicates = min(len(row) for row in bootstrap_rows)
    boot_slope = boot_intercept = np.empty(0)
    if n_replicates > 0:
        stacked = np.stack([row[:n_replicates] for row in bootstrap_rows], axis=1)  # (R, budgets)
        complete = np.all(np.isfinite(stacked), axis=1)
        boot_slope, boot_intercept = fit_lines(log10_budget, stacked[complete]) if complete.any() else (np.empty(0), np.empty(0))
    exponent_lo, exponent_hi = percentile_interval(boot_slope, confidence)
    log10_coefficient_lo, log10_coefficient_hi = percentile_interval(boot_intercept, confidence)

    predictions = []
    for budget in predict_budgets:
        value = 10.0 ** (log10_coefficient + exponent * np.log10(budget))
        low, high = percentile_interval(boot_intercept + boot_slope * np.log10(budget), confidence)
        predictions.append(PowerLawPrediction(budget=float(budget), value=float(value), value_lo=10.0**low, value_hi=10.0**high))
    return PowerLawFit(
        group=group, quantity=quantity, coefficient=10.0**log10_coefficient, exponent=exponent,
        coefficient_lo=10.0**log10_coefficient_lo, coefficient_hi=10.0**log10_coefficient_hi,
        exponent_lo=exponent_lo, exponent_hi=exponent_hi, budgets=tuple(o.budget for o in usable),
        predictions=tuple(predictions), bootstrap_log10_coefficient=boot_intercept, bootstrap_exponent=boot_slope,
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
    exponent_lo, exponent_hi, coefficient_lo, coefficient_hi, n_budgets.
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
        rows.append(dict(row="fit", method=result.group, quantity=result.quantity, coefficient=result.coefficient,
                         exponent=result.exponent, exponent_lo=result.exponent_lo, exponent_hi=result.exponent_hi,
                         coefficient_lo=result.coefficient_lo, coefficient_hi=result.coefficient_hi,
                         n_budgets=result.n_budgets))
        for prediction in result.predictions:
            rows.append(dict(row="prediction", method=result.group, quantity=result.quantity, budget=prediction.budget,
                             predicted=prediction.value, predicted_lo=prediction.value_lo,
                             predicted_hi=prediction.value_hi))
    columns = ["method", "quantity", "coefficient", "exponent", "exponent_lo", "exponent_hi", "n_budgets",
               "coefficient_lo", "coefficient_hi", "row", "budget", "predicted", "predicted_lo", "predicted_hi", "note"]
    table = pd.DataFrame(rows, columns=columns)
    table["n_budgets"] = table["n_budgets"].astype("Int64")
    return table
