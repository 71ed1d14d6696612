"""Tables in Markdown, LaTeX and CSV: He 2024 Table 1 (perplexity) and Table 2 (expert usage).

``table_perplexity``: for every (budget, method), the perplexity on each
evaluation dataset of the compute-optimal run. The run is the sampled run
nearest in log10(params) to the fitted optimum N* (the table reports measured
perplexities, so it needs a run that exists); without a fitted optimum the
run with the lowest fitted metric stands in, and the ``selection`` column says so.

``table_usage``: expert usage (%, share of experts that received at least one
token) and unevenness (KL divergence of the routing distribution to uniform),
as in He 2024 Table 2, per configuration and budget: the mean over the
configuration's completed runs, with ``n_runs``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.records import Optimum

CONFIG_COLUMNS = ("ffw_family", "ffw_n_experts", "ffw_n_heads", "ffw_top_k", "ffw_query_batchnorm")


def _format_cell(value: object) -> str:
    """Numbers with 4 significant digits, missing values as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return str(value)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (numbers with 4 significant digits)."""
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(_format_cell(value) for value in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _latex_escape(text: str) -> str:
    for character, replacement in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"), ("$", r"\$")):
        text = text.replace(character, replacement)
    return text


def to_latex(table: pd.DataFrame, caption: str, group_column: str | None = None) -> str:
    """A booktabs LaTeX table; a rule separates blocks of ``group_column`` (e.g. budgets, as in He 2024 Table 1)."""
    alignment = "l" * 2 + "r" * max(0, len(table.columns) - 2)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_escape(caption)}}}",
             rf"\begin{{tabular}}{{{alignment}}}", r"\toprule",
             " & ".join(_latex_escape(str(column)) for column in table.columns) + r" \\", r"\midrule"]
    previous = None
    for row in table.itertuples(index=False):
        record = dict(zip(table.columns, row))
        if group_column is not None and previous is not None and record[group_column] != previous:
            lines.append(r"\midrule")
        previous = record.get(group_column) if group_column else None
        lines.append(" & ".join(_latex_escape(_format_cell(value)) for value in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, stem: Path, caption: str, group_column: str | None = None) -> list[Path]:
    """Write ``stem``.md, .tex and .csv; returns the paths."""
    paths = [stem.with_suffix(".md"), stem.with_suffix(".tex"), stem.with_suffix(".csv")]
    paths[0].write_text(to_markdown(table))
    paths[1].write_text(to_latex(table, caption, group_column))
    table.to_csv(paths[2], index=False)
    return paths


def perplexity_table(runs: pd.DataFrame, optima: list[Optimum]) -> pd.DataFrame:
    """He 2024 Table 1: perplexity of each method's compute-optimal run on each evaluation dataset, by budget."""
    perplexity_columns = [c for c in runs.columns if c.startswith("eval_") and c.endswith("_perplexity")] or ["perplexity"]
    rows = []
    for optimum in sorted(optima, key=lambda o: (o.budget, o.group)):
        points = runs[(runs["method"] == optimum.group) & (runs["budget"] == optimum.budget)]
        if points.empty:
            continue
        if optimum.n_opt is not None:
            index = (np.log10(points["params"]) - np.log10(optimum.n_opt)).abs().idxmin()
            selection = "nearest to fitted N*"
        else:
            index = points["metric"].idxmin()
            selection = f"lowest sampled ({optimum.params_fit.status})"
        run = points.loc[index]
        row: dict[str, object] = {"budget": f"{optimum.budget:.3g}", "method": optimum.group, "run_id": run["run_id"],
                                  "params": float(run["params"])}
        for column in perplexity_columns:
            name = column.removeprefix("eval_").removesuffix("_perplexity")
            row[name] = float(run[column])
        row["selection"] = selection
        rows.append(row)
    return pd.DataFrame(rows)


def usage_table(runs: pd.DataFrame) -> pd.DataFrame | None:
    """He 2024 Table 2: expert usage (%) and unevenness per configuration and budget; None without routing data."""
    if "expert_usage" not in runs.columns or runs["expert_usage"].isna().all():
        return None
    routed = runs[runs["expert_usage"].notna()].copy()
    keys = ["method", *[c for c in CONFIG_COLUMNS if c in routed.columns], "budget"]
    for key in keys:
        routed[key] = routed[key].astype(str).where(routed[key].notna(), "–")
    aggregations = {"expert_usage": "mean", "run_id": "count"}
    if "routing_unevenness" in routed.columns:
        aggregations["routing_unevenness"] = "mean"
    table = routed.groupby(keys, sort=True).agg(aggregations).reset_index()
    table["expert_usage"] = 100.0 * table["expert_usage"]
    table = table.rename(columns={"expert_usage": "expert_usage_percent", "routing_unevenness": "unevenness",
                                  "run_id": "n_runs"})
    table.columns = [str(c).removeprefix("ffw_") for c in table.columns]
    return table
