"""IsoFLOP parabola fits per (group, budget): Hoffmann et al. 2022, approach 2.

For every budget C (FLOPs), the runs of one group (a method, or an ablation
setting) trace an isoFLOP curve. We fit the metric as a parabola in
log10(params) and, separately, in log10(tokens); the vertices are the
compute-optimal N*(C) and D*(C). A concave parabola has no minimum and yields
no optimum; a vertex outside the sampled sizes is an extrapolation and is
flagged (status ``vertex_outside_range``).

Uncertainty: percentile bootstrap over runs (resample the points of one
(group, budget) with replacement, refit). The bootstrap vertices are kept on
the :class:`~analysis.records.Optimum` so that the power-law stage can reuse
the same replicates (see :mod:`analysis.powerlaw`).

Robust option: Huber M-estimation (k = 1.345 robust scale units, scale from
the median absolute deviation) by iteratively reweighted least squares.

Everything is vectorised over bootstrap replicates: inputs are arrays of shape
(replicates, points).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.records import STATUS_SEVERITY, Axis, FitStatus, Optimum, ParabolaFit

HUBER_K = 1.345
"""Huber threshold in robust standard deviations (95% efficiency under normal noise)."""

MAD_TO_SIGMA = 1.4826
"""Median absolute deviation to standard deviation for normal noise."""

IRLS_ITERATIONS = 50


def _design_matrix(u: np.ndarray) -> np.ndarray:
    """Parabola design matrix [u², u, 1], batched: u (R, P) → (R, P, 3)."""
    return np.stack([u**2, u, np.ones_like(u)], axis=-1)


def _solve_weighted_parabola(design: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least-squares parabola, batched.

    design: (R, P, 3) from :func:`_design_matrix`; y, weights: (R, P) → (R, 3) [curvature, slope, intercept].
    """
    weighted = design * weights[..., None]
    normal_matrix = np.einsum("rpi,rpj->rij", weighted, design)  # (R, 3, 3)
    normal_rhs = np.einsum("rpi,rp->ri", weighted, y)  # (R, 3)
    return np.linalg.solve(normal_matrix, normal_rhs[..., None])[..., 0]


def _distinct_counts(u: np.ndarray) -> np.ndarray:
    """Number of distinct values per row of u (R, P), tolerance 1e-9 decades."""
    ordered = np.sort(u, axis=1)
    return 1 + np.sum(np.diff(ordered, axis=1) > 1e-9, axis=1)


def fit_parabolas(u: np.ndarray, y: np.ndarray, robust: bool = False) -> np.ndarray:
    """Fit ``y = c2 u^2 + c1 u + c0`` row by row; rows with < 3 distinct u give NaN.

    Args:
        u: centred log10 sizes, shape (R, P).
        y: metric values, shape (R, P).
        robust: Huber IRLS instead of ordinary least squares.

    Returns:
        (R, 3) coefficients [curvature, slope, intercept].
    """
    u = np.atleast_2d(np.asarray(u, dtype=float))
    y = np.atleast_2d(np.asarray(y, dtype=float))
    valid = _distinct_counts(u) >= 3
    coefficients = np.full((u.shape[0], 3), np.nan)
    if not valid.any():
        return coefficients
    u_valid, y_valid = u[valid], y[valid]
    design = _design_matrix(u_valid)
    weights = np.ones_like(u_valid)
    solution = _solve_weighted_parabola(design, y_valid, weights)
    if robust:
        scale_floor = 1e-12 * max(1.0, float(np.max(np.abs(y_valid))))
        for _ in range(IRLS_ITERATIONS):
            residuals = y_valid - np.einsum("rpi,ri->rp", design, solution)
            deviation = np.abs(residuals - np.median(residuals, axis=1, keepdims=True))
            scale = np.maximum(MAD_TO_SIGMA * np.median(deviation, axis=1, keepdims=True), scale_floor)
            threshold = HUBER_K * scale
            weights = np.where(np.abs(residuals) <= threshold, 1.0, threshold / np.maximum(np.abs(residuals), 1e-300))
            updated = _solve_weighted_parabola(design, y_valid, weights)
            converged = np.allclose(updated, solution, rtol=1e-10, atol=1e-14)
            solution = updated
            if converged:
                break
    coefficients[valid] = solution
    return coefficients


def classify(curvature: float, vertex_u: float, u_min: float, u_max: float) -> FitStatus:
    """Status of one parabola fit through at least 3 distinct sizes (see :data:`analysis.records.FitStatus`)."""
    if not np.isfinite(curvature) or curvature <= 0.0:
        return "concave"
    if not (u_min - 1e-12 <= vertex_u <= u_max + 1e-12):
        return "vertex_outside_range"
    return "ok"


def fit_axis(group: str, budget: float, sizes: np.ndarray, values: np.ndarray, axis: Axis, robust: bool) -> ParabolaFit:
    """One parabola of ``values`` in log10(``sizes``) for a (group, budget)."""
    log_sizes = np.log10(np.asarray(sizes, dtype=float))
    center = float(np.mean(log_sizes))
    u = log_sizes - center
    n_distinct = int(_distinct_counts(u[None, :])[0])
    common = dict(group=group, budget=float(budget), axis=axis, n_points=len(u), log10_center=center,
                  log10_min=float(log_sizes.min()), log10_max=float(log_sizes.max()))
    if n_distinct < 3:
        return ParabolaFit(status="too_few_points", **common)
    curvature, slope, intercept = fit_parabolas(u[None, :], np.asarray(values, dtype=float)[None, :], robust)[0]
    vertex_u = -slope / (2.0 * curvature) if curvature != 0 else np.inf
    status = classify(curvature, vertex_u, float(u.min()), float(u.max()))
    return ParabolaFit(status=status, curvature=float(curvature), slope=float(slope), intercept=float(intercept), **common)


def bootstrap_vertices(sizes: np.ndarray, values: np.ndarray, resample_indices: np.ndarray, robust: bool) -> tuple[np.ndarray, np.ndarray]:
    """log10 vertex and value at vertex per bootstrap replicate; NaN where no minimum.

    resample_indices: (R, P) integer indices into the points.
    """
    log_sizes = np.log10(np.asarray(sizes, dtype=float))
    center = float(np.mean(log_sizes))
    u = (log_sizes - center)[resample_indices]
    y = np.asarray(values, dtype=float)[resample_indices]
    coefficients = fit_parabolas(u, y, robust)
    curvature, slope, intercept = coefficients.T
    with np.errstate(divide="ignore", invalid="ignore"):
        has_minimum = curvature > 0
        vertex = np.where(has_minimum, center - slope / (2.0 * curvature), np.nan)
        value = np.where(has_minimum, intercept - slope**2 / (4.0 * curvature), np.nan)
    return vertex, value


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of the finite samples; NaNs when fewer than 10 finite samples."""
    finite = samples[np.isfinite(samples)]
    if finite.size < 10:
        return float("nan"), float("nan")
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def worst_status(*statuses: FitStatus) -> FitStatus:
    """The most severe of several fit statuses."""
    return max(statuses, key=lambda status: STATUS_SEVERITY[status])


def fit_optimum(group: str, budget: float, points: pd.DataFrame, value_column: str, rng: np.random.Generator,
                n_bootstrap: int, robust: bool, confidence: float = 0.95) -> Optimum:
    """Compute-optimal N*, D*, L* for one (group, budget) from its runs.

    Args:
        points: rows with ``params``, ``tokens`` and ``value_column``.
        rng: source of bootstrap resamples (consumed in a fixed order).
        n_bootstrap: number of resamples; 0 disables intervals.
    """
    params = points["params"].to_numpy(float)
    tokens = points["tokens"].to_numpy(float)
    values = points[value_column].to_numpy(float)
    params_fit = fit_axis(group, budget, params, values, "params", robust)
    tokens_fit = fit_axis(group, budget, tokens, values, "tokens", robust)
    n_points = len(points)
    log_n_boot = log_d_boot = loss_boot = np.empty(0)
    if n_bootstrap > 0 and n_points >= 3:
        indices = rng.integers(0, n_points, size=(n_bootstrap, n_points))
        log_n_boot, loss_boot = bootstrap_vertices(params, values, indices, robust)
        log_d_boot, _ = bootstrap_vertices(tokens, values, indices, robust)
    no_interval = (float("nan"), float("nan"))
    n_lo, n_hi = percentile_interval(log_n_boot, confidence) if params_fit.has_optimum else no_interval
    d_lo, d_hi = percentile_interval(log_d_boot, confidence) if tokens_fit.has_optimum else no_interval
    loss_lo, loss_hi = percentile_interval(loss_boot, confidence) if params_fit.has_optimum else no_interval
    return Optimum(
        group=group, budget=float(budget), status=worst_status(params_fit.status, tokens_fit.status), n_points=n_points,
        params_fit=params_fit, tokens_fit=tokens_fit,
        n_opt=params_fit.optimum, n_opt_lo=10.0**n_lo, n_opt_hi=10.0**n_hi,
        d_opt=tokens_fit.optimum, d_opt_lo=10.0**d_lo, d_opt_hi=10.0**d_hi,
        loss_opt=params_fit.value_at_optimum, loss_opt_lo=loss_lo, loss_opt_hi=loss_hi,
        log10_n_opt_bootstrap=log_n_boot, log10_d_opt_bootstrap=log_d_boot,
    )


def fit_all_optima(frame: pd.DataFrame, value_column: str, group_column: str = "method", n_bootstrap: int = 1000,
                   seed: int = 0, robust: bool = False, confidence: float = 0.95) -> list[Optimum]:
    """Fit every (group, budget) of a tidy frame with columns params, tokens, budget, value_column.

    The random stream is seeded once and consumed in sorted (group, budget) order,
    so results are reproducible for a given ``seed``.
    """
    rng = np.random.default_rng(seed)
    optima = []
    for (group, budget), points in frame.groupby([group_column, "budget"], sort=True):
        optima.append(fit_optimum(str(group), float(budget), points, value_column, rng, n_bootstrap, robust, confidence))
    return optima


def optima_table(optima: list[Optimum], metric: str) -> pd.DataFrame:
    """The optima as a frame with the columns of ``optima.csv`` (missing optima left empty)."""
    rows = [
        dict(method=o.group, budget=o.budget, status=o.status, n_opt=o.n_opt, n_opt_lo=o.n_opt_lo, n_opt_hi=o.n_opt_hi,
             d_opt=o.d_opt, d_opt_lo=o.d_opt_lo, d_opt_hi=o.d_opt_hi, loss_opt=o.loss_opt, n_points=o.n_points,
             params_fit_status=o.params_fit.status, tokens_fit_status=o.tokens_fit.status, metric=metric)
        for o in optima
    ]
    return pd.DataFrame(rows)
