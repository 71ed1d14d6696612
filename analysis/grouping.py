"""Which CSV rows belong to one isoFLOP experiment: grouping by identity columns.

A CSV of published points often holds several experiments (datasets,
conditions, loss definitions). Pooling them would fit one parabola per budget
through points of different curves. Rows are therefore grouped by *identity
columns*: with ``--group-by COLS`` exactly those, otherwise every non-numeric
column that splits the rows into curves, i.e. one that

- is not one of the fitted quantities (budget, params, tokens, loss, perplexity),
- takes more than one value (a constant column splits nothing), and
- does not label individual runs: a column whose every value, at each budget,
  sits at a single size (a run name, a size name such as ``70m``) changes
  *along* an isoFLOP curve, not between curves.

After grouping, several different losses at one (group, budget, size) mean that
distinct experiments may still be pooled; :func:`pooled_points_warning` names
the columns that tell them apart.
"""

from __future__ import annotations

import pandas as pd

from isoflop.errors import UserError

FITTED_COLUMNS = ("budget", "params", "tokens", "loss", "perplexity", "metric", "run_id", "method")
"""Canonical columns of the tidy frame; never identity columns by themselves."""
SINGLE_GROUP = "all"
"""The group name when no column splits the rows."""


def _labels_runs(frame: pd.DataFrame, column: str) -> bool:
    """True when, at every budget, each value of ``column`` sits at one size (the column names runs)."""
    sizes_per_value = frame.groupby(["budget", column], dropna=False)["params"].nunique()
    values_per_budget = frame.groupby("budget")[column].nunique(dropna=False)
    return bool((sizes_per_value <= 1).all() and (values_per_budget > 1).any())


def default_group_columns(frame: pd.DataFrame, source_columns: dict[str, str]) -> list[str]:
    """Identity columns of a CSV (module docstring), in file order.

    Args:
        frame: the rows, with canonical ``budget`` and ``params`` columns added.
        source_columns: canonical name → CSV column for the columns already read as
            fitted quantities (those are skipped; the method column is a candidate).
    """
    fitted_sources = {source for canonical, source in source_columns.items() if canonical != "method"}
    candidates = []
    for column in frame.columns:
        if column in fitted_sources or column in FITTED_COLUMNS and column != source_columns.get("method"):
            continue
        if pd.api.types.is_numeric_dtype(frame[column]) and not pd.api.types.is_bool_dtype(frame[column]):
            continue
        if frame[column].nunique(dropna=False) < 2 or _labels_runs(frame, column):
            continue
        candidates.append(column)
    return candidates


def resolve_group_columns(frame: pd.DataFrame, requested: str | None, path: str) -> list[str]:
    """Columns named by ``--group-by A,B`` (case-insensitive); UserError naming the available ones."""
    by_lower = {str(column).lower(): column for column in frame.columns}
    columns = []
    for name in (part.strip() for part in (requested or "").split(",")):
        if not name:
            continue
        if name.lower() not in by_lower:
            raise UserError(f"--group-by {name!r}: no such column in {path}; columns are {', '.join(map(str, frame.columns))}")
        columns.append(by_lower[name.lower()])
    if not columns:
        raise UserError("--group-by needs column names, e.g. --group-by dataset,model")
    return columns


def group_labels(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """One label per row: the value of a single column, or ``col=value, col=value`` for several."""
    if not columns:
        return pd.Series(SINGLE_GROUP, index=frame.index)
    if len(columns) == 1:
        return frame[columns[0]].astype(str)
    return frame[columns].astype(str).apply(lambda row: ", ".join(f"{c}={row[c]}" for c in columns), axis=1)


def pooled_points_warning(frame: pd.DataFrame, group_columns: list[str]) -> str | None:
    """A warning when some (group, budget, size) holds several different losses, naming the columns to group by."""
    keys = ["method", "budget", "params"]
    spread = frame.groupby(keys)["loss"].transform("nunique")
    pooled = frame[spread > 1]
    if pooled.empty:
        return None
    n_points = len(pooled.groupby(keys))
    candidates = [column for column in frame.columns
                  if column not in FITTED_COLUMNS and column not in group_columns
                  and (pooled.groupby(keys)[column].nunique(dropna=False) > 1).any()]
    candidates.sort(key=lambda column: pd.api.types.is_numeric_dtype(frame[column]))  # names before numbers
    message = (f"{n_points} (group, budget, size) point(s) hold several different losses, so distinct experiments "
               "may be pooled into one curve")
    if candidates:
        suggestion = ",".join([*group_columns, candidates[0]])
        return message + f"; columns that tell them apart: {', '.join(candidates)}; group with --group-by {suggestion}"
    return message + "; no column tells them apart (repeated runs are averaged by the fit)"
