"""Figures: isoFLOP curves (He 2024, Figure 1) and compute-optimal scaling (Hoffmann et al. 2022, Figure 3).

Each figure is written as PNG (``FIGURE_DPI``) and PDF with the Agg backend,
at a fixed size (no tight bounding box) so its pixel size is predictable:
``FIGURE_SIZE_INCHES * FIGURE_DPI``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import LogFormatterSciNotation, LogLocator  # noqa: E402

from analysis.records import Optimum, PowerLawFit  # noqa: E402

FIGURE_SIZE_INCHES = (8.0, 5.0)
FIGURE_DPI = 150
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 1)))
METHOD_COLORS = {"dense": "#4C72B0", "moe": "#DD8452", "pkm": "#55A868", "peer": "#C44E52"}
STYLE = {
    "font.size": 10, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linestyle": "-", "axes.axisbelow": True,
}


def format_flops(budget: float) -> str:
    """6e18 → '$6\\times10^{18}$' (mathtext)."""
    exponent = int(np.floor(np.log10(budget)))
    mantissa = budget / 10.0**exponent
    mantissa_text = f"{mantissa:.3g}"
    return rf"$10^{{{exponent}}}$" if mantissa_text == "1" else rf"${mantissa_text}\times10^{{{exponent}}}$"


def group_colors(groups: list[str]) -> dict[str, str]:
    """Stable colors: known method families get the palette color of their family, the rest tab10."""
    spare_palette = [plt.get_cmap("tab10").colors[index] for index in (4, 5, 6, 8, 9, 7)]  # purple, brown, pink, olive, cyan, gray
    spare_palette += list(plt.get_cmap("Dark2").colors)
    colors: dict[str, str] = {}
    spare = iter(spare_palette)
    for group in groups:
        family = next((name for name in METHOD_COLORS if group.lower().startswith(name)), None)
        colors[group] = METHOD_COLORS[family] if family and METHOD_COLORS[family] not in colors.values() else matplotlib.colors.to_hex(next(spare, "gray"))
    return colors


def _save(figure: plt.Figure, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    figure.savefig(paths[0], dpi=FIGURE_DPI)
    figure.savefig(paths[1])
    plt.close(figure)
    return paths


def plot_isoflop(runs: pd.DataFrame, optima: list[Optimum], stem: Path, value_column: str, value_label: str,
                 params_label: str, group_column: str = "method", title: str = "IsoFLOP curves",
                 legend_title: str = "method") -> list[Path]:
    """He 2024 Figure 1: metric vs parameters (log x), points, fitted parabolas, optima with bootstrap intervals.

    With one group, color encodes the budget; with several, color encodes the
    group and marker/line style the budget. Returns the PNG and PDF paths.
    """
    groups = list(dict.fromkeys(runs[group_column].astype(str)))  # order of appearance
    budgets = sorted(runs["budget"].unique())
    by_budget_color = len(groups) == 1
    colors = group_colors(groups)
    budget_colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(budgets)))
    optimum_by_key = {(o.group, o.budget): o for o in optima}
    any_extrapolated = any_clipped = False
    # The x window: the sampled sizes and the fitted optima, with a quarter decade
    # of margin. A bootstrap interval reaching past it (a flat resample puts its
    # vertex decades away) is clipped at the edge and marked with a triangle,
    # so one wide interval does not squeeze every curve into a corner.
    window_sizes = [float(runs["params"].min()), float(runs["params"].max())]
    window_sizes += [o.n_opt for o in optima if o.n_opt is not None and np.isfinite(o.n_opt) and o.n_opt > 0]
    window_low, window_high = min(window_sizes) / 10**0.25, max(window_sizes) * 10**0.25
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(figsize=FIGURE_SIZE_INCHES, layout="constrained")
        for group in groups:
            for budget_index, budget in enumerate(budgets):
                points = runs[(runs[group_column].astype(str) == group) & (runs["budget"] == budget)]
                if points.empty:
                    continue
                color = budget_colors[budget_index] if by_budget_color else colors[group]
                marker = "o" if by_budget_color else MARKERS[budget_index % len(MARKERS)]
                linestyle = "-" if by_budget_color else LINESTYLES[budget_index % len(LINESTYLES)]
                axes.scatter(points["params"], points[value_column], color=color, marker=marker, s=28, alpha=0.85,
                             edgecolors="white", linewidths=0.5, zorder=3)
                optimum = optimum_by_key.get((group, float(budget)))
                if optimum is None or optimum.params_fit.curvature != optimum.params_fit.curvature:
                    continue
                fit = optimum.params_fit
                span = max(fit.log10_max - fit.log10_min, 1e-3)
                grid = np.logspace(fit.log10_min - 0.08 * span, fit.log10_max + 0.08 * span, 200)
                axes.plot(grid, fit.evaluate(grid), color=color, linestyle=linestyle, linewidth=1.6, alpha=0.9, zorder=2)
                if fit.status == "vertex_outside_range":  # dotted extension out to the extrapolated minimum
                    vertex = fit.vertex_log10
                    reach = np.logspace(min(vertex, fit.log10_min), max(vertex, fit.log10_max), 200)
                    outside = (np.log10(reach) < fit.log10_min) | (np.log10(reach) > fit.log10_max)
                    axes.plot(reach[outside], fit.evaluate(reach[outside]), color=color, linestyle=":", linewidth=1.2,
                              alpha=0.7, zorder=2)
                    any_extrapolated = True
                if optimum.n_opt is not None and optimum.loss_opt is not None:
                    extrapolated = optimum.params_fit.status != "ok"
                    if np.isfinite(optimum.n_opt_lo) and np.isfinite(optimum.n_opt_hi):
                        low_end, high_end = max(optimum.n_opt_lo, window_low), min(optimum.n_opt_hi, window_high)
                        axes.errorbar(optimum.n_opt, optimum.loss_opt, capsize=3, color=color, linewidth=1.2, zorder=4,
                                      xerr=[[max(optimum.n_opt - low_end, 0.0)], [max(high_end - optimum.n_opt, 0.0)]])
                        for end, clipped, triangle in ((low_end, optimum.n_opt_lo < window_low, "<"),
                                                       (high_end, optimum.n_opt_hi > window_high, ">")):
                            if clipped:
                                axes.scatter(end, optimum.loss_opt, marker=triangle, s=40, color=color, zorder=4)
                                any_clipped = True
                    axes.scatter(optimum.n_opt, optimum.loss_opt, marker="*", s=170, zorder=5, linewidths=0.8,
                                 color="white" if extrapolated else color, edgecolors="black")
        axes.set_xscale("log")
        axes.set_xlim(window_low, window_high)
        axes.set_xlabel(f"Parameters ({params_label})")
        axes.set_ylabel(value_label)
        axes.set_title(title)
        axes.grid(True, which="minor", alpha=0.12)
        low, high = axes.get_xlim()
        if np.log10(high / low) <= 2.2:  # few decades: label 2x and 5x ticks too
            axes.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            axes.xaxis.set_minor_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(3, 3)))
            axes.tick_params(axis="x", which="minor", labelsize=8)
        handles: list[Line2D] = []
        if by_budget_color:
            handles += [Line2D([], [], color=budget_colors[i], marker="o", label=f"{format_flops(b)} FLOPs") for i, b in enumerate(budgets)]
            header = f"{groups[0]}: budget"
        else:
            handles += [Line2D([], [], color=colors[g], linewidth=3, label=g) for g in groups]
            handles += [Line2D([], [], color="0.35", marker=MARKERS[i % len(MARKERS)], linestyle=LINESTYLES[i % len(LINESTYLES)],
                               label=f"{format_flops(b)} FLOPs") for i, b in enumerate(budgets)]
            header = f"{legend_title} / budget"
        handles.append(Line2D([], [], color="black", marker="*", markersize=11, linestyle="none", markerfacecolor="0.6",
                              label="fitted optimum (95% CI)"))
        if any_extrapolated:
            handles.append(Line2D([], [], color="black", marker="*", markersize=11, linestyle="none", markerfacecolor="white",
                                  label="extrapolated optimum"))
        if any_clipped:
            handles.append(Line2D([], [], color="0.35", marker=">", linestyle="none",
                                  label="interval continues past the axis"))
        figure.legend(handles=handles, loc="outside right upper", title=header, frameon=False)
        return _save(figure, stem)


def plot_scaling(optima: list[Optimum], power_laws: list[PowerLawFit], stem: Path, params_label: str,
                 predict_budgets: tuple[float, ...] = ()) -> list[Path]:
    """N*(C) and D*(C) on log-log axes: optima with intervals, fitted power laws, bootstrap bands, predictions."""
    groups = sorted({o.group for o in optima})
    colors = group_colors(groups)
    with plt.rc_context(STYLE):
        figure, panels = plt.subplots(1, 2, figsize=FIGURE_SIZE_INCHES, layout="constrained")
        for panel, quantity in zip(panels, ("params", "tokens")):
            for group in groups:
                color = colors[group]
                group_optima = [o for o in optima if o.group == group]
                for optimum in group_optima:
                    fit = optimum.params_fit if quantity == "params" else optimum.tokens_fit
                    value = optimum.n_opt if quantity == "params" else optimum.d_opt
                    if value is None:
                        continue
                    low, high = (optimum.n_opt_lo, optimum.n_opt_hi) if quantity == "params" else (optimum.d_opt_lo, optimum.d_opt_hi)
                    if np.isfinite(low) and np.isfinite(high):
                        panel.errorbar(optimum.budget, value, yerr=[[value - low], [high - value]], color=color, capsize=3,
                                       linewidth=1.0, zorder=3)
                    panel.scatter(optimum.budget, value, color=color if fit.status == "ok" else "white", edgecolors=color,
                                  s=36, zorder=4, linewidths=1.2)
                law = next((p for p in power_laws if p.group == group and p.quantity == quantity), None)
                if law is None:
                    continue
                budget_grid = np.logspace(np.log10(min(law.budgets + predict_budgets)) - 0.1,
                                          np.log10(max(law.budgets + predict_budgets)) + 0.1, 100)
                symbol = "N^*" if quantity == "params" else "D^*"
                label = rf"{group}: ${symbol} = {law.coefficient:.3g}\,C^{{{law.exponent:.3f}}}$"
                if np.isfinite(law.exponent_lo):
                    label += f" [{law.exponent_lo:.3f}, {law.exponent_hi:.3f}]"
                panel.plot(budget_grid, law.evaluate(budget_grid), color=color, linewidth=1.5, label=label, zorder=2)
                if law.bootstrap_exponent.size >= 10:
                    curves = law.bootstrap_log10_coefficient[:, None] + law.bootstrap_exponent[:, None] * np.log10(budget_grid)[None, :]
                    low, high = np.percentile(curves, [2.5, 97.5], axis=0)
                    panel.fill_between(budget_grid, 10.0**low, 10.0**high, color=color, alpha=0.15, linewidth=0, zorder=1)
                for prediction in law.predictions:
                    error = [[prediction.value - prediction.value_lo], [prediction.value_hi - prediction.value]] if np.isfinite(prediction.value_lo) else None
                    panel.errorbar(prediction.budget, prediction.value, yerr=error, color=color, marker="D", markersize=7,
                                   markerfacecolor="white", capsize=3, zorder=5)
                    panel.annotate(f"{prediction.value:.3g}", (prediction.budget, prediction.value), textcoords="offset points",
                                   xytext=(6, -12), fontsize=8, color=color)
            panel.set_xscale("log")
            panel.set_yscale("log")
            panel.set_xlabel("Training compute C (FLOPs)")
            panel.set_ylabel(f"Optimal parameters N* ({params_label})" if quantity == "params" else "Optimal training tokens D*")
            panel.set_title("Compute-optimal model size" if quantity == "params" else "Compute-optimal data")
            panel.grid(True, which="minor", alpha=0.06)
            if panel.get_legend_handles_labels()[0]:
                panel.legend(loc="best", frameon=False, fontsize=8)
        return _save(figure, stem)
