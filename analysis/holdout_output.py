"""What ``--holdout-budget`` writes: rows of optima.csv and powerlaws.csv, holdout.json, the report's section.

The verdicts come from :func:`analysis.holdout.holdout_verdicts`; the figure is
:mod:`analysis.holdout_figure`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from analysis.formatting import budget_text, interval_text
from analysis.holdout import QUANTITIES, SYMBOLS, HoldoutVerdict, QuantityVerdict
from analysis.loss_law import LossLawFit
from analysis.powerlaw import power_law_table
from analysis.records import Interval, PowerLawFit, PowerLawSkipped
from analysis.tables import to_markdown

HOLDOUT_ROWS = {"fit": "holdout_fit", "prediction": "holdout_prediction", "skipped": "holdout_skipped"}
"""powerlaws.csv row kinds of the laws fitted without the held-out budget."""


def _bounds(interval: Interval) -> list[float] | None:
    return [interval.low, interval.high] if interval.printable else None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _worst(intervals: list[Interval]) -> Interval:
    return max(intervals, key=lambda interval: ("ok", "unreliable", "none").index(interval.status))


def optima_rows(verdicts: list[HoldoutVerdict], metric: str) -> pd.DataFrame:
    """optima.csv rows (``row = holdout_prediction``) with the predicted N*, D*, L* at the held-out budget."""
    rows = []
    for verdict in verdicts:
        if verdict.prediction is None:
            continue
        params, tokens, loss = (verdict.prediction.quantity(quantity) for quantity in QUANTITIES)
        worst = _worst([params.interval, tokens.interval, loss.interval])
        notes = dict.fromkeys(q.note for q in (params, tokens, loss) if q.note)
        rows.append(dict(method=verdict.group, budget=verdict.budget, n_opt=params.value, n_opt_lo=params.interval.low,
                         n_opt_hi=params.interval.high, d_opt=tokens.value, d_opt_lo=tokens.interval.low,
                         d_opt_hi=tokens.interval.high, loss_opt=loss.value, loss_opt_lo=loss.interval.low,
                         loss_opt_hi=loss.interval.high, interval=worst.status, interval_note="; ".join(notes),
                         confidence=params.interval.confidence, replicates=params.replicate_count,
                         n_opt_usable=params.interval.usable, d_opt_usable=tokens.interval.usable, metric=metric,
                         row=HOLDOUT_ROWS["prediction"],
                         predicted_from=" ".join(budget_text(b) for b in verdict.prediction.budgets_given)))
    return pd.DataFrame(rows)


def with_optima_rows(optima_frame: pd.DataFrame, verdicts: list[HoldoutVerdict], metric: str) -> pd.DataFrame:
    """optima.csv with the prediction rows appended (``row`` is ``fit`` for the budgets' own optima)."""
    if not verdicts:
        return optima_frame
    frame = pd.concat([optima_frame.assign(row="fit"), optima_rows(verdicts, metric)], ignore_index=True)
    for column in ("replicates", "n_opt_usable", "d_opt_usable"):
        frame[column] = frame[column].astype("Int64")
    return frame


def _loss_law_rows(law: LossLawFit | PowerLawSkipped) -> list[dict[str, object]]:
    if isinstance(law, PowerLawSkipped):
        return [dict(row="skipped", method=law.group, quantity="loss", note=law.reason)]
    interval = law.decay_interval
    rows = [dict(row="fit", method=law.group, quantity="loss", coefficient=law.coefficient, exponent=-law.decay,
                 exponent_lo=-interval.high, exponent_hi=-interval.low, irreducible=law.irreducible,
                 reference_budget=law.reference_budget, n_budgets=law.n_budgets, interval=interval.status,
                 confidence=interval.confidence, replicates=interval.replicates, replicates_usable=interval.usable,
                 scatter_ratio=law.scatter_ratio, note=interval.note)]
    for prediction in law.predictions:
        rows.append(dict(row="prediction", method=law.group, quantity="loss", budget=prediction.budget,
                         predicted=prediction.value, predicted_lo=prediction.interval.low,
                         predicted_hi=prediction.interval.high, interval=prediction.interval.status,
                         note=prediction.interval.note))
    return rows


def law_rows(verdicts: list[HoldoutVerdict]) -> pd.DataFrame:
    """powerlaws.csv rows of the laws fitted without the held-out budget (see :data:`HOLDOUT_ROWS`).

    ``held_out`` is the budget left out; prediction rows add the measured optimum (``measured``,
    ``measured_lo``, ``measured_hi``) and the verdict (``inside``, ``consistent``). The loss law's
    fit row reads L*(C) = irreducible + coefficient·(C / reference_budget)^exponent.
    """
    frames = []
    for verdict in verdicts:
        if verdict.prediction is None:
            continue
        laws = [verdict.prediction.quantity(quantity).law for quantity in ("params", "tokens")]
        frame = pd.concat([power_law_table(laws), pd.DataFrame(_loss_law_rows(verdict.prediction.loss.law))],
                          ignore_index=True)
        frame["row"] = frame["row"].map(HOLDOUT_ROWS)
        frame["held_out"] = verdict.budget
        for quantity_verdict in verdict.quantities:
            at = (frame["row"] == HOLDOUT_ROWS["prediction"]) & (frame["quantity"] == quantity_verdict.quantity)
            measured = quantity_verdict.measured_interval
            frame.loc[at, ["measured", "measured_lo", "measured_hi"]] = [quantity_verdict.measured, measured.low,
                                                                          measured.high]
            frame.loc[at, "inside"] = quantity_verdict.inside
            frame.loc[at, "consistent"] = quantity_verdict.consistent
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def with_law_rows(laws_frame: pd.DataFrame, verdicts: list[HoldoutVerdict]) -> pd.DataFrame:
    """powerlaws.csv with the held-out rows appended."""
    extra = law_rows(verdicts)
    if extra.empty:
        return laws_frame
    frame = pd.concat([laws_frame, extra], ignore_index=True)
    for column in ("n_budgets", "replicates", "replicates_usable"):
        frame[column] = frame[column].astype("Int64")
    return frame


def _quantity_document(verdict: QuantityVerdict, law: PowerLawFit | LossLawFit | PowerLawSkipped) -> dict[str, object]:
    ratio_or_difference = "predicted_minus_measured" if verdict.quantity == "loss" else "predicted_over_measured"
    return {
        "predicted": _finite(verdict.predicted), "interval": _bounds(verdict.interval),
        "interval_status": verdict.interval.status, "interval_note": verdict.interval.note,
        "measured": _finite(verdict.measured), "measured_interval": _bounds(verdict.measured_interval),
        "measured_interval_status": verdict.measured_interval.status, "measured_status": verdict.measured_status,
        "inside": verdict.inside, ratio_or_difference: _bounds(verdict.difference), "consistent": verdict.consistent,
        "budgets_used": [] if isinstance(law, PowerLawSkipped) else list(law.budgets), "note": verdict.note,
    }


def verdict_document(verdicts: list[HoldoutVerdict], metric: str, confidence: float) -> dict[str, object]:
    """The content of holdout.json (README, Analysis): per method and quantity, predicted vs measured."""
    methods = {}
    for verdict in verdicts:
        entry: dict[str, object] = {"note": verdict.note, "budgets_given": [], "quantities": {}}
        if verdict.prediction is not None:
            entry["budgets_given"] = list(verdict.prediction.budgets_given)
            entry["quantities"] = {q.quantity: _quantity_document(q, verdict.prediction.quantity(q.quantity).law)
                                   for q in verdict.quantities}
        methods[verdict.group] = entry
    budget = verdicts[0].budget if verdicts else None
    return {"held_out_budget": budget, "confidence": confidence, "metric": metric, "methods": methods}


def write_verdicts(verdicts: list[HoldoutVerdict], metric: str, confidence: float, path: Path) -> None:
    """Write holdout.json (strict JSON: a missing number is null)."""
    path.write_text(json.dumps(verdict_document(verdicts, metric, confidence), indent=2, allow_nan=False) + "\n")


def _yes_no(value: bool | None) -> str:
    return "–" if value is None else ("yes" if value else "**no**")


def _cell(value: float | None, interval: Interval) -> tuple[str, str]:
    shown = "–" if value is None else f"{value:.4g}"
    return shown, interval_text(interval.low, interval.high, marked=interval.status == "unreliable")


def law_text(law: PowerLawFit | LossLawFit | PowerLawSkipped) -> str:
    """'N* = 0.12·C^0.497' or 'L* = 1.69 + 1.3·(C/1e19)^-0.154' ('' when skipped)."""
    if isinstance(law, LossLawFit):
        return (f"L* = {law.irreducible:.4g} + {law.coefficient:.4g}·(C/{budget_text(law.reference_budget)})"
                f"^-{law.decay:.3f}")
    if isinstance(law, PowerLawFit):
        return f"{SYMBOLS[law.quantity]} = {law.coefficient:.3g}·C^{law.exponent:.4f}"
    return ""


def _sentence(verdict: QuantityVerdict) -> str:
    symbol = SYMBOLS[verdict.quantity]
    if verdict.inside is None:
        return f"{symbol}: no verdict ({verdict.note})"
    where = "inside" if verdict.inside else "**outside**"
    agreement = {True: "consistent", False: "**inconsistent**", None: "consistency not decided"}[verdict.consistent]
    return (f"{symbol} measured {verdict.measured:.4g}, {where} the predicted "
            f"{interval_text(verdict.interval.low, verdict.interval.high)}; {agreement}")


def holdout_section(verdicts: list[HoldoutVerdict]) -> list[str]:
    """The report's section on the held-out budget (empty without ``--holdout-budget``)."""
    if not verdicts:
        return []
    budget = budget_text(verdicts[0].budget)
    level = verdicts[0].confidence
    lines = [f"## Held-out budget C = {budget}: predicted from the other budgets, then measured (holdout.json)", "",
             (f"Per group, N\\*(C) and D\\*(C) (power laws) and L\\*(C) = E + A·(C/C_ref)^-γ (the metric at the "
             f"optimum; E is the irreducible part, the form Hoffmann et al. 2022's Eq. 2 and 4 imply) are fitted on "
             f"every budget except {budget}. Their {level:.0%} bootstrap intervals carry every fitted optimum's "
             f"uncertainty and cover the true optimum at that rate. *inside*: {budget}'s own isoFLOP optimum lies "
             "inside the prediction interval; it carries its own noise too, so a correct law puts it inside less "
             f"often than {level:.0%}. *consistent*: the {level:.0%} interval of predicted/measured (predicted − "
             "measured for L\\*), which carries both uncertainties, contains 1 (0); a correct law fails it "
             f"{1 - level:.0%} of the time."), ""]
    rows = []
    for verdict in verdicts:
        for quantity in verdict.quantities:
            predicted, interval = _cell(quantity.predicted, quantity.interval)
            measured, measured_interval = _cell(quantity.measured, quantity.measured_interval)
            difference = quantity.difference
            rows.append({"group": verdict.group, "quantity": SYMBOLS[quantity.quantity], "predicted": predicted,
                         f"{level:.0%} interval": interval, "measured": measured,
                         f"measured {level:.0%} interval": measured_interval, "inside": _yes_no(quantity.inside),
                         "predicted/measured (− for L*)": interval_text(difference.low, difference.high,
                                                                         marked=difference.status == "unreliable"),
                         "consistent": _yes_no(quantity.consistent)})
    if rows:
        lines += [to_markdown(pd.DataFrame(rows))]
    for verdict in verdicts:
        if verdict.prediction is None:
            lines.append(f"- **{verdict.group}**: no prediction: {verdict.note}.")
            continue
        laws = [law_text(verdict.prediction.quantity(quantity).law) for quantity in QUANTITIES]
        given = ", ".join(budget_text(b) for b in verdict.prediction.budgets_given)
        lines.append(f"- **{verdict.group}** (from {given}: {'; '.join(law for law in laws if law)}): "
                     + "; ".join(_sentence(quantity) for quantity in verdict.quantities) + ".")
    lines += ["", ("A law that predicts a budget it did not see, within both intervals, is evidence that it extrapolates "
              "one step; a prediction further out (`--predict`) widens with the distance in log C and assumes the law "
              "still holds there. An inconsistent quantity says the law bends, or an off-centre grid biases the "
              "optima: a larger budget's prediction would likely be off in the same direction."), ""]
    return lines


def summary_lines(verdicts: list[HoldoutVerdict]) -> list[str]:
    """A few lines for stdout: the verdict per group and quantity."""
    lines = []
    for verdict in verdicts:
        if verdict.prediction is None:
            lines.append(f"  holdout C={budget_text(verdict.budget)} {verdict.group}: no prediction ({verdict.note})")
            continue
        parts = []
        for quantity in verdict.quantities:
            state = ("no verdict" if quantity.inside is None else
                     f"{'inside' if quantity.inside else 'OUTSIDE'}"
                     f"{'' if quantity.consistent is None else ', consistent' if quantity.consistent else ', INCONSISTENT'}")
            parts.append(f"{SYMBOLS[quantity.quantity]} {state}")
        lines.append(f"  holdout C={budget_text(verdict.budget)} {verdict.group}: " + "; ".join(parts))
    return lines


def write_holdout(optima: list, verdicts: list[HoldoutVerdict], out_dir: Path, value_label: str, params_kind: str,
                  metric: str, confidence: float) -> dict[str, str]:
    """holdout.json and the held-out figure into ``out_dir`` (nothing without verdicts); returns PNG name → caption."""
    if not verdicts:
        return {}
    from analysis.holdout_figure import plot_holdout

    write_verdicts(verdicts, metric, confidence, out_dir / "holdout.json")
    plot_holdout(optima, verdicts, out_dir / "holdout", value_label, params_kind, confidence)
    return {"holdout.png": f"Held-out budget {budget_text(verdicts[0].budget)}: N*, D*, L* predicted from the other "
                           "budgets (diamonds, with the laws) against its own fit (squares)"}
