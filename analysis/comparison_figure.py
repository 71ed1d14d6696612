"""IsoFLOP curves of several groups in one panel, as the papers draw them (He 2024, Figures 1 and 4).

Where :mod:`analysis.figures` gives every group its own panel, a comparison
needs the curves on one axis: here each group (an ablation setting, a method)
has its colour, each budget its marker and line style, and each curve is the
group's fitted parabola over its sampled sizes with a star at its minimum
(open when the minimum is extrapolated; a concave fit is drawn thin and
dashed, without a star). A reference group (the dense FFW) is drawn in black,
as the papers' baseline. Intervals are left to the report and to the
per-group figure, so that close curves stay readable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.figure_style import (FIGURE_WIDTH_INCHES, LEGEND_HEIGHT_INCHES, PANEL_HEIGHT_INCHES, STYLE, group_colors,
                                   label_few_decades, log_window, plt, save)
from analysis.formatting import budget_latex
from analysis.records import Optimum

from matplotlib.lines import Line2D  # noqa: E402  (after figure_style selected the Agg backend)

BUDGET_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
BUDGET_LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
REFERENCE_COLOR = "black"
COMPARISON_HEIGHT_INCHES = 1.6 * PANEL_HEIGHT_INCHES


def budget_styles(budgets: list[float]) -> dict[float, tuple[str, object]]:
    """Marker and line style of each budget, in increasing budget order."""
    ordered = sorted(set(float(budget) for budget in budgets))
    return {budget: (BUDGET_MARKERS[index % len(BUDGET_MARKERS)], BUDGET_LINESTYLES[index % len(BUDGET_LINESTYLES)])
            for index, budget in enumerate(ordered)}


def group_palette(groups: list[str], reference: str | None) -> dict[str, str]:
    """Colours by :func:`group_colors` for every group but the reference, which is black."""
    colors = group_colors([group for group in groups if group != reference])
    return {**colors, **({reference: REFERENCE_COLOR} if reference in groups else {})}


def _draw_curve(axes: plt.Axes, optimum: Optimum | None, color: str, linestyle: object) -> str | None:
    """The group's parabola at one budget and its star; returns the legend kind it needs, if any."""
    if optimum is None or optimum.params_fit.status == "too_few_points":
        return None
    fit = optimum.params_fit
    span = max(fit.log10_max - fit.log10_min, 1e-3)
    grid = np.logspace(fit.log10_min - 0.05 * span, fit.log10_max + 0.05 * span, 200)
    if fit.status == "concave":
        axes.plot(grid, fit.evaluate(grid), color=color, linestyle=linestyle, linewidth=0.8, alpha=0.6, zorder=2)
        return "concave"
    axes.plot(grid, fit.evaluate(grid), color=color, linestyle=linestyle, linewidth=1.5, alpha=0.9, zorder=2)
    if optimum.n_opt is None or optimum.loss_opt is None:
        return None
    extrapolated = fit.status != "ok"
    if extrapolated and not grid[0] <= optimum.n_opt <= grid[-1]:
        return "extrapolated"
    axes.scatter(optimum.n_opt, optimum.loss_opt, marker="*", s=160, zorder=5, linewidths=0.8,
                 facecolor="white" if extrapolated else color, edgecolors=color if extrapolated else "black")
    return "extrapolated" if extrapolated else None


def comparison_figure(runs: pd.DataFrame, optima: list[Optimum], value_column: str, value_label: str,
                      params_label: str, group_column: str, title: str, reference: str | None = None,
                      groups: list[str] | None = None) -> plt.Figure:
    """The comparison figure (module docstring); ``groups`` in legend order (default: their order in ``runs``)."""
    groups = groups or list(dict.fromkeys(runs[group_column].astype(str)))
    colors = group_palette(groups, reference)
    styles = budget_styles(list(runs["budget"]))
    kinds: set[str] = set()
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(figsize=(FIGURE_WIDTH_INCHES, COMPARISON_HEIGHT_INCHES + LEGEND_HEIGHT_INCHES),
                                    layout="constrained")
        for group in groups:
            for budget, points in runs[runs[group_column].astype(str) == group].groupby("budget", sort=True):
                marker, linestyle = styles[float(budget)]
                axes.scatter(points["params"], points[value_column], color=colors[group], marker=marker, s=26,
                             edgecolors="white", linewidths=0.4, zorder=3)
                optimum = next((o for o in optima if o.group == group and o.budget == float(budget)), None)
                kind = _draw_curve(axes, optimum, colors[group], linestyle)
                kinds |= {kind} if kind else set()
        window = log_window(list(runs["params"]))
        axes.set_xscale("log")
        axes.set_xlim(*window)
        label_few_decades(axes.xaxis, *window)
        axes.set_xlabel(params_label)
        axes.set_ylabel(value_label)
        figure.suptitle(title)
        handles = [Line2D([], [], color=colors[group], linewidth=2.5, label=group) for group in groups]
        handles += [Line2D([], [], color="0.35", marker=marker, linestyle=linestyle, label=f"C = {budget_latex(budget)} FLOPs")
                    for budget, (marker, linestyle) in styles.items()]
        handles.append(Line2D([], [], color="0.35", marker="*", markersize=11, markeredgecolor="black", linestyle="none",
                              label="fitted optimum (parabola vertex)"))
        if "extrapolated" in kinds:
            handles.append(Line2D([], [], color="0.35", marker="*", markersize=11, markerfacecolor="white",
                                  linestyle="none", label="minimum outside the sampled sizes (extrapolated)"))
        if "concave" in kinds:
            handles.append(Line2D([], [], color="0.35", linewidth=0.8, alpha=0.6, label="concave fit: no minimum"))
        figure.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    return figure


def plot_comparison(runs: pd.DataFrame, optima: list[Optimum], stem: Path, value_column: str, value_label: str,
                    params_label: str, group_column: str, title: str, reference: str | None = None,
                    groups: list[str] | None = None) -> list[Path]:
    """Write the comparison figure as ``stem``.png and .pdf (arguments as :func:`comparison_figure`)."""
    figure = comparison_figure(runs, optima, value_column, value_label, params_label, group_column, title, reference,
                               groups)
    with plt.rc_context(STYLE):
        return save(figure, stem)


def plot_methods(runs: pd.DataFrame, optima: list[Optimum], out_dir: Path, value_label: str,
                 params_label: str) -> dict[str, str]:
    """Every method's isoFLOP curves in one panel, dense first and in black: ``out_dir/isoflop_methods.png/.pdf``
    (the comparison of layers on shared backbones, Csordás et al. 2023); returns PNG name → caption."""
    from analysis.matched_params import method_order, reference_method

    plot_comparison(runs, optima, out_dir / "isoflop_methods", "metric", value_label, params_label, "method",
                    "IsoFLOP curves of every method (dense in black)", reference=reference_method(runs),
                    groups=method_order(runs))
    return {"isoflop_methods.png": "IsoFLOP curves of every method in one panel, the dense FFW in black"}
