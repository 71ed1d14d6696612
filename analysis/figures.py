"""The isoFLOP figure: the metric against model size at fixed compute, one curve per budget (He 2024, Fig. 1).

One panel per group when there are several (a method, a CSV group, an
ablation setting), so that curves of different groups never cross each other
and groups with different loss scales keep their own y axis (panels share it
when their ranges overlap). Budgets are coloured on a sequential map. Each
panel shows the runs, the fitted parabolas over the sampled sizes, and the
fitted optima with their bootstrap intervals. Fits that are not ``ok`` are
drawn differently, each with a legend entry: an extrapolated optimum as an
open star at the end of a dotted extension (or a triangle at the axis edge
when it lies beyond it), a concave fit (no minimum) as a thin dashed curve.
The x axis shows the sampled sizes with a margin; anything beyond is clipped
at the edge and marked.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.figure_style import (FIGURE_WIDTH_INCHES, LEGEND_HEIGHT_INCHES, PANEL_HEIGHT_INCHES, STYLE,
                                   BudgetPalette, draw_interval, interval_handles, interval_kinds, label_few_decades,
                                   log_window, plt, save)
from analysis.formatting import budget_latex
from analysis.records import Optimum, ParabolaFit

from matplotlib.lines import Line2D  # noqa: E402  (after figure_style selected the Agg backend)

MAX_BUDGET_TICKS = 12
"""Up to this many budgets, the colour bar has a labelled tick at each one."""


def panel_grid(n_panels: int) -> tuple[int, int]:
    """(rows, columns): one column for one panel, two up to four panels, three beyond."""
    columns = 1 if n_panels == 1 else 2 if n_panels <= 4 else 3
    return math.ceil(n_panels / columns), columns


def _shared_value_axis(runs: pd.DataFrame, groups: list[str], group_column: str, value_column: str) -> bool:
    """True when every group's metric range overlaps a common interval (one y scale then serves them all)."""
    by_group = runs.groupby(group_column)[value_column]
    return bool(by_group.min().max() <= by_group.max().min())


def _draw_fit(axes: plt.Axes, fit: ParabolaFit, color: object, window: tuple[float, float]) -> str | None:
    """The fitted parabola over the sampled sizes; returns the legend kind it needs, if any."""
    if fit.status == "too_few_points":
        return None
    span = max(fit.log10_max - fit.log10_min, 1e-3)
    grid = np.logspace(fit.log10_min - 0.05 * span, fit.log10_max + 0.05 * span, 200)
    if fit.status == "concave":
        axes.plot(grid, fit.evaluate(grid), color=color, linestyle=(0, (4, 3)), linewidth=0.9, alpha=0.8, zorder=2)
        return "concave"
    axes.plot(grid, fit.evaluate(grid), color=color, linewidth=1.5, alpha=0.9, zorder=2)
    if fit.status == "vertex_outside_range":
        vertex = float(np.clip(fit.vertex_log10, np.log10(window[0]), np.log10(window[1])))
        edge = fit.log10_max if vertex > fit.log10_max else fit.log10_min
        reach = np.logspace(min(vertex, edge), max(vertex, edge), 100)
        axes.plot(reach, fit.evaluate(reach), color=color, linestyle=":", linewidth=1.2, alpha=0.8, zorder=2)
        return "extrapolated"
    return None


def _draw_optimum(axes: plt.Axes, optimum: Optimum, color: object, window: tuple[float, float]) -> set[str]:
    """The optimum (star) with its N* interval; open star (or edge triangle) when extrapolated."""
    kinds: set[str] = set()
    if optimum.n_opt is None or optimum.loss_opt is None:
        return kinds
    if optimum.params_fit.status != "ok":
        position = min(max(optimum.n_opt, window[0]), window[1])
        if position != optimum.n_opt:  # beyond the axis: a triangle at the edge, on the curve
            marker = ">" if optimum.n_opt > window[1] else "<"
            axes.scatter(position, optimum.params_fit.evaluate(np.array([position]))[0], marker=marker, s=60,
                         facecolor="white", edgecolors=color, linewidths=1.2, zorder=5, clip_on=False)
            return {"extrapolated_beyond"}
        axes.scatter(optimum.n_opt, optimum.loss_opt, marker="*", s=150, zorder=5, linewidths=1.0,
                     facecolor="white", edgecolors=color)
        return kinds
    if draw_interval(axes, optimum.n_opt, optimum.loss_opt, optimum.n_interval, window, color, horizontal=True):
        kinds.add("clipped")
    kinds |= interval_kinds(optimum.n_interval)
    axes.scatter(optimum.n_opt, optimum.loss_opt, marker="*", s=150, zorder=5, linewidths=0.7, color=color,
                 edgecolors="black")
    return kinds


def _format_size_axis(axes: plt.Axes, window: tuple[float, float]) -> None:
    axes.set_xscale("log")
    axes.set_xlim(*window)
    axes.grid(True, which="minor", alpha=0.12)
    label_few_decades(axes.xaxis, *window)


def _draw_panel(axes: plt.Axes, points: pd.DataFrame, optima: list[Optimum], value_column: str,
                palette: BudgetPalette) -> set[str]:
    """One group's curves; returns the legend kinds it used."""
    window = log_window(list(points["params"]))
    kinds: set[str] = set()
    for budget, budget_points in points.groupby("budget", sort=True):
        color = palette.color(budget)
        axes.scatter(budget_points["params"], budget_points[value_column], color=color, s=22, alpha=0.85,
                     edgecolors="white", linewidths=0.4, zorder=3)
        optimum = next((o for o in optima if o.budget == float(budget)), None)
        if optimum is None:
            continue
        kind = _draw_fit(axes, optimum.params_fit, color, window)
        kinds |= {kind} if kind else set()
        kinds |= _draw_optimum(axes, optimum, color, window)
    _format_size_axis(axes, window)
    return kinds


def _value_limits(values: pd.Series) -> tuple[float, float]:
    """The metric's range with 8% margin: curves and bars past it are clipped by the axes."""
    low, high = float(values.min()), float(values.max())
    margin = 0.08 * ((high - low) or abs(high) or 1.0)
    return low - margin, high + margin


def _legend(figure: plt.Figure, panels: list[plt.Axes], palette: BudgetPalette, kinds: set[str],
            confidence: float) -> None:
    """Legend below the panels (budgets, markers, what each line style means); a colour bar for many budgets."""
    handles: list[Line2D] = []
    if palette.uses_colorbar:
        mappable = plt.cm.ScalarMappable(norm=palette.norm, cmap=palette.cmap)
        colorbar = figure.colorbar(mappable, ax=panels, location="right", shrink=0.9, pad=0.02)
        colorbar.set_label("Training compute C (FLOPs), one curve per budget")
        if len(palette.budgets) <= MAX_BUDGET_TICKS:  # a tick at every budget
            colorbar.set_ticks(palette.budgets, labels=[budget_latex(b) for b in palette.budgets])
            colorbar.ax.minorticks_off()
    else:
        handles += [Line2D([], [], color=palette.color(b), marker="o", markersize=5, label=f"C = {budget_latex(b)} FLOPs")
                    for b in palette.budgets]
    handles.append(Line2D([], [], color="0.3", marker="*", markersize=10, markeredgecolor="black", linestyle="none",
                          label="fitted optimum (parabola vertex)"))
    handles += interval_handles(confidence, kinds)
    if kinds & {"extrapolated", "extrapolated_beyond"}:
        handles.append(Line2D([], [], color="0.3", marker="*", markersize=10, markerfacecolor="white", linestyle=":",
                              label="optimum outside the sampled sizes (extrapolated, not used)"))
    if "extrapolated_beyond" in kinds:
        handles.append(Line2D([], [], color="0.3", marker=">", markerfacecolor="white", linestyle="none",
                              label="extrapolated optimum beyond the axis"))
    if "concave" in kinds:
        handles.append(Line2D([], [], color="0.3", linestyle=(0, (4, 3)), linewidth=0.9,
                              label="concave fit: no minimum, no optimum"))
    figure.legend(handles=handles, loc="outside lower center", ncols=3 if len(handles) > 4 else len(handles),
                  frameon=False)


def isoflop_figure(runs: pd.DataFrame, optima: list[Optimum], value_column: str, value_label: str, params_label: str,
                   group_column: str = "method", title: str | None = None, confidence: float = 0.95) -> plt.Figure:
    """The isoFLOP figure (module docstring), open for inspection; :func:`plot_isoflop` saves it.

    Args:
        value_label: y axis label (what is fitted, with its unit if known).
        params_label: x axis label (which parameter count).
        title: figure title; by default says what is plotted.
    """
    groups = sorted(runs[group_column].astype(str).unique())
    palette = BudgetPalette(list(runs["budget"]))
    rows, columns = panel_grid(len(groups))
    height = rows * PANEL_HEIGHT_INCHES + LEGEND_HEIGHT_INCHES + (0.4 if len(groups) > 1 else 0.0)
    share_y = len(groups) > 1 and _shared_value_axis(runs, groups, group_column, value_column)
    kinds: set[str] = set()
    with plt.rc_context(STYLE):
        figure, grid = plt.subplots(rows, columns, figsize=(FIGURE_WIDTH_INCHES, height), layout="constrained",
                                    sharey=share_y, squeeze=False)
        panels = list(grid.flat)
        for axes, group in zip(panels, groups):
            group_points = runs[runs[group_column].astype(str) == group]
            kinds |= _draw_panel(axes, group_points, [o for o in optima if o.group == group], value_column, palette)
            axes.set_ylim(*_value_limits(runs[value_column] if share_y else group_points[value_column]))
            axes.set_xlabel(params_label)
            if len(groups) > 1:
                axes.set_title(group)
            if not share_y or axes in grid[:, 0]:
                axes.set_ylabel(value_label)
        for axes in panels[len(groups):]:
            figure.delaxes(axes)
        figure.suptitle(title or f"IsoFLOP curves: {value_label.split(' (')[0].lower()} against model size at fixed compute")
        _legend(figure, panels[:len(groups)], palette, kinds, confidence)
    return figure


def plot_isoflop(runs: pd.DataFrame, optima: list[Optimum], stem: Path, value_column: str, value_label: str,
                 params_label: str, group_column: str = "method", title: str | None = None,
                 confidence: float = 0.95) -> list[Path]:
    """Write the isoFLOP figure as ``stem``.png and .pdf; returns the paths (arguments as :func:`isoflop_figure`)."""
    figure = isoflop_figure(runs, optima, value_column, value_label, params_label, group_column, title, confidence)
    with plt.rc_context(STYLE):
        return save(figure, stem)
