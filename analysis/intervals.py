"""Bootstrap intervals: one rule for the point estimates and for their intervals.

**The rule.** An isoFLOP optimum counts as located only when its parabola has a
minimum *inside the sampled sizes* (fit status ``ok``); only located optima
enter the power laws. A bootstrap replicate is judged by the same rule: its
vertex is *usable* only when it is an interior minimum of the same sampled
range. A replicate without one is information, not noise (the resampled data
do not locate the optimum among the sampled sizes), so it is kept, *censored*:
a vertex past the largest size counts as lying above every usable value, one
past the smallest as below, and a replicate with no minimum at all (concave,
or fewer than three distinct sizes) as unknown in both directions, so it
widens both ends. A power-law replicate is usable when every budget's
replicate is; an unusable one is unknown in both directions.

The interval is the pair of order statistics at (1 - level)/2 and
(1 + level)/2 of the censored samples (inverted-CDF percentiles; level 0.95 by
default, 0.80 for the 10th-90th percentile interval of Hoffmann et al. 2022).
An end that falls on a censored sample is not located by the data: it is
printed at the edge of what the data can say (the smallest or largest sampled
size; for a power law, the flattest or steepest line that stays inside every
budget's sampled range) and the interval is marked ``unreliable``. Because usable
vertices lie inside the sampled sizes, no printed interval reaches past them.

Before the percentiles, usable replicates' deviations from the estimate are
widened where the bootstrap alone is known to understate them: for few residual
degrees of freedom (:func:`small_sample_expansion`, in :mod:`analysis.fits`) and
for optima that scatter around their power law more than their own noise
explains (the Birge ratio, in :mod:`analysis.powerlaw`).

Also ``unreliable``: fewer than :data:`MIN_TAIL_REPLICATES` usable replicates
beyond each end (200 usable replicates for a 95% interval, 50 for 80%), and a
budget with only :data:`MIN_SIZES_FOR_INTERVAL` distinct sizes (one residual
degree of freedom). No interval at all (status ``none``): no bootstrap, fewer
distinct sizes, an optimum that is itself not interior, or a power law
through two budgets (a line through two points has no residual).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from analysis.records import Interval

MIN_TAIL_REPLICATES = 5
"""Usable replicates needed beyond each end of a percentile interval: (1 - level)/2 x usable >= this."""

MIN_SIZES_FOR_INTERVAL = 4
"""Distinct sizes a budget needs for an interval: a parabola through 3 leaves no residual to resample."""

MIN_SIZES_FOR_RELIABLE_INTERVAL = 5
"""Distinct sizes below which a budget's interval is marked unreliable (one residual degree of freedom)."""

LINE_THROUGH_TWO_POINTS = "two budgets: the line passes exactly through both optima, so its exponent has no interval"


@dataclasses.dataclass(frozen=True)
class Support:
    """The range a quantity can take when every budget's optimum lies inside its sampled sizes.

    ``low_words``/``high_words`` name the edges in notes, e.g. "the smallest sampled size".
    """

    low: float
    high: float
    low_words: str
    high_words: str


def small_sample_expansion(degrees_of_freedom: int, confidence: float) -> float:
    """t_{df}(1 - tail) / z(1 - tail): how much wider an interval is when the noise scale is estimated.

    A bootstrap replicates an estimate's spread as if the residual scale were known; with few
    residual degrees of freedom (a parabola through 6-9 sizes has 3-6) its percentile interval
    covers like a z-interval with an estimated scale, i.e. too rarely (about 88% for a nominal 95%
    at 6 degrees of freedom). Replicate deviations from the estimate are therefore scaled by this
    ratio, Student's correction (cf. Hesterberg 2015, "expanded percentile interval").
    """
    from scipy.stats import norm, t

    upper = 1.0 - tail_fraction(confidence)
    return float(t.ppf(upper, degrees_of_freedom) / norm.ppf(upper)) if degrees_of_freedom >= 1 else float("inf")


def tail_fraction(confidence: float) -> float:
    """(1 - level) / 2: the share of replicates beyond each end."""
    return (1.0 - confidence) / 2.0


def censored_interval(samples: np.ndarray, below: np.ndarray, above: np.ndarray, support: Support,
                      confidence: float) -> Interval:
    """Percentile interval of bootstrap replicates with censoring (see the module docstring).

    Args:
        samples: (R,) the replicate values, finite where the replicate is usable, NaN elsewhere.
        below, above: (R,) masks of unusable replicates known to lie below / above the support;
            the other unusable ones are unknown in both directions.
        support: the edges printed for an end the data do not locate.
        confidence: interval level, e.g. 0.95.

    Returns:
        An :class:`~analysis.records.Interval` in the units of ``samples``.
    """
    samples = np.asarray(samples, dtype=float)
    replicates = int(samples.size)
    usable_mask = np.isfinite(samples)
    usable = int(usable_mask.sum())
    common = dict(confidence=confidence, replicates=replicates, usable=usable)
    tail = tail_fraction(confidence)
    lower_samples = np.where(usable_mask, samples, np.where(above, np.inf, -np.inf))
    upper_samples = np.where(usable_mask, samples, np.where(below, -np.inf, np.inf))
    low = float(np.quantile(lower_samples, tail, method="inverted_cdf"))
    high = float(np.quantile(upper_samples, 1.0 - tail, method="inverted_cdf"))
    notes = []
    tolerance = 1e-9 * max(1.0, abs(support.high - support.low))
    for end, value in (("lower", low), ("upper", high)):
        if value < support.low - tolerance:  # a censored replicate, or past what the data allow
            notes.append(f"its {end} end reaches {support.low_words}")
        elif value > support.high + tolerance:
            notes.append(f"its {end} end reaches {support.high_words}")
    if notes:
        notes[-1] += f" ({replicates - usable} of {replicates} replicates did not locate it)"
    needed = int(np.ceil(MIN_TAIL_REPLICATES / tail - 1e-9))
    if usable < needed:
        notes.append(f"{usable} usable replicates, fewer than the {needed} a {confidence:.0%} interval needs")
    low, high = float(np.clip(low, support.low, support.high)), float(np.clip(high, support.low, support.high))
    return Interval(low=low, high=high, status="unreliable" if notes else "ok", note="; ".join(notes), **common)


def mark_unreliable(interval: Interval, reason: str) -> Interval:
    """The same interval, marked ``unreliable`` with ``reason`` added (an absent interval stays absent)."""
    if not interval.printable:
        return interval
    note = "; ".join(part for part in (reason, interval.note) if part)
    return dataclasses.replace(interval, status="unreliable", note=note)


def map_bounds(interval: Interval, transform: Callable[[float], float]) -> Interval:
    """The interval with both bounds passed through ``transform`` (e.g. 10**x from log10 space)."""
    if not interval.printable:
        return interval
    return dataclasses.replace(interval, low=float(transform(interval.low)), high=float(transform(interval.high)))


def linear_support(weights: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> tuple[float, float]:
    """Smallest and largest value of sum(weights * y) over y_i in [lows_i, highs_i]."""
    weights, lows, highs = (np.asarray(array, dtype=float) for array in (weights, lows, highs))
    return float(np.sum(np.minimum(weights * lows, weights * highs))), float(np.sum(np.maximum(weights * lows, weights * highs)))


def line_weights(log10_budgets: np.ndarray, at_log10_budget: float | None) -> np.ndarray:
    """Weights w with sum(w * y) = the least-squares line through (log10_budgets, y).

    ``at_log10_budget=None`` gives the slope; a number gives the line's value there
    (0 for the intercept, i.e. log10 of the coefficient).
    """
    x = np.asarray(log10_budgets, dtype=float)
    slope_weights = (x - x.mean()) / np.sum((x - x.mean()) ** 2)
    if at_log10_budget is None:
        return slope_weights
    return 1.0 / x.size + (at_log10_budget - x.mean()) * slope_weights
