"""The isoFLOP parabola: the metric as a quadratic in log10(size) (Hoffmann et al. 2022, approach 2).

For one (group, budget), the runs trace an isoFLOP curve; near its minimum the
metric is approximately ``c2 u**2 + c1 u + c0`` with ``u = log10(size) - center``
and size = parameters or tokens. A concave parabola has no minimum (no optimum);
a vertex outside the sampled sizes is an extrapolation (status
``vertex_outside_range``).

Fits are vectorised over bootstrap replicates: inputs are arrays of shape
(replicates, points). Robust option: Huber M-estimation (k = 1.345 robust
scale units, scale from the median absolute deviation) by iteratively
reweighted least squares.
"""

from __future__ import annotations

import numpy as np

from analysis.records import Axis, FitStatus, ParabolaFit

HUBER_K = 1.345
"""Huber threshold in robust standard deviations (95% efficiency under normal noise)."""

MAD_TO_SIGMA = 1.4826
"""Median absolute deviation to standard deviation for normal noise."""

IRLS_ITERATIONS = 50

DISTINCT_TOLERANCE_DECADES = 1e-9
"""Two sizes closer than this in log10 count as one."""


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


def distinct_counts(u: np.ndarray) -> np.ndarray:
    """Number of distinct values per row of u (R, P)."""
    ordered = np.sort(np.atleast_2d(u), axis=1)
    return 1 + np.sum(np.diff(ordered, axis=1) > DISTINCT_TOLERANCE_DECADES, axis=1)


def leverages(u: np.ndarray) -> np.ndarray:
    """Diagonal of the least-squares hat matrix of the parabola design at points u (P,)."""
    design = _design_matrix(np.asarray(u, dtype=float))
    return np.einsum("pi,ij,pj->p", design, np.linalg.pinv(design.T @ design), design)


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
    valid = distinct_counts(u) >= 3
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


def vertices(coefficients: np.ndarray, center: float) -> tuple[np.ndarray, np.ndarray]:
    """log10 size and metric at the minimum of each parabola (R, 3); NaN where there is no minimum."""
    curvature, slope, intercept = np.atleast_2d(coefficients).T
    with np.errstate(divide="ignore", invalid="ignore"):
        has_minimum = curvature > 0
        vertex = np.where(has_minimum, center - slope / (2.0 * curvature), np.nan)
        value = np.where(has_minimum, intercept - slope**2 / (4.0 * curvature), np.nan)
    return vertex, value


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
    common = dict(group=group, budget=float(budget), axis=axis, n_points=len(u), log10_center=center,
                  log10_min=float(log_sizes.min()), log10_max=float(log_sizes.max()))
    if int(distinct_counts(u)[0]) < 3:
        return ParabolaFit(status="too_few_points", **common)
    curvature, slope, intercept = fit_parabolas(u[None, :], np.asarray(values, dtype=float)[None, :], robust)[0]
    vertex_u = -slope / (2.0 * curvature) if curvature != 0 else np.inf
    status = classify(curvature, vertex_u, float(u.min()), float(u.max()))
    return ParabolaFit(status=status, curvature=float(curvature), slope=float(slope), intercept=float(intercept), **common)
