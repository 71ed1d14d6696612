"""The ablation figures in the paper's form (He 2024, Figures 3a, 3b and 4), one per detected ablation.

- Ladder ablations (Figure 4 and any setting varied over model sizes): the
  settings' isoFLOP curves in one panel (:mod:`analysis.comparison_figure`).
- N on a fixed backbone (Figure 3a): perplexity against total parameters, one
  line per query normalisation (dashed: the paper's non-causal BatchNorm)
  from the dense backbone (black square) through N = smallest .. largest,
  each N labelled.
- hk on a fixed backbone (Figure 3b): perplexity against the number of heads h
  (log2 axis), one curve per hk coloured on a sequential scale, the best h of
  each curve ringed.

Fixed-backbone figures get one panel per budget. Files:
``ablation_<family>_<setting>.png/.pdf``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.ablations import QUERY_NORM_COLUMN, QUERY_NORM_LABELS, QUERY_NORM_ORDER, VALUE_COLUMN, Ablation, compact_count
from analysis.comparison_figure import REFERENCE_COLOR, plot_comparison
from analysis.figure_style import (FIGURE_WIDTH_INCHES, LEGEND_HEIGHT_INCHES, PANEL_HEIGHT_INCHES, STYLE, group_colors,
                                   label_few_decades, log_window, plt, save)
from analysis.figures import panel_grid
from analysis.formatting import budget_latex

from matplotlib.lines import Line2D  # noqa: E402  (after figure_style selected the Agg backend)

HK_COLOR_MAP = "plasma"
HK_COLOR_RANGE = (0.05, 0.85)
HK_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _panels(budgets: list[float]) -> tuple[plt.Figure, list[plt.Axes]]:
    """One panel per budget (shared y axis when there are several)."""
    rows, columns = panel_grid(len(budgets))
    height = rows * (1.4 if len(budgets) == 1 else 1.0) * PANEL_HEIGHT_INCHES + LEGEND_HEIGHT_INCHES
    figure, grid = plt.subplots(rows, columns, figsize=(FIGURE_WIDTH_INCHES, height), layout="constrained",
                                squeeze=False)
    panels = list(grid.flat)
    for axes in panels[len(budgets):]:
        figure.delaxes(axes)
    for axes, budget in zip(panels, budgets):
        if len(budgets) > 1:
            axes.set_title(f"C = {budget_latex(budget)} FLOPs")
    return figure, panels[:len(budgets)]


def _experts_lines(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The N ablation's lines: one per query normalisation when it varies, else one."""
    if QUERY_NORM_COLUMN in runs.columns and runs[QUERY_NORM_COLUMN].nunique() > 1:
        return {QUERY_NORM_LABELS[norm]: runs[runs[QUERY_NORM_COLUMN] == norm]
                for norm in QUERY_NORM_ORDER if (runs[QUERY_NORM_COLUMN] == norm).any()}
    first = runs.iloc[0]
    return {f"{first['ffw_family']}, h = {int(first['ffw_n_heads'])}, k = {int(first['ffw_top_k'])}": runs}


def _line_style(label: str) -> str:
    """Dashed for a setting that is not causal (the paper's BatchNorm), solid otherwise."""
    return "--" if label == QUERY_NORM_LABELS["batch"] else "-"


def experts_figure(ablation: Ablation, value_label: str) -> plt.Figure:
    """He 2024 Fig. 3a: the isoFLOP curve over total parameters from the dense backbone to the largest N."""
    runs, reference = ablation.runs, ablation.reference
    budgets = sorted(runs["budget"].unique())
    lines = _experts_lines(runs)
    colors = group_colors(list(lines))
    hk = int(runs.iloc[0]["ffw_n_heads"] * runs.iloc[0]["ffw_top_k"])
    with plt.rc_context(STYLE):
        figure, panels = _panels(budgets)
        for axes, budget in zip(panels, budgets):
            dense = reference[reference["budget"] == budget].head(1)
            for label, line_runs in lines.items():
                points = line_runs[line_runs["budget"] == budget].sort_values("ffw_n_experts")
                x = [*dense["params_total"], *points["params_total"]]
                y = [*dense[VALUE_COLUMN], *points[VALUE_COLUMN]]
                axes.plot(x, y, color=colors[label], marker="o", markersize=5, linewidth=1.5, zorder=3,
                          linestyle=_line_style(label))
            at_budget = runs[runs["budget"] == budget]
            for n_experts, points in at_budget.groupby("ffw_n_experts"):
                axes.annotate(compact_count(n_experts), (points["params_total"].mean(), points[VALUE_COLUMN].max()),
                              textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
            if not dense.empty:
                axes.scatter(dense["params_total"], dense[VALUE_COLUMN], marker="s", s=55, color=REFERENCE_COLOR, zorder=4)
                axes.annotate("dense", (dense["params_total"].iloc[0], dense[VALUE_COLUMN].iloc[0]),
                              textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
            values = [*at_budget["params_total"], *dense["params_total"]]
            window = log_window(values)
            axes.set_xscale("log")
            axes.set_xlim(window[0], window[1])
            label_few_decades(axes.xaxis, *window)
            axes.set_xlabel("Total parameters")
            axes.set_ylabel(value_label)
            axes.margins(y=0.15)
        handles = [Line2D([], [], color=colors[label], marker="o", linestyle=_line_style(label), label=label)
                   for label in lines]
        if not reference.empty:
            handles.append(Line2D([], [], color=REFERENCE_COLOR, marker="s", linestyle="none",
                                  label="dense backbone (no replacement)"))
        figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), frameon=False)
        figure.suptitle(f"{ablation.family}: number of experts N on one backbone, hk = {hk} "
                        "(He 2024, Fig. 3a)")
    return figure


def heads_figure(ablation: Ablation, value_label: str) -> plt.Figure:
    """He 2024 Fig. 3b: one curve per hk over the number of heads h, the best h of each ringed."""
    runs = ablation.runs.assign(hk=ablation.runs["ffw_n_heads"] * ablation.runs["ffw_top_k"])
    budgets = sorted(runs["budget"].unique())
    hks = sorted(runs["hk"].unique())
    cmap = plt.get_cmap(HK_COLOR_MAP)
    colors = {hk: cmap(value) for hk, value in zip(hks, np.linspace(*HK_COLOR_RANGE, len(hks)))}
    markers = {hk: HK_MARKERS[index % len(HK_MARKERS)] for index, hk in enumerate(hks)}
    with plt.rc_context(STYLE):
        figure, panels = _panels(budgets)
        for axes, budget in zip(panels, budgets):
            at_budget = runs[runs["budget"] == budget]
            for hk in hks:
                curve = at_budget[at_budget["hk"] == hk].sort_values("ffw_n_heads")
                if curve.empty:
                    continue
                axes.plot(curve["ffw_n_heads"], curve[VALUE_COLUMN], color=colors[hk], marker=markers[hk],
                          markersize=5, linewidth=1.5, zorder=3)
                best = curve.loc[curve[VALUE_COLUMN].idxmin()]
                axes.scatter(best["ffw_n_heads"], best[VALUE_COLUMN], s=170, facecolor="none", edgecolors=colors[hk],
                             linewidths=1.4, zorder=4)
            heads = sorted(at_budget["ffw_n_heads"].unique())
            axes.set_xscale("log", base=2)
            axes.set_xticks(heads, labels=[str(int(h)) for h in heads])
            axes.minorticks_off()
            axes.set_xlim(heads[0] / 2 ** 0.4, heads[-1] * 2 ** 0.4)
            axes.set_xlabel("Number of heads h (top-k per head = hk / h)")
            axes.set_ylabel(value_label)
        handles = [Line2D([], [], color=colors[hk], marker=markers[hk], label=f"hk = {int(hk)}") for hk in hks]
        handles.append(Line2D([], [], marker="o", markersize=11, markerfacecolor="none", markeredgecolor="0.3",
                              linestyle="none", label="best h for that hk"))
        figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
        n_experts = runs["ffw_n_experts"].iloc[0]
        figure.suptitle(f"{ablation.family}: active experts hk = h x k, N = {compact_count(n_experts)}, on one "
                        "backbone (He 2024, Fig. 3b)")
    return figure


def plot_ablations(ablations: list[Ablation], out_dir: Path, value_label: str, params_label: str) -> dict[str, str]:
    """One figure per ablation (module docstring); returns PNG name → caption."""
    captions: dict[str, str] = {}
    for ablation in ablations:
        stem = out_dir / f"ablation_{ablation.family}_{ablation.name}"
        if not ablation.fixed_backbone:
            plot_comparison(ablation.runs, ablation.optima, stem, VALUE_COLUMN, value_label, params_label, "setting",
                            f"IsoFLOP curves, {ablation.title}")
            caption = f"IsoFLOP curves of {ablation.title}: one colour per setting, one marker per budget"
        else:
            figure = (experts_figure if ablation.name == "experts" else heads_figure)(ablation, value_label)
            with plt.rc_context(STYLE):
                save(figure, stem)
            caption = (f"{ablation.title} on one backbone: "
                       + ("perplexity against total parameters, from the dense backbone"
                          if ablation.name == "experts" else "perplexity against the number of heads, one curve per hk"))
        captions[stem.with_suffix(".png").name] = caption
    return captions
