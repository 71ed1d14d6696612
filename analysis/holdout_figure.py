"""The held-out figure: N*(C), D*(C), L*(C) fitted without one budget, its prediction there, and its own optimum.

Top row, one panel per quantity on log C (N* and D* on log axes, L* -- the
fitted metric at the optimum -- on a linear one). Per group, by colour: the
optima of the other budgets (filled: located, used by the law; open: not
located, not used) with their intervals; the law fitted on them (solid over
the budgets it was fitted on, dotted where it extrapolates) and its band at the
interval level; at the held-out budget (the dashed vertical line) the
prediction (open diamond, left) and the budget's own optimum (filled square,
right), each with its interval.

Bottom row, the held-out budget only, relative to its own optimum (N*, D*:
predicted / measured on a log axis; L*: predicted - measured), so that groups
of different sizes share an axis: per group, the prediction with its interval
(diamond, left), the verdict's interval of predicted/measured (grey, centre:
it carries both uncertainties; *consistent* when it crosses the dashed line)
and the measured optimum with its own interval (square, right). Under each
group, the verdict (:mod:`analysis.holdout`): whether the measured optimum fell
inside the prediction interval, and whether the two are consistent. Values
beyond an axis are clipped at its edge and marked, as in the other figures.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from analysis.figure_style import (FIGURE_WIDTH_INCHES, LEGEND_HEIGHT_INCHES, PANEL_HEIGHT_INCHES, STYLE,
                                   draw_interval, group_colors, interval_handles, interval_kinds, label_few_decades,
                                   log_window, plt, save)
from analysis.formatting import budget_latex
from analysis.holdout import QUANTITIES, HoldoutVerdict, QuantityVerdict
from analysis.intervals import map_bounds
from analysis.loss_law import LossLawFit
from analysis.records import Interval, Optimum, PowerLawFit

from matplotlib.lines import Line2D  # noqa: E402  (after figure_style selected the Agg backend)
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: E402

OFFSET_DECADES = 0.03
"""Prediction and measurement sit this far left and right of the held-out budget, so their bars do not overlap."""
X_MARGIN_DECADES = 0.2
SYMBOL_TEX = {"params": "$N^*$", "tokens": "$D^*$", "loss": "$L^*$"}
ZOOM_HEIGHT_INCHES = 1.9
TITLES = {"params": "Compute-optimal size N*(C)", "tokens": "Compute-optimal data D*(C)",
          "loss": "Metric at the optimum L*(C)"}


def _optimum_value(optimum: Optimum, quantity: str) -> tuple[float | None, Interval, bool]:
    """Value, interval and whether it is located (used by the laws), for N*, D* or L*."""
    if quantity == "loss":
        return optimum.loss_opt, optimum.loss_interval, optimum.params_fit.status == "ok"
    return optimum.value(quantity), optimum.interval(quantity), optimum.axis_fit(quantity).status == "ok"


def _law_curves(law: PowerLawFit | LossLawFit, budgets: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The law at ``budgets`` and its usable replicate curves (None without an interval)."""
    if isinstance(law, LossLawFit):
        replicates = law.replicate_values(budgets) if law.bootstrap_decay.size else None
        return law.evaluate(budgets), replicates
    replicates = None
    if law.bootstrap_exponent.size:
        replicates = 10.0 ** (law.bootstrap_log10_coefficient[:, None]
                              + law.bootstrap_exponent[:, None] * np.log10(budgets)[None, :])
    return law.evaluate(budgets), replicates


def _draw_law(panel: plt.Axes, law: PowerLawFit | LossLawFit, held_out: float, color: str, band: bool) -> None:
    fitted = np.logspace(np.log10(min(law.budgets)), np.log10(max(law.budgets)), 60)
    values, replicates = _law_curves(law, fitted)
    panel.plot(fitted, values, color=color, linewidth=1.4, zorder=2)
    outside = [(held_out, min(law.budgets))] if held_out < min(law.budgets) else [(max(law.budgets), held_out)]
    for start, end in outside:
        extrapolated = np.logspace(np.log10(start), np.log10(end), 30)
        panel.plot(extrapolated, _law_curves(law, extrapolated)[0], color=color, linewidth=1.4, linestyle=":", zorder=2)
    if band and replicates is not None:
        span = np.logspace(np.log10(min(min(law.budgets), held_out)), np.log10(max(max(law.budgets), held_out)), 80)
        tail = 50.0 * (1.0 - law_confidence(law))
        low, high = np.percentile(_law_curves(law, span)[1], [tail, 100.0 - tail], axis=0)
        panel.fill_between(span, low, high, color=color, alpha=0.13, linewidth=0, zorder=1)


def law_confidence(law: PowerLawFit | LossLawFit) -> float:
    return (law.decay_interval if isinstance(law, LossLawFit) else law.exponent_interval).confidence


def _window(optima: list[Optimum], verdicts: list[HoldoutVerdict], quantity: str) -> tuple[float, float]:
    """Log window for N*/D* (sampled sizes and predictions), linear window for L* (values with a margin)."""
    predicted = [q.predicted for v in verdicts for q in v.quantities if q.quantity == quantity]
    if quantity != "loss":
        sizes = [10.0**bound for o in optima for bound in (o.axis_fit(quantity).log10_min, o.axis_fit(quantity).log10_max)]
        return log_window(sizes + predicted)
    values = [o.loss_opt for o in optima if o.loss_opt is not None] + [value for value in predicted if value is not None]
    values += [end for o in optima for end in (o.loss_interval.low, o.loss_interval.high) if o.loss_interval.printable]
    low, high = min(values), max(values)
    margin = 0.08 * (high - low or abs(high) or 1.0)
    return low - margin, high + margin


def _draw_point(panel: plt.Axes, budget: float, value: float, interval: Interval, window: tuple[float, float],
                color: str, marker: str, filled: bool) -> set[str]:
    kinds = interval_kinds(interval)
    if draw_interval(panel, value, budget, interval, window, color, horizontal=False):
        kinds.add("clipped")
    shown = min(max(value, window[0]), window[1])
    panel.scatter(budget, shown, marker=marker if shown == value else ("^" if value > window[1] else "v"), s=36,
                  zorder=5, linewidths=1.2, edgecolors=color, facecolor=color if filled else "white",
                  clip_on=shown == value)
    return kinds | ({"clipped"} if shown != value else set())


def verdict_words(verdict: QuantityVerdict) -> str:
    """'inside, consistent' / 'OUTSIDE, INCONSISTENT' / 'no verdict'."""
    if verdict.inside is None:
        return "no verdict"
    words = "inside" if verdict.inside else "OUTSIDE"
    if verdict.consistent is not None:
        words += ", consistent" if verdict.consistent else ", INCONSISTENT"
    return words


def _draw_panel(panel: plt.Axes, quantity: str, optima: list[Optimum], verdicts: list[HoldoutVerdict],
                colors: dict[str, str]) -> set[str]:
    kinds: set[str] = set()
    window = _window(optima, verdicts, quantity)
    held_out = verdicts[0].budget
    panel.axvline(held_out, color="0.6", linewidth=0.8, linestyle="--", zorder=0)
    for verdict in verdicts:
        color = colors[verdict.group]
        for optimum in (o for o in optima if o.group == verdict.group and o is not verdict.measured):
            value, interval, located = _optimum_value(optimum, quantity)
            if value is not None:
                kinds |= _draw_point(panel, optimum.budget, value, interval, window, color, "o", located)
                kinds.add("used" if located else "not used")
        if verdict.prediction is not None:
            predicted = verdict.prediction.quantity(quantity)
            if predicted.value is not None:
                _draw_law(panel, predicted.law, held_out, color, band=predicted.interval.status == "ok")
                kinds |= {"law"} | ({"band"} if predicted.interval.status == "ok" else set())
                kinds |= _draw_point(panel, held_out * 10**-OFFSET_DECADES, predicted.value, predicted.interval,
                                     window, color, "D", False) | {"prediction"}
        if verdict.measured is not None:
            value, interval, _ = _optimum_value(verdict.measured, quantity)
            if value is not None:
                kinds |= _draw_point(panel, held_out * 10**OFFSET_DECADES, value, interval, window, color, "s",
                                     True) | {"measured"}
    budgets = [o.budget for o in optima] + [held_out]
    panel.set_xscale("log")
    panel.set_xlim(min(budgets) / 10**X_MARGIN_DECADES, max(budgets) * 10**X_MARGIN_DECADES)
    if quantity != "loss":
        panel.set_yscale("log")
        label_few_decades(panel.yaxis, *window)
    panel.set_ylim(*window)
    label_few_decades(panel.xaxis, *panel.get_xlim())
    return kinds


def _relative(quantity: str, measured: float) -> Callable[[float], float]:
    """Value -> value / measured (N*, D*) or value - measured (L*): the zoom row's axis."""
    if quantity == "loss":
        return lambda value: value - measured
    return lambda value: value / measured


def _zoom_entries(verdict: QuantityVerdict) -> list[tuple[float, float, Interval, str, bool]] | None:
    """(slot offset, value, interval, marker, filled) relative to the measured optimum, or None without one.

    The prediction (diamond, left), the predicted/measured interval of the verdict (grey, centre: it
    carries both uncertainties) and the measured optimum (square, right, at 1 or 0).
    """
    if verdict.predicted is None or verdict.measured is None:
        return None
    relative = _relative(verdict.quantity, verdict.measured)
    return [(-0.22, relative(verdict.predicted), map_bounds(verdict.interval, relative), "D", False),
            (0.0, relative(verdict.predicted), verdict.difference, "", True),
            (0.22, relative(verdict.measured), map_bounds(verdict.measured_interval, relative), "s", True)]


def _zoom_window(entries: list[tuple[float, float, Interval, str, bool]], log_scale: bool) -> tuple[float, float]:
    """The range of the relative values and their intervals, and agreement (1 or 0), with a margin."""
    ends = [1.0 if log_scale else 0.0] + [end for _, value, interval, _, _ in entries
                                          for end in (value, interval.low, interval.high)]
    ends = [end for end in ends if end is not None and np.isfinite(end) and (end > 0 or not log_scale)]
    if log_scale:
        low, high = np.log10(min(ends)), np.log10(max(ends))
        margin = 0.12 * (high - low) or 0.01
        return 10.0 ** (low - margin), 10.0 ** (high + margin)
    margin = 0.12 * (max(ends) - min(ends)) or 0.01
    return min(ends) - margin, max(ends) + margin


def _draw_zoom(panel: plt.Axes, quantity: str, verdicts: list[HoldoutVerdict], colors: dict[str, str]) -> set[str]:
    """Per group, at the held-out budget: prediction, the verdict's interval and the measured optimum, all
    relative to the measured optimum (module docstring); the verdict words under the group's name."""
    verdicts_here = [(v.group, q) for v in verdicts for q in v.quantities if q.quantity == quantity]
    entries = {group: _zoom_entries(q) for group, q in verdicts_here}
    log_scale = quantity != "loss"
    window = _zoom_window([entry for group_entries in entries.values() if group_entries for entry in group_entries],
                          log_scale)
    if log_scale:
        panel.set_yscale("log")
    panel.axhline(1.0 if log_scale else 0.0, color="0.5", linewidth=0.8, linestyle="--", zorder=0)
    kinds: set[str] = set()
    for slot, (group, _) in enumerate(verdicts_here):
        for offset, value, interval, marker, filled in entries[group] or []:
            if marker:
                kinds |= _draw_point(panel, slot + offset, value, interval, window, colors[group], marker, filled)
            elif draw_interval(panel, value, slot + offset, interval, window, "0.35", horizontal=False):
                kinds.add("clipped")
    panel.set_ylim(*window)
    if log_scale:
        decades = float(np.log10(window[1] / window[0]))  # fewer ticks per decade the more decades: no overlap
        subs = (1.0, 1.25, 1.6, 2.0, 2.5, 3.2, 4.0, 5.0, 6.3, 8.0) if decades < 0.6 else (
            (1.0, 2.0, 5.0) if decades < 1.5 else (1.0, 3.0) if decades < 3.0 else (1.0,))
        panel.yaxis.set_major_locator(LogLocator(subs=subs))
        panel.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        panel.yaxis.set_minor_formatter(NullFormatter())
    panel.set_xlim(-0.6, len(verdicts_here) - 0.4)
    panel.set_xticks(range(len(verdicts_here)),
                     ["\n".join(([group] if len(verdicts_here) > 1 else []) + verdict_words(q).split(", "))
                      for group, q in verdicts_here], fontsize=7)
    panel.grid(False, axis="x")
    panel.set_ylabel("predicted / measured" if log_scale else "predicted − measured", fontsize=8)
    panel.set_title(f"{SYMBOL_TEX[quantity]} at C = {budget_latex(verdicts[0].budget)}, vs its own fit", fontsize=8)
    return kinds | {"difference"}


def _legend_handles(kinds: set[str], confidence: float, colors: dict[str, str]) -> list[Line2D]:
    entries = [("used", dict(marker="o"), "optimum of another budget (fitted)"),
               ("not used", dict(marker="o", markerfacecolor="white"), "optimum not located (not fitted)"),
               ("law", dict(linestyle="-", marker=None), "law fitted without C (dotted: extrapolated)"),
               ("prediction", dict(marker="D", markerfacecolor="white"), "prediction at the held-out C"),
               ("measured", dict(marker="s"), "held-out C's own optimum"),
               ("difference", dict(marker="|", markersize=9, markeredgewidth=1.6, color="0.35"),
                "predicted/measured (− for L*): both intervals")]
    handles = [Line2D([], [], **({"color": "0.3", "linestyle": "none"} | style), label=label)
               for kind, style, label in entries if kind in kinds]
    handles += interval_handles(confidence, kinds)
    if "band" in kinds:
        handles.append(Line2D([], [], color="0.3", alpha=0.3, linewidth=8, label=f"{confidence:.0%} band of the law"))
    if len(colors) > 1:
        handles += [Line2D([], [], color=color, linewidth=3, label=group) for group, color in colors.items()]
    return handles


def holdout_figure(optima: list[Optimum], verdicts: list[HoldoutVerdict], value_label: str, params_kind: str = "",
                   confidence: float = 0.95) -> plt.Figure:
    """The held-out figure (module docstring), open for inspection; :func:`plot_holdout` saves it."""
    colors = group_colors([v.group for v in verdicts])
    kind = f" ({params_kind})" if params_kind else ""
    labels = {"params": f"Optimal parameters N*{kind}", "tokens": "Optimal training tokens D*",
              "loss": f"{value_label} at the optimum"}
    kinds: set[str] = set()
    with plt.rc_context(STYLE):
        figure, panels = plt.subplots(2, 3, figsize=(FIGURE_WIDTH_INCHES, PANEL_HEIGHT_INCHES + ZOOM_HEIGHT_INCHES
                                                     + LEGEND_HEIGHT_INCHES),
                                      height_ratios=(PANEL_HEIGHT_INCHES, ZOOM_HEIGHT_INCHES), layout="constrained")
        for column, quantity in enumerate(QUANTITIES):
            panel, zoom = panels[0, column], panels[1, column]
            kinds |= _draw_panel(panel, quantity, optima, verdicts, colors)
            panel.set_title(TITLES[quantity])
            panel.set_ylabel(labels[quantity])
            panel.set_xlabel("Training compute C (FLOPs)")
            kinds |= _draw_zoom(zoom, quantity, verdicts, colors)
        figure.suptitle(f"Held-out budget C = {budget_latex(verdicts[0].budget)} (dashed line): predicted from the "
                        "other budgets, then measured")
        figure.legend(handles=_legend_handles(kinds, confidence, colors), loc="outside lower center", ncols=3,
                      frameon=False, fontsize=7)
    return figure


def plot_holdout(optima: list[Optimum], verdicts: list[HoldoutVerdict], stem: Path, value_label: str,
                 params_kind: str = "", confidence: float = 0.95) -> list[Path]:
    """Write the held-out figure as ``stem``.png and .pdf; returns the paths (arguments as :func:`holdout_figure`)."""
    figure = holdout_figure(optima, verdicts, value_label, params_kind, confidence)
    with plt.rc_context(STYLE):
        return save(figure, stem)
