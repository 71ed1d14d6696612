"""Predict, then verify: a budget's optimum predicted from the other budgets, and compared with its own fit.

:func:`predict_optimum` is the prediction alone: given one group's optima at the
budgets seen so far, N*(C) and D*(C) (power laws, :mod:`analysis.powerlaw`) and
L*(C) (E + A·C^-gamma, :mod:`analysis.loss_law`) fitted through them give N*,
D*, L* at a new budget, with the bootstrap intervals of those laws (the
intervals carry the fitted optima's own uncertainty: every replicate refits the
law through every budget's replicate optimum). How many budgets it needs, in
located optima (fit status ``ok``):

- fewer than :data:`MIN_BUDGETS_TO_PREDICT` (2): nothing to fit, None;
- 2: N* and D* on the line through both optima, without intervals; no L*
  (three parameters);
- 3: N* and D* with intervals; L* on the curve through the three optima,
  without an interval;
- 4 or more: everything with intervals.

:func:`holdout_verdicts` is the check (``isoflop analyze --holdout-budget C``):
per group, predict C from every other budget, then compare with C's own
isoFLOP fit. Two questions, per quantity:

- ``inside``: does the measured optimum lie inside the prediction interval?
  The interval covers the true optimum at its stated level; the measured one
  also carries its own noise, so a correct law puts it inside somewhat less
  often than the level says.
- ``consistent``: does the interval of predicted / measured (predicted -
  measured for L*) contain 1 (0)? Replicate predictions and the held-out
  budget's own replicate optima are independent bootstrap draws; their
  pairwise differences give that interval, which carries both uncertainties.
  This is the fair test: a correct law is called inconsistent at the rate
  1 - level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.fits import censored_vertices
from analysis.formatting import budget_text
from analysis.intervals import Support, censored_interval, map_bounds, small_sample_expansion
from analysis.loss_law import LossLawFit, fit_loss_law
from analysis.powerlaw import fit_power_law, pooled_expansion, residual_degrees_of_freedom
from analysis.records import Interval, Optimum, PowerLawFit, PowerLawSkipped

MIN_BUDGETS_TO_PREDICT = 2
"""Located optima a prediction needs: N*(C) and D*(C) are lines in log-log (without an interval through two)."""
MIN_BUDGETS_FOR_VERDICT = 3
"""Other budgets ``--holdout-budget`` needs: a prediction interval needs a line through three optima."""
QUANTITIES = ("params", "tokens", "loss")
SYMBOLS = {"params": "N*", "tokens": "D*", "loss": "L*"}
BUDGET_TOLERANCE = 1e-6
"""Relative difference below which two budgets (FLOPs) are the same budget."""


def same_budget(first: float, second: float) -> bool:
    return bool(np.isclose(first, second, rtol=BUDGET_TOLERANCE, atol=0.0))


@dataclass(frozen=True)
class QuantityPrediction:
    """N*, D* (``value`` in params or tokens) or L* (the metric) predicted at a budget, with the law behind it.

    ``replicates``: the usable replicate predictions, log10 for N* and D*, metric units for L*,
    widened by the Birge factor but not by Student's correction for the ``degrees_of_freedom``
    of the residuals they rest on (:func:`analysis.powerlaw.pooled_expansion`);
    ``replicate_count`` counts the replicates drawn, usable or not.
    """

    quantity: str
    value: float | None
    interval: Interval
    law: PowerLawFit | LossLawFit | PowerLawSkipped
    replicates: np.ndarray
    replicate_count: int
    degrees_of_freedom: int

    @property
    def note(self) -> str:
        """Why there is no value or no interval ('' when both are there)."""
        if isinstance(self.law, PowerLawSkipped):
            return self.law.reason
        return "" if self.interval.printable else self.interval.note


@dataclass(frozen=True)
class OptimumPrediction:
    """One group's N*, D*, L* predicted at ``budget`` (FLOPs) from its optima at ``budgets_given``."""

    group: str
    budget: float
    budgets_given: tuple[float, ...]
    params: QuantityPrediction
    tokens: QuantityPrediction
    loss: QuantityPrediction

    def quantity(self, name: str) -> QuantityPrediction:
        return {"params": self.params, "tokens": self.tokens, "loss": self.loss}[name]


def _prediction(quantity: str, law: PowerLawFit | LossLawFit | PowerLawSkipped, optima: list[Optimum], budget: float,
                confidence: float) -> QuantityPrediction:
    if isinstance(law, PowerLawSkipped):
        return QuantityPrediction(quantity, None, Interval(note=law.reason, confidence=confidence), law, np.empty(0), 0, 0)
    prediction = law.predictions[0]
    used = [o for o in optima if any(same_budget(o.budget, fitted) for fitted in law.budgets)]
    if isinstance(law, LossLawFit):
        center = prediction.value
        widened = law.replicate_values(np.array([budget]))[:, 0] if law.bootstrap_decay.size else np.empty(0)
    else:
        center = float(np.log10(prediction.value))
        widened = law.bootstrap_log10_coefficient + law.bootstrap_exponent * np.log10(budget)
    replicates = center + (widened - center) / pooled_expansion(used, confidence)
    return QuantityPrediction(quantity, prediction.value, prediction.interval, law, replicates,
                              prediction.interval.replicates, residual_degrees_of_freedom(used))


def predict_optimum(optima: list[Optimum], budget: float, confidence: float = 0.95) -> OptimumPrediction | None:
    """N*, D*, L* at ``budget`` FLOPs from one group's optima at other budgets, or None with fewer than
    :data:`MIN_BUDGETS_TO_PREDICT` located optima (see the module docstring for what each count gives).

    Args:
        optima: one group's optima (:func:`analysis.fits.fit_all_optima`); any status, only ``ok`` ones are used.
        budget: the budget to predict, in FLOPs.
        confidence: interval level, e.g. 0.95.
    """
    groups = {o.group for o in optima}
    if len(groups) > 1:
        raise ValueError(f"predict_optimum takes one group's optima, got {sorted(groups)}")
    if sum(o.params_fit.status == "ok" for o in optima) < MIN_BUDGETS_TO_PREDICT:
        return None
    group = groups.pop()
    laws = {quantity: fit_power_law(group, optima, quantity, (budget,), confidence) for quantity in ("params", "tokens")}
    laws["loss"] = fit_loss_law(group, optima, (budget,), confidence)
    return OptimumPrediction(group=group, budget=float(budget), budgets_given=tuple(sorted(o.budget for o in optima)),
                             **{quantity: _prediction(quantity, laws[quantity], optima, budget, confidence)
                                for quantity in QUANTITIES})


@dataclass(frozen=True)
class QuantityVerdict:
    """Predicted vs measured for one quantity at the held-out budget (module docstring).

    ``difference``: interval of predicted / measured for N* and D*, of predicted - measured for L*.
    ``inside`` and ``consistent`` are None when a value or an interval is missing (``note`` says why).
    """

    quantity: str
    predicted: float | None
    interval: Interval
    measured: float | None
    measured_interval: Interval
    measured_status: str
    difference: Interval
    inside: bool | None
    consistent: bool | None
    note: str

    @property
    def agreement(self) -> float:
        """Where ``consistent`` is decided: 1 for a ratio, 0 for a difference."""
        return 0.0 if self.quantity == "loss" else 1.0


@dataclass(frozen=True)
class HoldoutVerdict:
    """One group's held-out check: its prediction (None when too few budgets) and a verdict per quantity."""

    group: str
    budget: float
    prediction: OptimumPrediction | None
    measured: Optimum | None
    quantities: tuple[QuantityVerdict, ...]
    confidence: float
    note: str = ""


def _measured_replicates(optimum: Optimum, quantity: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The held-out budget's replicate optima as censored samples, not widened (see :func:`_difference`)."""
    fit = optimum.axis_fit("params" if quantity == "loss" else quantity)
    replicate_log10 = optimum.bootstrap_log10("params" if quantity == "loss" else quantity)
    samples, below, above = censored_vertices(fit, replicate_log10, expansion_factor=1.0)
    if quantity == "loss":  # L* at a vertex beyond the sizes is unknown, not censored: left out
        not_censored = np.zeros_like(below)
        return np.where(np.isfinite(samples), optimum.loss_opt_bootstrap, np.nan), not_censored, not_censored
    return samples, below, above


def _difference(predicted: QuantityPrediction, optimum: Optimum, confidence: float) -> Interval:
    """Interval of predicted - measured over independent pairs of replicates (log10 for N* and D*).

    Both sides' replicates rest on estimated noise scales: the law's on the other budgets'
    residuals (nu_p degrees of freedom), the held-out budget's on its own (nu_m = runs - 3). The
    pairwise differences are widened once, by Student's t / z at the Welch-Satterthwaite degrees
    of freedom (V_p + V_m)^2 / (V_p^2 / nu_p + V_m^2 / nu_m) of their replicate variances, so a
    held-out budget with few runs counts with its few degrees of freedom. (Widening each side for
    its own tails overstates the tails of the difference: a correct law was then called
    consistent 98% of the time at 95% on synthetic data; tests/test_analysis_holdout.py measures
    the rate.)
    """
    measured, below, above = _measured_replicates(optimum, predicted.quantity)
    count = min(predicted.replicate_count, measured.size)
    predictions = np.full(count, np.nan)
    predictions[:min(count, predicted.replicates.size)] = predicted.replicates[:count]
    measured, below, above = measured[:count], below[:count], above[:count]
    usable_prediction, usable_measured = np.isfinite(predictions), np.isfinite(measured)
    if not (usable_prediction.sum() > 1 and usable_measured.sum() > 1):
        return Interval(note="too few replicates locate both optima", confidence=confidence, replicates=count)
    variances = float(np.var(predictions[usable_prediction])), float(np.var(measured[usable_measured]))
    degrees = predicted.degrees_of_freedom, optimum.n_points - 3
    welch = sum(variances) ** 2 / sum(variance**2 / max(degree, 1) for variance, degree in zip(variances, degrees))
    factor = small_sample_expansion(max(1, round(welch)), confidence) if np.isfinite(welch) else 1.0
    center = predicted.value - optimum.loss_opt if predicted.quantity == "loss" else float(
        np.log10(predicted.value / optimum.value(predicted.quantity)))
    differences = center + factor * ((predictions - measured) - center)
    finite = differences[np.isfinite(differences)]
    support = Support(float(finite.min()), float(finite.max()), "the smallest difference of a usable pair",
                      "the largest difference of a usable pair")
    interval = censored_interval(differences, usable_prediction & above, usable_prediction & below, support, confidence)
    return interval if predicted.quantity == "loss" else map_bounds(interval, lambda value: 10.0**value)


def _verdict(predicted: QuantityPrediction, optimum: Optimum | None, confidence: float) -> QuantityVerdict:
    quantity = predicted.quantity
    no_interval = Interval(confidence=confidence)
    if optimum is None:
        measured, measured_interval, status = None, no_interval, "no runs"
    elif quantity == "loss":
        measured, measured_interval, status = optimum.loss_opt, optimum.loss_interval, optimum.params_fit.status
    else:
        measured, measured_interval = optimum.value(quantity), optimum.interval(quantity)
        status = optimum.axis_fit(quantity).status
    notes = [predicted.note] if predicted.note else []
    if status != "ok":
        notes.append("no runs at the held-out budget" if optimum is None
                     else f"the held-out budget's own optimum is not located ({status})")
    inside = consistent = None
    difference = Interval(note="; ".join(notes), confidence=confidence)
    if not notes:
        inside = bool(predicted.interval.low <= measured <= predicted.interval.high)
        difference = _difference(predicted, optimum, confidence)
        if difference.printable:
            consistent = bool(difference.low <= (0.0 if quantity == "loss" else 1.0) <= difference.high)
    return QuantityVerdict(quantity=quantity, predicted=predicted.value, interval=predicted.interval, measured=measured,
                           measured_interval=measured_interval, measured_status=status, difference=difference,
                           inside=inside, consistent=consistent, note="; ".join(notes))


def holdout_verdicts(optima: list[Optimum], budget: float, confidence: float = 0.95) -> list[HoldoutVerdict]:
    """Per group: predict ``budget`` (FLOPs) from every other budget's optimum and compare with its own."""
    verdicts = []
    for group in sorted({o.group for o in optima}):
        group_optima = [o for o in optima if o.group == group]
        others = [o for o in group_optima if not same_budget(o.budget, budget)]
        measured = next((o for o in group_optima if same_budget(o.budget, budget)), None)
        prediction = predict_optimum(others, budget, confidence) if others else None
        if prediction is None:
            located = sum(o.params_fit.status == "ok" for o in others)
            note = (f"{located} other budget(s) with an ok optimum; a prediction needs at least "
                    f"{MIN_BUDGETS_TO_PREDICT}")
            verdicts.append(HoldoutVerdict(group, budget, None, measured, (), confidence, note))
            continue
        quantities = tuple(_verdict(prediction.quantity(quantity), measured, confidence) for quantity in QUANTITIES)
        verdicts.append(HoldoutVerdict(group, budget, prediction, measured, quantities, confidence))
    return verdicts


def held_out_budget(budgets: list[float], requested: float) -> float:
    """The data's budget equal to ``requested`` (FLOPs); UserError when it is absent or leaves too few others."""
    from isoflop.errors import UserError

    present = sorted({float(budget) for budget in budgets})
    match = next((budget for budget in present if same_budget(budget, requested)), None)
    listed = ", ".join(budget_text(budget) for budget in present)
    if match is None:
        raise UserError(f"--holdout-budget {budget_text(requested)} is not a budget of the data ({listed}); "
                        "pass one of them")
    if len(present) - 1 < MIN_BUDGETS_FOR_VERDICT:
        raise UserError(f"--holdout-budget {budget_text(requested)} leaves {len(present) - 1} other budget(s); a "
                        f"prediction interval needs at least {MIN_BUDGETS_FOR_VERDICT} (add budgets, or use --predict "
                        "for a prediction without a verdict)")
    return match
