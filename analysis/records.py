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
    """A run that did not enter the fits, and why (diverged, partial, corrupt...)."""

    run_id: str
    reason: str


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
    def value_at_optimum(self) -> float | None:
        """Fitted metric at the minimum, or None."""
        if not self.has_optimum:
            return None
        return self.intercept - self.slope**2 / (4.0 * self.curvature)

    def evaluate(self, x: np.ndarray) -> np.ndarray:
        """The fitted metric at sizes ``x`` (params or tokens, linear scale)."""
        u = np.log10(np.asarray(x, dtype=float)) - self.log10_center
        return self.curvature * u**2 + self.slope * u + self.intercept


@dataclass(frozen=True)
class Optimum:
    """Compute-optimal allocation for one (group, budget), with bootstrap intervals.

    ``n_opt`` comes from the parabola in log10(params), ``d_opt`` from the
    parabola in log10(tokens); both are fit vertices, never sampled runs.
    Intervals are percentile bootstrap intervals (resampling runs) at
    ``confidence``; NaN when there is no optimum or no bootstrap.
    """

    group: str
    budget: float
    status: FitStatus
    n_points: int
    params_fit: ParabolaFit
    tokens_fit: ParabolaFit
    n_opt: float | None
    n_opt_lo: float
    n_opt_hi: float
    d_opt: float | None
    d_opt_lo: float
    d_opt_hi: float
    loss_opt: float | None
    loss_opt_lo: float
    loss_opt_hi: float
    log10_n_opt_bootstrap: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    log10_d_opt_bootstrap: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))


@dataclass(frozen=True)
class PowerLawPrediction:
    """Predicted optimum (params or tokens) at a budget in FLOPs, with a bootstrap interval."""

    budget: float
    value: float
    value_lo: float
    value_hi: float


@dataclass(frozen=True)
class PowerLawFit:
    """``optimum(C) = coefficient * C**exponent`` across budgets for one group.

    N*(C) = G C^a (``quantity="params"``) or D*(C) = H C^b (``"tokens"``), fitted
    as a least-squares line in log10-log10 through the per-budget optima with
    status ``ok`` (Hoffmann et al. 2022, approach 2). Intervals come from
    bootstrapping the whole two-stage pipeline (resample runs within each
    budget, refit parabolas, refit the line).
    """

    group: str
    quantity: Axis
    coefficient: float
    exponent: float
    coefficient_lo: float
    coefficient_hi: float
    exponent_lo: float
    exponent_hi: float
    budgets: tuple[float, ...]
    predictions: tuple[PowerLawPrediction, ...] = ()
    bootstrap_log10_coefficient: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    bootstrap_exponent: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))

    @property
    def n_budgets(self) -> int:
        """Number of budgets the line was fitted through."""
        return len(self.budgets)

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
    """L(N, D) = E + A / N**alpha + B / D**beta (Hoffmann et al. 2022, approach 3, App. D.2).

    Fitted with a Huber loss (``huber_delta``) on log loss by L-BFGS from a grid
    of initialisations. The implied compute-optimal allocation under C = 6 N D is
    N*(C) = G (C/6)^a, D*(C) = (1/G) (C/6)^b with G = (alpha A / (beta B))^(1/(alpha+beta)),
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
    huber_delta: float
    converged: bool

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
