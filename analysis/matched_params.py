"""Perplexity at equal total parameters, one column per method: the comparison of Csordás et al. (2023).

The sigma-MoE paper compares feed-forward layers at a matched total parameter
count: each MoE holds as many parameters as the dense FFW it replaces. In an
isoFLOP sweep whose methods share their backbones (``ladder.backbones_from``)
and whose layers are parameter-matched, every backbone at a budget is such a
comparison. Runs of one budget are grouped by total parameters: sorted, a run
joins the current group while it holds at most :data:`PARAMETER_TOLERANCE`
more parameters than the group's smallest run. A group enters the table when
it holds runs of at least two FFW families (a comparison across layer types,
not the variants of one ablation), one row per group: ``budget``,
``params_total`` (the group's mean), one column per method with its run's
perplexity (empty where the method has no run of that size), and ``best``,
the method of lowest perplexity.

Unlike the paper, where every model trains on the same tokens, runs at one
budget spend the same FLOPs: a method that costs fewer FLOPs per token (an
MoE) has trained on more tokens. A row is therefore equal parameters *and*
equal compute.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PARAMETER_TOLERANCE = 0.02
"""Runs within 2% of total parameters count as equal (a router adds d·N_E per block)."""
REFERENCE_FAMILY = "dense"


def parameter_groups(params: pd.Series, tolerance: float = PARAMETER_TOLERANCE) -> pd.Series:
    """A group number per run: consecutive sizes (sorted) within ``tolerance`` of their group's smallest."""
    order = params.sort_values()
    groups, group, start = {}, -1, None
    for index, value in order.items():
        if start is None or value > start * (1.0 + tolerance):
            group, start = group + 1, value
        groups[index] = group
    return pd.Series(groups).reindex(params.index)


def method_order(runs: pd.DataFrame) -> list[str]:
    """Methods with the dense reference first, then by name."""
    methods = sorted(runs["method"].astype(str).unique())
    dense = sorted(runs.loc[runs["ffw_family"] == REFERENCE_FAMILY, "method"].astype(str).unique())
    return dense + [method for method in methods if method not in dense]


def reference_method(runs: pd.DataFrame) -> str | None:
    """The method the comparison is drawn against: the first dense one, if any."""
    dense = method_order(runs[runs["ffw_family"] == REFERENCE_FAMILY])
    return dense[0] if dense else None


def matched_parameter_table(runs: pd.DataFrame, value_column: str = "perplexity") -> pd.DataFrame | None:
    """The table of the module docstring, or None when no group compares two FFW families."""
    if "params_total" not in runs.columns or "ffw_family" not in runs.columns:
        return None
    methods = method_order(runs)
    rows = []
    for budget, at_budget in runs.groupby("budget", sort=True):
        groups = parameter_groups(at_budget["params_total"])
        for _, members in at_budget.groupby(groups, sort=True):
            if members["ffw_family"].nunique() < 2:
                continue
            middle = members["params_total"].median()
            picked = members.loc[(members["params_total"] - middle).abs().groupby(members["method"]).idxmin()]
            values = dict(zip(picked["method"].astype(str), picked[value_column].astype(float)))
            row: dict[str, object] = {"budget": float(budget), "params_total": int(round(members["params_total"].mean()))}
            row.update({method: values.get(method, np.nan) for method in methods})
            row["best"] = min(values, key=values.get)
            rows.append(row)
    if not rows:
        return None
    table = pd.DataFrame(rows)
    return table.dropna(axis=1, how="all")
