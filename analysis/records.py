"""Typed records passed from collection and fits to figures, tables and the report.

Every fitted quantity carries its unit in its name: ``budget`` is training
compute in FLOPs, ``n_*`` are parameter counts (of the kind chosen with
``--params``), ``d_*`` are training tokens, ``loss_*`` is the fitted metric
(loss in nats/token or perplexity, as chosen with ``--metric``).

This module imports only the standard library and numpy, so the records stay
cheap to construct in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

FitStatus = Literal["ok", "too_few_points", "concave", "vertex_outside_range"]
"""Outcome of one isoFLOP parabola fit.

``ok``: a minimum inside the sampled range. ``too_few_points``: fewer than three
distinct sizes. ``concave``: the parabola opens downwards, so it has no minimum
and no optimum is reported. ``vertex_outside_range``: the minimum lies outside
the sampled sizes; the optimum is reported as an extrapolation and flagged.
"""

STATUS_SEVERITY: dict[str, int] = {"ok": 0, "vertex_outside_range": 1, "concave": 2, "too_few_points": 3}

Axis = Literal["params", "tokens"]


@dataclass(frozen=True)
class ExcludedRun:
    """A run that did not enter the fits, and why (diverged, partial, corrupt...); its
    method when its run.json or result.json says."""

    run_id: str
    reason: str
    method: str | None = None


@dataclass(frozen=True)
class ParabolaFit:
    """Loss as a parabola in log10(x) for one (group, budget): Hoffmann et al. 2022, approach 2.

    The fitted curve is ``value = curvature * u**2 + slope * u + intercept`` with
    ``u = log10(x) - log10_center``; ``x`` is parameters or tokens (see ``axis``).
    """

    group: str
    budget: float
    axis: Axis
    status: FitStatus
    n_points: int
    log10_center: float
    log10_min: float
    log10_max: float
    curvature: float = float("nan")
    slope: float = float("nan")
    intercept: float = float("nan")

    @property
    def has_optimum(self) -> bool:
        """True when the parabola has a minimum (ok or extrapolated vertex)."""
        return self.status in ("ok", "vertex_outside_range")

    @property
    def vertex_log10(self) -> float | None:
        """log10 of the size at the minimum, or None when there is no minimum."""
        if not self.has_optimum:
            return None
        return self.log10_center - self.slope / (2.0 * self.curvature)

    @property
    def optimum(self) -> float | None:
        """Size (params or tokens) at the fitted minimum, or None."""
        vertex = self.vertex_log10
        return None if vertex is None else float(10.0**vertex)

    @property
    def vertex_position(self) -> float | None:
        """Where the minimum sits in the sampled log10 range: 0 at the smallest size, 1 at the largest.

        0.5 is a grid centred on the optimum; values near 0 or 1 (or outside [0, 1])
        mean the parabola is fitted mostly on one side of its minimum, where
        approach 2's quadratic approximation of the isoFLOP curve is biased.
        """
        vertex = self.vertex_log10
        if vertex is None or self.log10_max <= self.log10_min:
            return None
        return (vertex - self.log10_min) / (self.log10_max - self.log10_min)

    @property
    def value_at_optimum(self) -> float | None:
        """Fitted metric at the minimum, or None."""
        if not self.has_optimum:
            return None
        return self.intercept - self.slope**2 / (4.0 * self.curvature)

    def evaluate(self, x: np.ndarray) -> np.ndarray:
        """The fitted metric at sizes ``x`` (params or tokens, linear scale)."""
        u = np.log10(np.asarray(x, dtype=float)) - self.log10_center
        return self.curvature * u**2 + self.slope * u + self.intercept


IntervalStatus = Literal["ok", "unreliable", "none"]
"""Quality of a bootstrap interval (see :mod:`analysis.intervals` for the rules).

``ok``: a percentile interval the data support. ``unreliable``: printed, but
marked, with the reason in ``Interval.note`` (too few distinct sizes, too few
usable replicates, or an end that reaches the edge of what the sampled sizes
can tell). ``none``: no interval (no bootstrap, no interior optimum, a line
through two points...), with the reason in ``note``.
"""


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval of one fitted quantity, with how many replicates it rests on.

    ``low``/``high`` are in the quantity's own unit (parameters, tokens, the
    metric, or the dimensionless exponent); NaN when ``status`` is ``none``.
    ``usable`` counts the replicates that located the quantity (an interior
    minimum at the budget, or at every budget of a power law) out of ``replicates``.
    """

    low: float = float("nan")
    high: float = float("nan")
    status: IntervalStatus = "none"
    note: str = ""
    confidence: float = 0.95
    replicates: int = 0
    usable: int = 0

    @property
    def printable(self) -> bool:
        """True when there are bounds to print (``ok`` or ``unreliable``)."""
        return self.status != "none"


NO_INTERVAL = Interval(note="no bootstrap (--bootstrap 0)")


@dataclass(frozen=True)
class Optimum:
    """Compute-optimal allocation for one (group, budget), with bootstrap intervals.

    ``n_opt`` comes from the parabola in log10(params), ``d_opt`` from the
    parabola in log10(tokens); both are fit vertices, never sampled runs.
    The intervals follow the rules of :mod:`analysis.intervals`; the raw
    replicate vertices (log10, NaN where a replicate had no interior minimum)
    are kept for the power-law stage.
    """

    group: str
    budget: float
    status: FitStatus
    n_points: int
    n_sizes: int
    params_fit: ParabolaFit
    tokens_fit: ParabolaFit
    n_opt: float | None
    d_opt: float | None
    loss_opt: float | None
    n_interval: Interval = NO_INTERVAL
    d_interval: Interval = NO_INTERVAL
    loss_interval: Interval = NO_INTERVAL
    log10_n_opt_bootstrap: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    log10_d_opt_bootstrap: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    loss_opt_bootstrap: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    """The metric at each replicate's N* vertex (NaN without a minimum; interior or not: see ``log10_n_opt_bootstrap``)."""

    @property
    def n_opt_lo(self) -> float:
        return self.n_interval.low

    @property
    def n_opt_hi(self) -> float:
        return self.n_interval.high

    @property
    def d_opt_lo(self) -> float:
        return self.d_interval.low

    @property
    def d_opt_hi(self) -> float:
        return self.d_interval.high

    def axis_fit(self, quantity: Axis) -> ParabolaFit:
        """The parabola whose vertex is N* (``params``) or D* (``tokens``)."""
        return self.params_fit if quantity == "params" else self.tokens_fit

    def interval(self, quantity: Axis) -> Interval:
        """The interval of N* (``params``) or D* (``tokens``)."""
        return self.n_interval if quantity == "params" else self.d_interval

    def value(self, quantity: Axis) -> float | None:
        """N* (``params``) or D* (``tokens``), or None without an optimum."""
        return self.n_opt if quantity == "params" else self.d_opt

    def bootstrap_log10(self, quantity: Axis) -> np.ndarray:
        """Replicate vertices (log10 N* or log10 D*), NaN where a replicate has no interior minimum."""
        return self.log10_n_opt_bootstrap if quantity == "params" else self.log10_d_opt_bootstrap


@dataclass(frozen=True)
class PowerLawPrediction:
    """Predicted optimum (params or tokens) at a budget in FLOPs, with a bootstrap interval."""

    budget: float
    value: float
    interval: Interval = NO_INTERVAL


@dataclass(frozen=True)
class PowerLawFit:
    """``optimum(C) = coefficient * C**exponent`` across budgets for one group.

    N*(C) = G C^a (``quantity="params"``) or D*(C) = H C^b (``"tokens"``), fitted
    as a least-squares line in log10-log10 through the per-budget optima with
    status ``ok`` (Hoffmann et al. 2022, approach 2). Intervals come from
    bootstrapping the whole two-stage pipeline (resample within each budget,
    refit parabolas, refit the line; see :mod:`analysis.powerlaw`); a line through
    two budgets gets none. ``left_out`` lists the budgets not used, with their
    status; ``scatter_ratio`` compares the optima's scatter around the line with
    their bootstrap variance (1: as expected; NaN: not computed).
    """

    group: str
    quantity: Axis
    coefficient: float
    exponent: float
    budgets: tuple[float, ...]
    exponent_interval: Interval = NO_INTERVAL
    coefficient_interval: Interval = NO_INTERVAL
    predictions: tuple[PowerLawPrediction, ...] = ()
    left_out: tuple[str, ...] = ()
    scatter_ratio: float = float("nan")
    bootstrap_log10_coefficient: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    bootstrap_exponent: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))

    @property
    def n_budgets(self) -> int:
        """Number of budgets the line was fitted through."""
        return len(self.budgets)

    @property
    def through_two_points(self) -> bool:
        """True when the line passes exactly through two budgets' optima (no residual, no interval)."""
        return self.n_budgets == 2

    @property
    def exponent_lo(self) -> float:
        return self.exponent_interval.low

    @property
    def exponent_hi(self) -> float:
        return self.exponent_interval.high

    def evaluate(self, budget: np.ndarray) -> np.ndarray:
        """Fitted optimum at budgets in FLOPs."""
        return self.coefficient * np.asarray(budget, dtype=float) ** self.exponent


@dataclass(frozen=True)
class PowerLawSkipped:
    """A group for which no power law could be fitted, with the reason."""

    group: str
    quantity: Axis
    reason: str


@dataclass(frozen=True)
class Approach3Fit:
    """L(N, D) = E + A / N**alpha + B / D**beta (Hoffmann et al. 2022, approach 3).

    ``method`` says how it was fitted: ``vpnls`` (variable projection: for fixed
    (alpha, beta) the loss is linear in (E, A, B) >= 0, solved exactly by
    non-negative least squares, leaving a 2-D search; see :mod:`analysis.vpnls`)
    or ``lbfgs`` (Huber loss with ``huber_delta`` on log loss, L-BFGS over all five
    parameters from a grid, as in Hoffmann et al. App. D.2; :mod:`analysis.approach3`).
    ``objective`` is that method's own objective at the optimum. The implied
    compute-optimal allocation under C = 6 N D is N*(C) = G (C/6)^a,
    D*(C) = (1/G) (C/6)^b with G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta / (alpha + beta), b = alpha / (alpha + beta).
    """

    group: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    n_points: int
    converged: bool
    method: str = "vpnls"
    huber_delta: float | None = None

    @property
    def params_exponent(self) -> float:
        """a in N*(C) ∝ C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def tokens_exponent(self) -> float:
        """b in D*(C) ∝ C^b."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def allocation_constant(self) -> float:
        """G in N*(C) = G (C/6)^a."""
        return float((self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta)))

    def optimal_params(self, budget: float) -> float:
        """Compute-optimal parameter count at ``budget`` FLOPs (C = 6 N D)."""
        return self.allocation_constant * (budget / 6.0) ** self.params_exponent
