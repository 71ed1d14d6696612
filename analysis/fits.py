"""Compute-optimal N*, D*, L* per (group, budget), with bootstrap intervals (Hoffmann et al. 2022, approach 2).

For every budget C (FLOPs), the runs of one group trace an isoFLOP curve; the
vertex of the parabola of the metric in log10(params) is N* (and L*), in
log10(tokens) D* (:mod:`analysis.parabola`). Intervals follow the rules of
:mod:`analysis.intervals`.

Resampling (``resampling``):

- ``residuals`` (default): the sizes of an isoFLOP sweep are a designed grid, not
  a random sample, so the sizes are kept and the fitted parabola's residuals are
  resampled: y* = fitted + r*, with r the leverage-adjusted residuals
  e_i / sqrt(1 - h_ii), centred (Davison & Hinkley 1997, Algorithm 6.3). Every
  replicate has the same sizes, so no replicate loses an end of the grid.
- ``runs``: resample whole runs with replacement (the pairs bootstrap), for
  points that are not a designed grid (e.g. read off a published figure).

Small samples: a parabola through n runs leaves n - 3 residual degrees of
freedom, and a percentile interval of its replicates covers too rarely when n is
small (88% for a nominal 95% at n = 9). Replicate deviations from the estimate are
scaled by sqrt(n / (n - 1)) t_{n-3} / z (:func:`expansion`): the plug-in variance
of n resampled residuals, and Student's correction for an estimated scale
(Hesterberg 2015, "expanded percentile interval"). On noisy parabolas this brings
coverage to the stated level (tests/test_analysis_intervals.py).

Replicate vertices are kept on the :class:`~analysis.records.Optimum` (log10,
NaN without a minimum) so that the power-law stage reuses the same replicates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.intervals import (MIN_SIZES_FOR_INTERVAL, MIN_SIZES_FOR_RELIABLE_INTERVAL, Support, censored_interval,
                                map_bounds, mark_unreliable, small_sample_expansion)
from analysis.options import RESAMPLING_METHODS
from analysis.parabola import distinct_counts, fit_axis, fit_parabolas, leverages, vertices
from analysis.records import STATUS_SEVERITY, FitStatus, Interval, Optimum, ParabolaFit

NO_LOCATED_OPTIMUM: dict[str, str] = {
    "vertex_outside_range": "the optimum is extrapolated outside the sampled sizes: no interval",
    "concave": "no minimum, so no optimum and no interval",
    "too_few_points": "fewer than 3 distinct sizes: no parabola, no interval",
}


def worst_status(*statuses: FitStatus) -> FitStatus:
    """The most severe of several fit statuses."""
    return max(statuses, key=lambda status: STATUS_SEVERITY[status])


def replicate_vertices(fit: ParabolaFit, sizes: np.ndarray, values: np.ndarray, indices: np.ndarray,
                       resampling: str, robust: bool) -> tuple[np.ndarray, np.ndarray]:
    """log10 vertex and metric at the vertex of every bootstrap replicate; NaN where a replicate has no minimum.

    Args:
        fit: the parabola fitted to all points (its centre and, for ``residuals``, its fitted values).
        indices: (R, P) resample indices into the points (runs, or residuals).
    """
    u = np.log10(np.asarray(sizes, dtype=float)) - fit.log10_center
    values = np.asarray(values, dtype=float)
    if resampling == "residuals":
        fitted = fit.evaluate(np.asarray(sizes, dtype=float))
        adjusted = (values - fitted) / np.sqrt(np.clip(1.0 - leverages(u), 1e-12, None))
        adjusted -= adjusted.mean()
        replicate_values = fitted[None, :] + adjusted[indices]
        replicate_u = np.broadcast_to(u, replicate_values.shape)
    else:
        replicate_values, replicate_u = values[indices], u[indices]
    return vertices(fit_parabolas(replicate_u, replicate_values, robust), fit.log10_center)


def expansion(n_points: int, confidence: float) -> float:
    """Factor on replicate deviations from the estimate: sqrt(n / (n - 1)) t_{n-3} / z (module docstring)."""
    return float(np.sqrt(n_points / (n_points - 1)) * small_sample_expansion(n_points - 3, confidence))


def censored_vertices(fit: ParabolaFit, replicate_log10: np.ndarray,
                      expansion_factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replicate vertices (log10) as :func:`~analysis.intervals.censored_interval` takes them.

    Returns the samples (interior vertices, their deviation from the estimate multiplied by
    ``expansion_factor``, e.g. :func:`expansion`; NaN elsewhere) and the masks of replicates whose
    vertex lies below the smallest / above the largest sampled size.
    """
    inside = (replicate_log10 >= fit.log10_min) & (replicate_log10 <= fit.log10_max)
    samples = np.where(inside, fit.vertex_log10 + expansion_factor * (replicate_log10 - fit.vertex_log10), np.nan)
    return samples, replicate_log10 < fit.log10_min, replicate_log10 > fit.log10_max


def axis_interval(fit: ParabolaFit, replicate_log10: np.ndarray, n_sizes: int, confidence: float) -> Interval:
    """Interval of one optimum (N* or D*, linear units) from its replicate vertices (log10)."""
    if fit.status != "ok":
        return Interval(note=NO_LOCATED_OPTIMUM[fit.status], confidence=confidence, replicates=replicate_log10.size)
    if n_sizes < MIN_SIZES_FOR_INTERVAL:
        return Interval(note=f"only {n_sizes} distinct sizes: a parabola through them leaves no residual, so no "
                             f"interval (needs {MIN_SIZES_FOR_INTERVAL})", confidence=confidence,
                        replicates=replicate_log10.size)
    support = Support(fit.log10_min, fit.log10_max, "the smallest sampled size", "the largest sampled size")
    interval = censored_interval(*censored_vertices(fit, replicate_log10, expansion(fit.n_points, confidence)),
                                 support, confidence)
    if n_sizes < MIN_SIZES_FOR_RELIABLE_INTERVAL:
        interval = mark_unreliable(interval, f"only {n_sizes} distinct sizes")
    return map_bounds(interval, lambda value: 10.0**value)


def value_interval(size_interval: Interval, fit: ParabolaFit, located: np.ndarray, replicate_values: np.ndarray,
                   confidence: float) -> Interval:
    """Interval of the metric at the optimum: percentiles of the (expanded) replicates that located the optimum,
    with the reliability of the optimum's own interval."""
    if not size_interval.printable:
        return size_interval
    tail = 50.0 * (1.0 - confidence)
    expanded = fit.value_at_optimum + expansion(fit.n_points, confidence) * (replicate_values[located] - fit.value_at_optimum)
    low, high = np.percentile(expanded, [tail, 100.0 - tail])
    return Interval(low=float(low), high=float(high), status=size_interval.status, note=size_interval.note,
                    confidence=confidence, replicates=size_interval.replicates, usable=int(located.sum()))


def fit_optimum(group: str, budget: float, points: pd.DataFrame, value_column: str, rng: np.random.Generator,
                n_bootstrap: int, robust: bool, confidence: float = 0.95, resampling: str = "residuals") -> Optimum:
    """Compute-optimal N*, D*, L* for one (group, budget) from its runs.

    Args:
        points: rows with ``params``, ``tokens`` and ``value_column``.
        rng: source of bootstrap resamples; one (n_bootstrap, points) draw per call whatever the
            fit's status, so one budget's outcome never shifts another's resamples.
        n_bootstrap: number of replicates; 0 disables intervals.
        resampling: ``residuals`` or ``runs`` (module docstring).
    """
    if resampling not in RESAMPLING_METHODS:
        raise ValueError(f"resampling {resampling!r} is not one of {RESAMPLING_METHODS}")
    params = points["params"].to_numpy(float)
    tokens = points["tokens"].to_numpy(float)
    values = points[value_column].to_numpy(float)
    params_fit = fit_axis(group, budget, params, values, "params", robust)
    tokens_fit = fit_axis(group, budget, tokens, values, "tokens", robust)
    n_points = len(points)
    n_sizes = int(distinct_counts(np.log10(params))[0])
    optimum_fields = dict(group=group, budget=float(budget), status=worst_status(params_fit.status, tokens_fit.status),
                          n_points=n_points, n_sizes=n_sizes, params_fit=params_fit, tokens_fit=tokens_fit,
                          n_opt=params_fit.optimum, d_opt=tokens_fit.optimum, loss_opt=params_fit.value_at_optimum)
    if n_bootstrap <= 0:
        no_bootstrap = Interval(note="no bootstrap (--bootstrap 0)", confidence=confidence)
        return Optimum(**optimum_fields, n_interval=no_bootstrap, d_interval=no_bootstrap, loss_interval=no_bootstrap)
    indices = rng.integers(0, n_points, size=(n_bootstrap, n_points))
    unknown = np.full(n_bootstrap, np.nan)
    log_n_boot, loss_boot, log_d_boot = unknown, unknown, unknown
    if params_fit.status == "ok" and n_sizes >= MIN_SIZES_FOR_INTERVAL:
        log_n_boot, loss_boot = replicate_vertices(params_fit, params, values, indices, resampling, robust)
    if tokens_fit.status == "ok" and n_sizes >= MIN_SIZES_FOR_INTERVAL:
        log_d_boot, _ = replicate_vertices(tokens_fit, tokens, values, indices, resampling, robust)
    n_interval = axis_interval(params_fit, log_n_boot, n_sizes, confidence)
    located = (log_n_boot >= params_fit.log10_min) & (log_n_boot <= params_fit.log10_max)
    return Optimum(**optimum_fields, n_interval=n_interval,
                   d_interval=axis_interval(tokens_fit, log_d_boot, n_sizes, confidence),
                   loss_interval=value_interval(n_interval, params_fit, located, loss_boot, confidence),
                   log10_n_opt_bootstrap=log_n_boot, log10_d_opt_bootstrap=log_d_boot, loss_opt_bootstrap=loss_boot)


def fit_all_optima(frame: pd.DataFrame, value_column: str, group_column: str = "method", n_bootstrap: int = 1000,
                   seed: int = 0, robust: bool = False, confidence: float = 0.95,
                   resampling: str = "residuals") -> list[Optimum]:
    """Fit every (group, budget) of a tidy frame with columns params, tokens, budget, value_column.

    The random stream is seeded once and consumed in sorted (group, budget) order,
    so results are reproducible for a given ``seed``.
    """
    rng = np.random.default_rng(seed)
    return [fit_optimum(str(group), float(budget), points, value_column, rng, n_bootstrap, robust, confidence, resampling)
            for (group, budget), points in frame.groupby([group_column, "budget"], sort=True)]


def optima_table(optima: list[Optimum], metric: str) -> pd.DataFrame:
    """The optima as a frame with the columns of ``optima.csv`` (missing optima and intervals left empty).

    Intervals: ``*_lo``/``*_hi`` at the level in ``confidence``; ``interval`` is ok, unreliable
    or none (the worse of N* and D*), ``interval_note`` says why; ``replicates`` were drawn,
    ``n_opt_usable``/``d_opt_usable`` located an interior minimum. ``vertex_position`` is where N*
    sits in the sampled log10 range (0 smallest size, 1 largest; see :mod:`analysis.diagnostics`).
    """
    rows = []
    for o in optima:
        worst = max((o.n_interval, o.d_interval), key=lambda interval: ("ok", "unreliable", "none").index(interval.status))
        notes = list(dict.fromkeys(note for note in (o.n_interval.note, o.d_interval.note) if note))
        rows.append(dict(
            method=o.group, budget=o.budget, status=o.status, n_opt=o.n_opt, n_opt_lo=o.n_opt_lo, n_opt_hi=o.n_opt_hi,
            d_opt=o.d_opt, d_opt_lo=o.d_opt_lo, d_opt_hi=o.d_opt_hi, loss_opt=o.loss_opt, n_points=o.n_points,
            n_sizes=o.n_sizes, loss_opt_lo=o.loss_interval.low, loss_opt_hi=o.loss_interval.high,
            interval=worst.status, interval_note="; ".join(notes), confidence=o.n_interval.confidence,
            replicates=o.n_interval.replicates,
            n_opt_usable=o.n_interval.usable, d_opt_usable=o.d_interval.usable,
            vertex_position=o.params_fit.vertex_position, params_fit_status=o.params_fit.status,
            tokens_fit_status=o.tokens_fit.status, metric=metric))
    table = pd.DataFrame(rows)
    for column in ("replicates", "n_opt_usable", "d_opt_usable"):
        if column in table:
            table[column] = table[column].astype("Int64")
    return table
