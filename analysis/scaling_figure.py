"""The scaling figure: compute-optimal N*(C) and D*(C) with their power laws (Hoffmann et al. 2022, Fig. 3).

Two panels (parameters, tokens) on log-log axes, groups by colour. Filled
circles are optima located inside the sampled sizes (they make the power law);
open circles are extrapolated vertices, shown but not used. Bars are the
optima's bootstrap intervals (dashed when unreliable); the shaded band is the
power law's bootstrap band at the same level (drawn only when its interval is
reliable). A power law through two budgets is a dashed line through two points,
with no interval. The y axis covers the sampled sizes (and predictions) with a
margin: an optimum or an interval beyond it is clipped at the edge and marked.
Legend entries carry the fitted law and its exponent's interval, below the panels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from analysis.figure_style import (FIGURE_WIDTH_INCHES, LEGEND_HEIGHT_INCHES, PANEL_HEIGHT_INCHES, STYLE,
                                   draw_interval, group_colors, interval_handles, interval_kinds, label_few_decades,
                                   log_window, plt, save)
from analysis.records import Axis, Optimum, PowerLawFit

from matplotlib.lines import Line2D  # noqa: E402  (after figure_style selected the Agg backend)

SYMBOLS = {"params": "N^*", "tokens": "D^*"}


def law_label(law: PowerLawFit) -> str:
    """'dense: N* = 0.557 C^0.463, exponent 95% CI [0.43, 0.50]' in mathtext."""
    label = rf"{law.group}: ${SYMBOLS[law.quantity]} = {law.coefficient:.3g}\,C^{{{law.exponent:.3f}}}$"
    interval = law.exponent_interval
    if law.through_two_points:
        return label + " (line through 2 budgets, no interval)"
    if interval.printable:
        label += f", exponent {interval.confidence:.0%} CI [{interval.low:.3f}, {interval.high:.3f}]"
        if interval.status == "unreliable":
            label += " (unreliable)"
    return label


def _window(optima: list[Optimum], quantity: Axis, predictions: list[float]) -> tuple[float, float]:
    """The y window: every group's sampled sizes at every budget, and the predictions."""
    sizes = []
    for optimum in optima:
        fit = optimum.axis_fit(quantity)
        sizes += [10.0**fit.log10_min, 10.0**fit.log10_max]
    return log_window(sizes + predictions)


def _draw_optima(panel: plt.Axes, optima: list[Optimum], quantity: Axis, color: str,
                 window: tuple[float, float]) -> set[str]:
    kinds: set[str] = set()
    for optimum in optima:
        value = optimum.value(quantity)
        if value is None:
            continue
        located = optimum.axis_fit(quantity).status == "ok"
        kinds.add("located" if located else "extrapolated")
        if draw_interval(panel, value, optimum.budget, optimum.interval(quantity), window, color, horizontal=False):
            kinds.add("clipped")
        kinds |= interval_kinds(optimum.interval(quantity))
        shown = min(max(value, window[0]), window[1])
        if shown != value:
            kinds.add("clipped")
        marker = "o" if shown == value else ("^" if value > window[1] else "v")
        panel.scatter(optimum.budget, shown, marker=marker, s=34, zorder=5, linewidths=1.2, edgecolors=color,
                      facecolor=color if located else "white", clip_on=shown == value)
    return kinds


def _draw_law(panel: plt.Axes, law: PowerLawFit, color: str, predict_budgets: tuple[float, ...],
              annotate: bool) -> None:
    """The fitted line (dashed through two points), its band when reliable, and predictions (with their
    values written beside them when ``annotate``)."""
    budgets = law.budgets + predict_budgets
    budget_grid = np.logspace(np.log10(min(budgets)) - 0.1, np.log10(max(budgets)) + 0.1, 100)
    panel.plot(budget_grid, law.evaluate(budget_grid), color=color, linewidth=1.5, zorder=2,
               linestyle="--" if law.through_two_points else "-", label=law_label(law))
    interval = law.exponent_interval
    if interval.status == "ok" and law.bootstrap_exponent.size:
        tail = 50.0 * (1.0 - interval.confidence)
        curves = law.bootstrap_log10_coefficient[:, None] + law.bootstrap_exponent[:, None] * np.log10(budget_grid)[None, :]
        low, high = np.percentile(curves, [tail, 100.0 - tail], axis=0)
        panel.fill_between(budget_grid, 10.0**low, 10.0**high, color=color, alpha=0.15, linewidth=0, zorder=1)
    for prediction in law.predictions:
        error = None
        if prediction.interval.printable:
            error = [[prediction.value - prediction.interval.low], [prediction.interval.high - prediction.value]]
        panel.errorbar(prediction.budget, prediction.value, yerr=error, color=color, marker="D", markersize=6,
                       markerfacecolor="white", capsize=3, zorder=5)
        if annotate:
            panel.annotate(f"{prediction.value:.3g}", (prediction.budget, prediction.value), textcoords="offset points",
                           xytext=(-8, 6), ha="right", fontsize=7, color=color)


def _marker_handles(kinds: set[str], confidence: float, any_band: bool, any_prediction: bool) -> list[Line2D]:
    handles = [Line2D([], [], color="0.3", marker="o", linestyle="none", label="optimum inside the sampled sizes (fitted)")]
    if "extrapolated" in kinds:
        handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle="none",
                              label="extrapolated optimum (not fitted)"))
    handles += interval_handles(confidence, kinds - {"clipped"})
    if any_band:
        handles.append(Line2D([], [], color="0.3", alpha=0.3, linewidth=8, label=f"{confidence:.0%} band of the power law"))
    if any_prediction:
        handles.append(Line2D([], [], color="0.3", marker="D", markerfacecolor="white", linestyle="none",
                              label="prediction (--predict)"))
    if "clipped" in kinds:
        handles.append(Line2D([], [], color="0.3", marker="^", linestyle="none",
                              label="beyond the axis (clipped at the edge)"))
    return handles


def scaling_figure(optima: list[Optimum], power_laws: list[PowerLawFit], params_kind: str = "",
                   predict_budgets: tuple[float, ...] = (), confidence: float = 0.95) -> plt.Figure:
    """The scaling figure (module docstring), open for inspection; :func:`plot_scaling` saves it.

    ``params_kind``: a short word for the parameter count on the N* axis (``active``, ``C/(6D)``), or empty.
    """
    groups = sorted({o.group for o in optima})
    colors = group_colors(groups)
    kinds: set[str] = set()
    rows_of_legend = max(1, len(groups))
    height = PANEL_HEIGHT_INCHES + LEGEND_HEIGHT_INCHES + 0.18 * rows_of_legend
    with plt.rc_context(STYLE):
        figure, panels = plt.subplots(1, 2, figsize=(FIGURE_WIDTH_INCHES, height), layout="constrained")
        for panel, quantity in zip(panels, ("params", "tokens")):
            predictions = [p.value for law in power_laws if law.quantity == quantity for p in law.predictions]
            window = _window(optima, quantity, predictions)
            for group in groups:
                kinds |= _draw_optima(panel, [o for o in optima if o.group == group], quantity, colors[group], window)
                law = next((p for p in power_laws if p.group == group and p.quantity == quantity), None)
                if law is not None:
                    _draw_law(panel, law, colors[group], predict_budgets, annotate=len(groups) == 1)
                elif any(o.value(quantity) is not None for o in optima if o.group == group):
                    panel.plot([], [], color=colors[group], marker="o", linestyle="none",
                               label=f"{group}: no power law (see report)")
            panel.set_xscale("log")
            panel.set_yscale("log")
            panel.set_ylim(*window)
            label_few_decades(panel.yaxis, *window)
            label_few_decades(panel.xaxis, *panel.get_xlim())
            panel.set_xlabel("Training compute C (FLOPs)")
            kind = f" ({params_kind})" if params_kind else ""
            panel.set_ylabel(f"Optimal parameters N*{kind}" if quantity == "params" else "Optimal training tokens D*")
            panel.set_title("Compute-optimal model size N*(C)" if quantity == "params" else "Compute-optimal data D*(C)")
            panel.grid(True, which="minor", alpha=0.06)
            if panel.get_legend_handles_labels()[0]:
                panel.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False, fontsize=7)
        any_band = any(law.exponent_interval.status == "ok" and law.bootstrap_exponent.size for law in power_laws)
        handles = _marker_handles(kinds, confidence, any_band, bool(predict_budgets and power_laws))
        figure.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    return figure


def plot_scaling(optima: list[Optimum], power_laws: list[PowerLawFit], stem: Path, params_kind: str = "",
                 predict_budgets: tuple[float, ...] = (), confidence: float = 0.95) -> list[Path]:
    """Write the scaling figure as ``stem``.png and .pdf; returns the paths (arguments as :func:`scaling_figure`)."""
    figure = scaling_figure(optima, power_laws, params_kind, predict_budgets, confidence)
    with plt.rc_context(STYLE):
        return save(figure, stem)
