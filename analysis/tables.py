"""Tables in Markdown, LaTeX and CSV: He 2024 Table 1 (perplexity) and Table 2 (expert usage).

``table_perplexity``: for every (budget, method), the perplexity on each
evaluation dataset of the compute-optimal run. The run is the sampled run
nearest in log10(params) to the fitted optimum N* (the table reports measured
values, so it needs a run that exists); the ``selection`` column says how the
run was chosen, including when N* was extrapolated past the sampled sizes (the
nearest run is then at the edge) and when there is no optimum (the run with
the lowest metric stands in; on a fixed backbone, :mod:`analysis.fixed_backbone`,
the method's one run). For a CSV whose loss unit is unknown, the same
table shows the loss (``table_loss``): a perplexity needs a loss in nats.

``table_usage``: expert usage (%, share of experts that received at least one
token) and unevenness (KL divergence of the routing distribution to uniform),
as in He 2024 Table 2, per configuration and budget: the mean over the
configuration's completed runs, with ``n_runs``.

``expert_usage_grid``: He 2024 Table 2 in the paper's layout, per routed
family whose runs vary the number of experts N or the query normalisation:
a row per (budget, N), and for each query normalisation the columns expert
usage (%), unevenness and perplexity. A cell holds one run: the only one (a fixed
backbone, as in the paper) or, over a ladder, the one of lowest perplexity.
The other settings (heads, top-k) are held as in the ablation figures. Its
CSV is the same grid as one row per cell.

Tables hold numbers (budgets as floats, counts as integers); the writers
format them: budgets as ``6e18`` in Markdown and CSV and ``$6\\times10^{18}$``
in LaTeX (through pandas' ``Styler.to_latex``), counts as integers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.ablations import (QUERY_NORM_COLUMN, QUERY_NORM_ORDER, compact_count, hold_other_settings,
                                varying_settings, with_query_norm)
from analysis.formatting import MISSING, budget_latex, budget_text, number_text
from analysis.records import Optimum

CONFIG_COLUMNS = ("ffw_family", "ffw_n_experts", "ffw_n_heads", "ffw_top_k", "ffw_query_batchnorm")
GRID_QUANTITIES = {"expert_usage_percent": "usage (%)", "unevenness": "unevenness", "perplexity": "perplexity"}
"""Columns of He 2024 Table 2 per query normalisation, in order: tidy column → label."""
GRID_NORM_LABELS = {"off": "no norm", "prefix": "causal norm", "batch": "BatchNorm (non-causal)"}


def _text_table(table: pd.DataFrame) -> pd.DataFrame:
    """Every cell as the text a reader sees (budgets as 6e18, counts as integers)."""
    shown = table.copy().astype(object)
    for column in table.columns:
        formatter = budget_text if column == "budget" else number_text
        shown[column] = [formatter(value) if not (column == "budget" and pd.isna(value)) else MISSING
                         for value in table[column]]
    return shown


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (budgets as 6e18, counts as integers, other numbers to 4 digits)."""
    shown = _text_table(table)
    header = "| " + " | ".join(map(str, shown.columns)) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    body = ["| " + " | ".join(str(value).replace("|", "\\|") for value in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def to_latex(table: pd.DataFrame, caption: str) -> str:
    """A booktabs LaTeX table through pandas' Styler (cells and headers escaped; budgets as $6\\times10^{18}$).

    ``caption`` is written as given: LaTeX's special characters are for the caller to avoid.
    """
    formatters = {column: (budget_latex if column == "budget" else number_text) for column in table.columns}
    styler = (table.style.hide(axis="index").format(formatters, escape="latex", na_rep=MISSING)
              .format_index(escape="latex", axis=1))
    alignment = "".join("r" if pd.api.types.is_numeric_dtype(table[column]) else "l" for column in table.columns)
    return styler.to_latex(caption=caption, hrules=True, position="t", position_float="centering",
                           column_format=alignment, environment="table")


def write_table(table: pd.DataFrame, stem: Path, caption: str, tidy: pd.DataFrame | None = None) -> list[Path]:
    """Write ``stem``.md and .tex of ``table`` and ``stem``.csv of ``tidy`` (default: ``table``); returns the paths."""
    paths = [stem.with_suffix(".md"), stem.with_suffix(".tex"), stem.with_suffix(".csv")]
    paths[0].write_text(to_markdown(table))
    paths[1].write_text(to_latex(table, caption))
    tidy = table if tidy is None else tidy
    tidy.assign(**({"budget": tidy["budget"].map(budget_text)} if "budget" in tidy else {})).to_csv(paths[2], index=False)
    return paths


FIXED_BACKBONE_SELECTION = "the one run (fixed backbone)"
"""The ``selection`` of a method's run when the study has one model per method (:mod:`analysis.fixed_backbone`)."""


def _selection(optimum: Optimum) -> str:
    """How the compute-optimal run was picked, in words."""
    status = optimum.params_fit.status
    if status == "ok":
        return "nearest to fitted N*"
    if status == "vertex_outside_range":
        return "N* extrapolated past the sampled sizes: nearest sampled run, at the edge"
    return f"lowest sampled metric ({status}: no optimum)"


def optimal_run_table(runs: pd.DataFrame, optima: list[Optimum], value_columns: dict[str, str],
                      group_header: str = "method", fixed_backbone: bool = False) -> pd.DataFrame:
    """He 2024 Table 1: per budget and group, ``value_columns`` (table name → runs column) of the compute-optimal run.

    ``group_header`` names the group column (``method`` for a sweep, ``group`` for CSV groups). With
    ``fixed_backbone`` each group has one model, so its run (the lowest metric of repeats) is the one shown.
    """
    rows = []
    for optimum in sorted(optima, key=lambda o: (o.budget, o.group)):
        points = runs[(runs["method"] == optimum.group) & (runs["budget"] == optimum.budget)]
        if points.empty:
            continue
        if optimum.n_opt is not None:
            index = (np.log10(points["params"]) - np.log10(optimum.n_opt)).abs().idxmin()
        else:
            index = points["metric"].idxmin()
        run = points.loc[index]
        row: dict[str, object] = {"budget": optimum.budget, group_header: optimum.group, "run_id": run["run_id"],
                                  "params": float(run["params"])}
        row.update({name: float(run[column]) for name, column in value_columns.items()})
        row["selection"] = FIXED_BACKBONE_SELECTION if fixed_backbone else _selection(optimum)
        rows.append(row)
    return pd.DataFrame(rows)


def perplexity_columns(runs: pd.DataFrame) -> dict[str, str]:
    """Evaluation sets with a perplexity: table name → runs column (eval_<name>_perplexity, else perplexity)."""
    columns = {column.removeprefix("eval_").removesuffix("_perplexity"): column
               for column in runs.columns if column.startswith("eval_") and column.endswith("_perplexity")}
    if columns:
        return columns
    return {"perplexity": "perplexity"} if runs["perplexity"].notna().all() else {}


def usage_table(runs: pd.DataFrame) -> pd.DataFrame | None:
    """He 2024 Table 2: expert usage (%) and unevenness per configuration and budget; None without routing data."""
    if "expert_usage" not in runs.columns or runs["expert_usage"].isna().all():
        return None
    routed = runs[runs["expert_usage"].notna()].copy()
    keys = ["method", *[c for c in CONFIG_COLUMNS if c in routed.columns], "budget"]
    for key in keys[:-1]:
        values = routed[key]
        if pd.api.types.is_float_dtype(values) and np.all(np.isnan(values) | (values == np.round(values))):
            routed[key] = values.astype("Int64")  # counts such as experts or heads, not 8.0
    aggregations = {"expert_usage": "mean", "run_id": "count"}
    if "routing_unevenness" in routed.columns:
        aggregations["routing_unevenness"] = "mean"
    table = routed.groupby(keys, sort=True, dropna=False).agg(aggregations).reset_index()
    table["budget"] = table["budget"].astype(float)
    table["expert_usage"] = 100.0 * table["expert_usage"]
    table = table.rename(columns={"expert_usage": "expert_usage_percent", "routing_unevenness": "unevenness",
                                  "run_id": "n_runs"})
    table.columns = [str(c).removeprefix("ffw_") for c in table.columns]
    return table


def expert_usage_grid(runs: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """He 2024 Table 2 (module docstring): family → (the paper's layout, one row per cell)."""
    if "expert_usage" not in runs.columns or "ffw_n_experts" not in runs.columns:
        return {}
    runs = with_query_norm(runs)
    routed = runs[runs["expert_usage"].notna() & runs["ffw_n_experts"].notna()]
    grids = {}
    for family, family_runs in routed.groupby("ffw_family", sort=True):
        if QUERY_NORM_COLUMN not in family_runs.columns or family_runs[QUERY_NORM_COLUMN].isna().any():
            continue  # Table 2 is of product-key layers, which have a query normalisation setting
        varying = varying_settings(family_runs)
        if "experts" not in varying and QUERY_NORM_COLUMN not in varying:
            continue
        kept = ("ffw_n_experts", QUERY_NORM_COLUMN)
        selected = hold_other_settings(family_runs, str(family), varying, kept)
        cells = []
        for (budget, n_experts, norm), cell in selected.groupby(["budget", *kept], sort=True):
            best = cell.loc[cell["perplexity"].idxmin()]
            cells.append({"budget": float(budget), "n_experts": int(n_experts), "query_norm": norm,
                          "perplexity": float(best["perplexity"]),
                          "expert_usage_percent": 100.0 * float(best["expert_usage"]),
                          "unevenness": float(best.get("routing_unevenness", np.nan)),
                          "n_heads": int(best["ffw_n_heads"]), "top_k": int(best["ffw_top_k"]),
                          "params_total": float(best["params_total"]), "run_id": best["run_id"], "n_runs": len(cell),
                          "selection": "the only run" if len(cell) == 1 else f"lowest perplexity of {len(cell)} sizes"})
        tidy = pd.DataFrame(cells)
        tidy = tidy.assign(_norm=tidy["query_norm"].map(QUERY_NORM_ORDER.index)).sort_values(
            ["budget", "n_experts", "_norm"]).drop(columns="_norm").reset_index(drop=True)
        grids[str(family)] = (_paper_layout(tidy), tidy)
    return grids


def _paper_layout(tidy: pd.DataFrame) -> pd.DataFrame:
    """A row per (budget, N); columns '<query norm>: <quantity>', the norms in their order (module docstring)."""
    norms = [norm for norm in QUERY_NORM_ORDER if norm in set(tidy["query_norm"])]
    columns = [f"{GRID_NORM_LABELS[norm]}: {label}" for norm in norms for label in GRID_QUANTITIES.values()]
    rows = []
    for (budget, n_experts), cells in tidy.groupby(["budget", "n_experts"], sort=True):
        row = {"budget": budget, "N": compact_count(n_experts)}
        for cell in cells.itertuples():
            row.update({f"{GRID_NORM_LABELS[cell.query_norm]}: {label}": getattr(cell, quantity)
                        for quantity, label in GRID_QUANTITIES.items()})
        rows.append(row)
    return pd.DataFrame(rows, columns=["budget", "N", *columns])
