"""The metric at the optimum across budgets: L*(C) = E + A·(C / C_ref)^(-gamma), with bootstrap intervals.

**Why this form.** On the loss surface L(N, D) = E + A'/N^alpha + B'/D^beta with
C = 6ND (Hoffmann et al. 2022, Eq. 2), the compute-optimal allocation
(their Eq. 4) makes both reducible terms scale as C^(-alpha·beta/(alpha+beta)),
so the loss at the optimum is exactly L*(C) = E + K·C^(-gamma) with
gamma = alpha·beta / (alpha + beta) (0.15 for Chinchilla's fit). E is the
irreducible loss. A pure power law (E = 0, Kaplan et al. 2020's L(C)) bends the
wrong way once L* nears E and predicts too low a loss at larger budgets. The
coefficient A is the reducible part at the reference budget C_ref (a power of
ten near the budgets' geometric mean), which keeps it readable.

**Fitting: variable projection.** For a fixed gamma the law is linear in
(E, A); the best (E, A) >= 0 is a two-unknown non-negative least squares
solved in closed form, so the only search is over gamma: a log-spaced grid on
:data:`DECAY_RANGE`, refined by a parabola through the best grid point and its
neighbours. There are no start values and nothing can diverge. With few
budgets E and gamma trade off (a flatter curve with a larger E fits nearly as
well); the search range bounds that trade, and a replicate whose gamma lands on
an end of it is censored there (:mod:`analysis.intervals`).

**How many budgets.** Three parameters: fewer than 3 located optima, no law;
through exactly 3 the curve passes through every optimum (no residual), so its
predictions get no interval, as a line through two budgets gets none; 4 or more
give intervals.

**Intervals** use the machinery of :mod:`analysis.powerlaw`: replicate r refits
the curve through every budget's r-th replicate L* (the metric at that
replicate's N* vertex); a replicate is usable when every budget's N* vertex is
interior (the rule of N*(C)); replicate deviations from the fit are widened by
the Birge ratio sqrt(F), with F from the Jacobian of the law at the fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from analysis.formatting import budget_text
from analysis.intervals import Support, censored_interval, mark_unreliable
from analysis.powerlaw import birge_inflation, few_sizes_reason, interior_replicates, pooled_expansion, scatter_ratio
from analysis.records import Interval, Optimum, PowerLawPrediction, PowerLawSkipped

DECAY_RANGE = (0.005, 3.0)
"""Search range of gamma: from a loss that barely falls (0.5% of the reducible part per decade of compute)
to one that falls 1000x per decade (i.e. already at E)."""
DECAY_GRID_POINTS = 241
MIN_BUDGETS_FOR_LOSS_LAW = 3
"""Located optima L*(C) needs: it has three parameters (E, A, gamma)."""
CURVE_THROUGH_THREE_POINTS = ("three budgets: E + A·C^-gamma passes exactly through all three optima, so its "
                              "predictions have no interval")


def _nonnegative_line(basis: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """min ||values - E - A·basis||^2 subject to E, A >= 0, over the last axis (broadcast over the others).

    Returns E, A and the residual sum of squares. The problem is convex: the unconstrained
    solution when it is feasible, else the better of the two one-parameter solutions.
    """
    basis_mean, values_mean = basis.mean(axis=-1), values.mean(axis=-1)
    centred = basis - basis_mean[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.sum(centred * (values - values_mean[..., None]), axis=-1) / np.sum(centred**2, axis=-1)
        through_zero = np.clip(np.sum(basis * values, axis=-1) / np.sum(basis**2, axis=-1), 0.0, None)
    intercept = values_mean - slope * basis_mean

    def rss(offset: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return np.sum((values - offset[..., None] - scale[..., None] * basis) ** 2, axis=-1)

    flat = np.clip(values_mean, 0.0, None)
    zero = np.zeros_like(flat)
    flat_rss, through_zero_rss = rss(flat, zero), rss(zero, through_zero)
    feasible = (slope >= 0) & (intercept >= 0)
    flat_better = flat_rss <= through_zero_rss
    offset = np.where(feasible, intercept, np.where(flat_better, flat, 0.0))
    scale = np.where(feasible, slope, np.where(flat_better, 0.0, through_zero))
    return offset, scale, np.where(feasible, rss(intercept, slope), np.minimum(flat_rss, through_zero_rss))


@dataclass(frozen=True)
class CurveFits:
    """E + A·10^(-gamma·x) fitted to each row of values (R, budgets), x = log10(C / C_ref)."""

    irreducible: np.ndarray
    coefficient: np.ndarray
    decay: np.ndarray
    at_lower_end: np.ndarray
    at_upper_end: np.ndarray
    """Rows whose best gamma is an end of :data:`DECAY_RANGE` (censored there)."""


def fit_curves(log10_budget_ratio: np.ndarray, values: np.ndarray) -> CurveFits:
    """Variable-projection fits of E + A·10^(-gamma·x), batched over the rows of ``values`` (R, budgets)."""
    x, values = np.asarray(log10_budget_ratio, dtype=float), np.atleast_2d(np.asarray(values, dtype=float))
    log_grid = np.linspace(*np.log(DECAY_RANGE), DECAY_GRID_POINTS)
    basis = 10.0 ** (-np.exp(log_grid)[:, None] * x[None, :])  # (G, budgets)
    _, _, grid_rss = _nonnegative_line(basis[None, :, :], values[:, None, :])  # (R, G)
    best = np.argmin(grid_rss, axis=1)
    rows = np.arange(values.shape[0])
    inner = np.clip(best, 1, DECAY_GRID_POINTS - 2)
    left, centre, right = (grid_rss[rows, inner + step] for step in (-1, 0, 1))
    curvature = left - 2.0 * centre + right
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(curvature > 0, 0.5 * (left - right) / curvature, 0.0)
    step = log_grid[1] - log_grid[0]
    refined = log_grid[inner] + np.clip(shift, -1.0, 1.0) * step
    candidates = np.stack([log_grid[best], refined], axis=1)  # (R, 2)
    offset, scale, candidate_rss = _nonnegative_line(10.0 ** (-np.exp(candidates)[..., None] * x), values[:, None, :])
    choice = np.argmin(candidate_rss, axis=1)
    return CurveFits(irreducible=offset[rows, choice], coefficient=scale[rows, choice],
                     decay=np.exp(candidates[rows, choice]), at_lower_end=best == 0,
                     at_upper_end=best == DECAY_GRID_POINTS - 1)


@dataclass(frozen=True)
class LossLawFit:
    """L*(C) = irreducible + coefficient·(C / reference_budget)^(-decay) for one group (module docstring).

    ``irreducible`` (E) and ``coefficient`` (A) are in the units of the fitted metric;
    ``reference_budget`` and ``budgets`` in FLOPs. ``decay_interval`` is gamma's interval.
    The replicate parameters (usable replicates only, not widened) and ``inflation`` (the Birge
    factor) give the replicate curves of :meth:`replicate_values`.
    """

    group: str
    irreducible: float
    coefficient: float
    decay: float
    reference_budget: float
    budgets: tuple[float, ...]
    decay_interval: Interval
    predictions: tuple[PowerLawPrediction, ...] = ()
    left_out: tuple[str, ...] = ()
    scatter_ratio: float = float("nan")
    inflation: float = 1.0
    bootstrap_irreducible: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    bootstrap_coefficient: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    bootstrap_decay: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    quantity: str = "loss"

    @property
    def n_budgets(self) -> int:
        return len(self.budgets)

    def evaluate(self, budget: np.ndarray) -> np.ndarray:
        """Fitted L* at budgets in FLOPs."""
        ratio = np.asarray(budget, dtype=float) / self.reference_budget
        return self.irreducible + self.coefficient * ratio ** (-self.decay)

    def replicate_values(self, budget: np.ndarray) -> np.ndarray:
        """(usable replicates, budgets): each replicate curve's deviation from the fit, widened by ``inflation``."""
        ratio = np.asarray(budget, dtype=float)[None, :] / self.reference_budget
        curves = self.bootstrap_irreducible[:, None] + self.bootstrap_coefficient[:, None] * ratio ** (
            -self.bootstrap_decay[:, None])
        fitted = self.evaluate(np.asarray(budget, dtype=float))[None, :]
        return fitted + self.inflation * (curves - fitted)


def reference_budget(budgets: list[float]) -> float:
    """The power of ten nearest the budgets' geometric mean (FLOPs)."""
    return float(10.0 ** np.round(np.mean(np.log10(budgets))))


def _jacobian(law: LossLawFit, x: np.ndarray) -> np.ndarray:
    """d L* / d(E, A, gamma) at the fit, (budgets, 3)."""
    basis = 10.0 ** (-law.decay * x)
    return np.stack([np.ones_like(x), basis, -law.coefficient * np.log(10.0) * x * basis], axis=1)


def _with_intervals(law: LossLawFit, usable: list[Optimum], x: np.ndarray, predict_budgets: tuple[float, ...],
                    confidence: float) -> LossLawFit:
    """The law with gamma's and the predictions' bootstrap intervals (module docstring)."""
    _, located = interior_replicates(usable, "params")
    replicate_losses = np.stack([o.loss_opt_bootstrap for o in usable], axis=1)[located]
    replicates = located.size
    if located.sum() < 2:
        no_interval = Interval(note=f"{int(located.sum())} usable replicates", confidence=confidence,
                               replicates=replicates, usable=int(located.sum()))
        return replace(law, decay_interval=no_interval, predictions=tuple(
            PowerLawPrediction(p.budget, p.value, no_interval) for p in law.predictions))
    values = np.array([o.loss_opt for o in usable])
    ratio = scatter_ratio(_jacobian(law, x), values, np.var(replicate_losses, axis=0))
    fits = fit_curves(x, replicate_losses)
    law = replace(law, scatter_ratio=ratio, inflation=birge_inflation(ratio) * pooled_expansion(usable, confidence),
                  bootstrap_irreducible=fits.irreducible,
                   bootstrap_coefficient=fits.coefficient, bootstrap_decay=fits.decay)
    small_grids = few_sizes_reason(usable)

    def interval_of(usable_samples: np.ndarray, support: Support, below: np.ndarray, above: np.ndarray) -> Interval:
        samples, low_mask, high_mask = (np.full(replicates, fill) for fill in (np.nan, False, False))
        samples[located], low_mask[located], high_mask[located] = usable_samples, below, above
        interval = censored_interval(samples, low_mask, high_mask, support, confidence)
        return mark_unreliable(interval, small_grids) if small_grids else interval

    decay_samples = law.decay + law.inflation * (fits.decay - law.decay)
    decay_samples[fits.at_lower_end | fits.at_upper_end] = np.nan
    decay_interval = interval_of(decay_samples, Support(*DECAY_RANGE, "the flattest curve searched",
                                                        "the steepest curve searched"),
                                 fits.at_lower_end, fits.at_upper_end)
    none = np.zeros(fits.decay.size, dtype=bool)
    predictions = []
    for prediction, samples in zip(law.predictions, law.replicate_values(np.array(predict_budgets)).T):
        support = Support(float(samples.min()), float(samples.max()), "the lowest prediction of a usable replicate",
                          "the highest prediction of a usable replicate")
        predictions.append(PowerLawPrediction(prediction.budget, prediction.value,
                                              interval_of(samples, support, none, none)))
    return replace(law, decay_interval=decay_interval, predictions=tuple(predictions))


def fit_loss_law(group: str, optima: list[Optimum], predict_budgets: tuple[float, ...] = (),
                 confidence: float = 0.95) -> LossLawFit | PowerLawSkipped:
    """Fit L*(C) for one group through its located optima (N* fit status ``ok``) and predict at ``predict_budgets``."""
    ordered = sorted(optima, key=lambda o: o.budget)
    usable = [o for o in ordered if o.params_fit.status == "ok"]
    left_out = tuple(f"{budget_text(o.budget)} ({o.params_fit.status})" for o in ordered if o.params_fit.status != "ok")
    if len(usable) < MIN_BUDGETS_FOR_LOSS_LAW:
        reason = (f"L*(C) = E + A·C^-gamma has 3 parameters and needs at least {MIN_BUDGETS_FOR_LOSS_LAW} budgets "
                  f"with an ok optimum, has {len(usable)}")
        return PowerLawSkipped(group=group, quantity="loss", reason=reason + ("; left out: " + ", ".join(left_out)
                                                                             if left_out else ""))
    values = np.array([o.loss_opt for o in usable])
    if np.any(values <= 0):
        return PowerLawSkipped(group=group, quantity="loss", reason="L*(C) = E + A·C^-gamma with E, A >= 0 needs a "
                                                                    "positive metric at every optimum")
    budgets = [o.budget for o in usable]
    reference = reference_budget(budgets)
    x = np.log10(np.array(budgets) / reference)
    estimate = fit_curves(x, values[None, :])
    replicates = min(o.loss_opt_bootstrap.size for o in usable)
    no_interval = Interval(note=CURVE_THROUGH_THREE_POINTS if len(usable) == MIN_BUDGETS_FOR_LOSS_LAW
                           else "no bootstrap (--bootstrap 0)", confidence=confidence, replicates=replicates)
    law = LossLawFit(group=group, irreducible=float(estimate.irreducible[0]), coefficient=float(estimate.coefficient[0]),
                     decay=float(estimate.decay[0]), reference_budget=reference, budgets=tuple(budgets),
                     decay_interval=no_interval, left_out=left_out)
    law = replace(law, predictions=tuple(PowerLawPrediction(float(budget), float(law.evaluate(budget)), no_interval)
                                          for budget in predict_budgets))
    if len(usable) > MIN_BUDGETS_FOR_LOSS_LAW and replicates > 0:
        law = _with_intervals(law, usable, x, predict_budgets, confidence)
    return law
