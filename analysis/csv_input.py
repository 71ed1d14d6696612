"""Read external isoFLOP results from a CSV file into the same tidy frame as a sweep.

Documented columns (one row per run):

- ``budget``  (required) training compute in FLOPs;
- ``loss``    (required) the evaluation loss to fit; its unit is unknown unless
  ``--loss-unit`` names it (perplexity = exp(loss) needs nats);
- ``params``  parameter count; ``tokens`` training tokens. At least one of the
  two is required; the missing one is derived from C = 6·N·D
  (``tokens = budget / (6 · params)`` or ``params = budget / (6 · tokens)``)
  and the report says so;
- ``method``  (optional) names a curve; together with the other identity
  columns it defines the groups (:mod:`analysis.grouping`, ``--group-by``);
- anything else is kept (e.g. other evaluation losses, ``perplexity``).

Column names are matched case-insensitively, first through ``--columns``
(``canonical=source`` pairs, e.g. ``budget=compute_budget``), then through the
automatic aliases in :data:`COLUMN_ALIASES` (which cover the published
Llama-3 isoFLOP points: ``compute_budget``, ``training_tokens``, ``validation_loss``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.collect import Collection, count_problem, metric_problem
from analysis.grouping import default_group_columns, group_labels, pooled_points_warning, resolve_group_columns
from analysis.options import PERPLEXITY_LOSS_UNITS
from isoflop.errors import UserError

COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "method": ("method", "model", "family", "group"),
    "budget": ("budget", "budget_flops", "compute_budget", "compute", "flops", "c"),
    "params": ("params", "parameters", "n_params", "num_params", "model_size", "n"),
    "tokens": ("tokens", "training_tokens", "n_tokens", "num_tokens", "data", "d"),
    "loss": ("loss", "validation_loss", "val_loss", "eval_loss", "final_loss"),
}
COUNT_COLUMNS = ("budget", "params", "tokens")


def parse_column_map(text: str | None) -> dict[str, str]:
    """Parse ``budget=compute_budget,tokens=training_tokens`` into {canonical: source}."""
    if not text:
        return {}
    mapping: dict[str, str] = {}
    for pair in text.split(","):
        canonical, separator, source = pair.partition("=")
        canonical, source = canonical.strip().lower(), source.strip()
        if not separator or not canonical or not source:
            raise UserError(f"--columns: {pair!r} is not CANONICAL=SOURCE; write e.g. budget=compute_budget,loss=validation_loss")
        if canonical not in COLUMN_ALIASES and canonical != "perplexity":
            raise UserError(f"--columns: {canonical!r} is not a known column; use {', '.join(COLUMN_ALIASES)} or perplexity")
        mapping[canonical] = source
    return mapping


def read_table(path: Path) -> pd.DataFrame:
    """The CSV's rows; UserError (one line) when the file is missing, unreadable, not CSV or empty."""
    if not path.exists():
        raise UserError(f"--csv {path}: no such file; pass an existing CSV with columns method, budget, params, tokens, loss")
    if not path.is_file():
        raise UserError(f"--csv {path} is not a file; pass a CSV file with columns method, budget, params, tokens, loss")
    if not os.access(path, os.R_OK):
        raise UserError(f"--csv {path}: cannot be read (permission denied); check its permissions")
    try:
        raw = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UserError(f"--csv {path}: cannot be parsed as CSV ({str(error).splitlines()[0]}); check the file") from error
    except OSError as error:
        raise UserError(f"--csv {path}: cannot be read ({error.strerror or error}); check its permissions") from None
    if raw.empty:
        raise UserError(f"--csv {path} has no rows; add one row per run")
    raw.columns = [str(column) for column in raw.columns]
    return raw


def _explicit_columns(raw: pd.DataFrame, column_map: dict[str, str] | None, loss_column: str | None,
                      params_column: str | None, path: Path) -> dict[str, str]:
    """{canonical: source} from ``--columns``, ``--eval-dataset`` (the loss) and ``--params`` (the params)."""
    explicit = dict(column_map or {})
    present = {column.lower() for column in raw.columns}
    for option, requested, canonical in (("--eval-dataset", loss_column, "loss"), ("--params", params_column, "params")):
        if requested is None:
            continue
        candidates = [requested, f"{requested}_loss", f"eval_{requested}_loss"] if canonical == "loss" else [requested]
        found = next((name for name in candidates if name.lower() in present), None)
        if found is None:
            raise UserError(f"{option}: no column {' or '.join(map(repr, candidates))} in {path}; columns are {', '.join(raw.columns)}")
        explicit[canonical] = found
    return explicit


def _resolve_columns(frame: pd.DataFrame, explicit: dict[str, str], path: Path) -> tuple[dict[str, str], list[str]]:
    """Map canonical names to CSV columns; returns the mapping and notes on aliases used."""
    by_lower = {str(column).strip().lower(): column for column in frame.columns}
    resolved: dict[str, str] = {}
    notes: list[str] = []
    for canonical, source in explicit.items():
        if source.lower() not in by_lower:
            raise UserError(f"--columns {canonical}={source}: no column {source!r} in {path}; columns are {', '.join(map(str, frame.columns))}")
        resolved[canonical] = by_lower[source.lower()]
    for canonical, aliases in COLUMN_ALIASES.items():
        if canonical in resolved:
            continue
        for alias in aliases:
            if alias in by_lower and by_lower[alias] not in resolved.values():
                resolved[canonical] = by_lower[alias]
                if alias != canonical:
                    notes.append(f"column {by_lower[alias]!r} read as {canonical}")
                break
    missing = [name for name in ("budget", "loss") if name not in resolved]
    if "params" not in resolved and "tokens" not in resolved:
        missing.append("params or tokens")
    if missing:
        raise UserError(f"--csv {path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns))}; "
                        "rename them or map with --columns budget=...,loss=...")
    return resolved, notes


def _numeric(frame: pd.DataFrame, column: str, canonical: str, path: Path) -> pd.Series:
    """A column as floats; UserError naming the first bad line (not a number, or an implausible count)."""
    values = pd.to_numeric(frame[column], errors="coerce").astype(float)
    check = count_problem if canonical in COUNT_COLUMNS else metric_problem
    problems = [check(value) for value in values]
    first = next((index for index, problem in enumerate(problems) if problem), None)
    if first is not None:
        raise UserError(f"{path}: column {column!r} ({canonical}) must be {problems[first]}; line {first + 2} has "
                        f"{str(frame[column].iloc[first])!r}; fix or remove that row")
    return values


def _canonical_frame(raw: pd.DataFrame, resolved: dict[str, str], path: Path) -> tuple[pd.DataFrame, list[str]]:
    """Numeric budget, params, tokens, loss (deriving the missing size from C = 6ND); notes on what was derived."""
    runs = raw.copy()
    notes = []
    for canonical in ("budget", "params", "tokens", "loss"):
        if canonical in resolved:
            runs[canonical] = _numeric(raw, resolved[canonical], canonical, path)
    if "params" not in resolved:
        runs["params"] = runs["budget"] / (6.0 * runs["tokens"])
        notes.append("params derived as budget / (6 * tokens) (C = 6ND)")
    if "tokens" not in resolved:
        runs["tokens"] = runs["budget"] / (6.0 * runs["params"])
        notes.append("tokens derived as budget / (6 * params) (C = 6ND)")
    for canonical in ("params", "tokens"):
        problem = next((count_problem(value) for value in runs[canonical] if count_problem(value)), None)
        if problem:
            raise UserError(f"{path}: the derived {canonical} (C = 6ND) must be {problem}; check the budget and size columns")
    return runs, notes


def _add_metric(runs: pd.DataFrame, raw: pd.DataFrame, resolved: dict[str, str], metric: str, loss_column: str | None,
                loss_unit: str | None, path: Path) -> None:
    """Add ``perplexity`` (from a column, exp(loss) for a loss in nats, else NaN) and ``metric``."""
    perplexity_source = resolved.get("perplexity") or next((c for c in runs.columns if c.lower() == "perplexity"), None)
    if perplexity_source is not None and loss_column is None:
        runs["perplexity"] = _numeric(raw, perplexity_source, "perplexity", path)
    elif loss_unit in PERPLEXITY_LOSS_UNITS:
        with np.errstate(over="ignore"):
            runs["perplexity"] = np.exp(runs["loss"])
    else:
        runs["perplexity"] = np.nan
        if metric == "perplexity":
            raise UserError(f"--metric perplexity: {path} has no perplexity column and the loss unit is unknown; pass "
                            "--loss-unit nats if the loss is in nats/token, or fit --metric loss")
    runs["metric"] = runs["loss"] if metric == "loss" else runs["perplexity"]
    if any(metric_problem(value) for value in runs["metric"]):
        raise UserError(f"--csv {path}: perplexity overflows (exp of a large loss); use --metric loss")


def load_csv(path: Path | str, column_map: dict[str, str] | None = None, metric: str = "loss",
             loss_column: str | None = None, params_column: str | None = None, group_by: str | None = None,
             loss_unit: str | None = None) -> Collection:
    """Load an isoFLOP CSV (see module docstring) as a :class:`~analysis.collect.Collection`.

    Args:
        column_map: explicit {canonical: source column}.
        metric: ``loss`` or ``perplexity`` (``perplexity`` column if present, else exp(loss) for a loss in nats).
        loss_column: use this column as the loss instead (``--eval-dataset``; ``NAME`` or ``NAME_loss``).
        params_column: use this column as params instead (``--params KIND`` → ``params_KIND``).
        group_by: ``--group-by`` (comma-separated columns); None picks identity columns automatically.
        loss_unit: ``--loss-unit``, e.g. ``nats/token``; None when unknown.
    """
    path = Path(path)
    raw = read_table(path)
    resolved, notes = _resolve_columns(raw, _explicit_columns(raw, column_map, loss_column, params_column, path), path)
    runs, derived_notes = _canonical_frame(raw, resolved, path)
    notes += derived_notes
    _add_metric(runs, raw, resolved, metric, loss_column, loss_unit, path)
    if group_by is not None:
        group_columns = resolve_group_columns(raw, group_by, str(path))
    else:
        group_columns = default_group_columns(runs, resolved)
    method_column = resolved.get("method")
    if not group_columns and method_column is not None:  # one method in the file: the group keeps its name
        group_columns = [method_column]
    runs["method"] = group_labels(runs, group_columns)
    notes.append(f"groups by {', '.join(map(repr, group_columns))}" if group_columns
                 else "no column splits the rows into groups: one group named 'all'")
    warnings = [warning for warning in [pooled_points_warning(runs, group_columns)] if warning]
    runs["run_id"] = [f"row{index + 2}" for index in range(len(runs))]
    runs = runs.sort_values(["method", "budget", "params"], ignore_index=True)
    notes.insert(0, f"metric: {metric} from column {resolved['loss']!r}")
    return Collection(runs=runs, excluded=[], notes=notes, source=str(path), params_derived="params" not in resolved,
                      kind="csv", loss_unit=loss_unit, group_columns=tuple(group_columns), warnings=warnings)
