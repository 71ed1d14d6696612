"""Read external isoFLOP results from a CSV file into the same tidy frame as a sweep.

Documented columns (one row per run):

- ``budget``  (required) training compute in FLOPs;
- ``loss``    (required) the evaluation loss to fit;
- ``params``  parameter count; ``tokens`` training tokens. At least one of the
  two is required; the missing one is derived from C = 6·N·D
  (``tokens = budget / (6 · params)`` or ``params = budget / (6 · tokens)``)
  and the report says so;
- ``method``  (optional) the group; without it every row belongs to ``all``;
- anything else is kept (e.g. other evaluation losses, ``perplexity``).

Column names are matched case-insensitively, first through ``--columns``
(``canonical=source`` pairs, e.g. ``budget=compute_budget``), then through the
automatic aliases in :data:`COLUMN_ALIASES` (which cover the published
Llama-3 isoFLOP points: ``compute_budget``, ``training_tokens``, ``validation_loss``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.collect import Collection
from isoflop.errors import UserError

COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "method": ("method", "model", "family", "group"),
    "budget": ("budget", "budget_flops", "compute_budget", "compute", "flops", "c"),
    "params": ("params", "parameters", "n_params", "num_params", "model_size", "n"),
    "tokens": ("tokens", "training_tokens", "n_tokens", "num_tokens", "data", "d"),
    "loss": ("loss", "validation_loss", "val_loss", "eval_loss", "final_loss"),
}


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
    return resolved, notes


def _numeric(frame: pd.DataFrame, column: str, canonical: str, path: Path, positive: bool) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() | ~np.isfinite(values) | ((values <= 0) if positive else False)
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        rule = "a positive number" if positive else "a number"
        raise UserError(f"{path}: column {column!r} ({canonical}) must be {rule}; line {first + 2} has {frame[column].iloc[first]!r}; fix or remove that row")
    return values.astype(float)


def load_csv(path: Path | str, column_map: dict[str, str] | None = None, metric: str = "loss",
             loss_column: str | None = None, params_column: str | None = None) -> Collection:
    """Load an isoFLOP CSV (see module docstring) as a :class:`~analysis.collect.Collection`.

    Args:
        column_map: explicit {canonical: source column}.
        metric: ``loss`` or ``perplexity`` (``perplexity`` column if present, else exp(loss)).
        loss_column: use this column as the loss instead (``--eval-dataset``; ``NAME`` or ``NAME_loss``).
        params_column: use this column as params instead (``--params KIND`` → ``params_KIND``).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--csv {path}: no such file; pass an existing CSV with columns method, budget, params, tokens, loss")
    try:
        raw = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UserError(f"--csv {path}: cannot be parsed as CSV ({str(error).splitlines()[0]}); check the file") from error
    if raw.empty:
        raise UserError(f"--csv {path} has no rows; add one row per run")
    explicit = dict(column_map or {})
    for option, requested, canonical in (("--eval-dataset", loss_column, "loss"), ("--params", params_column, "params")):
        if requested is None:
            continue
        candidates = [requested, f"{requested}_loss", f"eval_{requested}_loss"] if canonical == "loss" else [requested]
        found = next((name for name in candidates if name.lower() in {str(c).lower() for c in raw.columns}), None)
        if found is None:
            raise UserError(f"{option}: no column {' or '.join(map(repr, candidates))} in {path}; columns are {', '.join(map(str, raw.columns))}")
        explicit[canonical] = found
    resolved, notes = _resolve_columns(raw, explicit, path)
    missing = [name for name in ("budget", "loss") if name not in resolved]
    if "params" not in resolved and "tokens" not in resolved:
        missing.append("params or tokens")
    if missing:
        raise UserError(f"--csv {path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, raw.columns))}; rename them or map with --columns budget=...,loss=...")
    runs = raw.copy()
    runs.columns = [str(column) for column in runs.columns]
    for canonical in ("budget", "params", "tokens", "loss"):
        if canonical in resolved:
            runs[canonical] = _numeric(raw, resolved[canonical], canonical, path, positive=canonical != "loss")
    if "method" in resolved:
        runs["method"] = raw[resolved["method"]].astype(str)
    else:
        runs["method"] = "all"
        notes.append("no method column: all rows form one group named 'all'")
    params_derived = "params" not in resolved
    if params_derived:
        runs["params"] = runs["budget"] / (6.0 * runs["tokens"])
        notes.append("params derived as budget / (6 * tokens) (C = 6ND)")
    if "tokens" not in resolved:
        runs["tokens"] = runs["budget"] / (6.0 * runs["params"])
        notes.append("tokens derived as budget / (6 * params) (C = 6ND)")
    perplexity_source = resolved.get("perplexity") or next((c for c in runs.columns if c.lower() == "perplexity"), None)
    if perplexity_source is not None and loss_column is None:
        runs["perplexity"] = _numeric(raw, perplexity_source, "perplexity", path, positive=True)
    else:
        runs["perplexity"] = np.exp(runs["loss"])
    runs["metric"] = runs["loss"] if metric == "loss" else runs["perplexity"]
    if not np.all(np.isfinite(runs["metric"])):
        raise UserError(f"--csv {path}: perplexity overflows (exp of a large loss); use --metric loss")
    runs["run_id"] = [f"row{index + 2}" for index in range(len(runs))]
    runs = runs.sort_values(["method", "budget", "params"], ignore_index=True)
    notes.insert(0, f"metric: {metric} from column {resolved['loss']!r}")
    return Collection(runs=runs, excluded=[], notes=notes, source=str(path), params_derived=params_derived)
