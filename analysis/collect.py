"""Collect a sweep directory into a tidy DataFrame, one row per run.

Facts come only from ``<sweep>/runs/<run_id>/run.json`` and ``result.json``
(never from directory names or logs). Canonical columns used by the fits:

- ``method``: the run's method name; ``budget``: planned budget in FLOPs;
- ``params``: parameter count of the kind chosen with ``params_kind``
  (default ``active``: the parameters a token touches, which is what the
  C = 6·N·D isoFLOP accounting counts; total parameters of a PEER/MoE layer
  would put sparse methods far to the right of their compute);
- ``tokens``: training tokens actually seen; ``loss``: the chosen evaluation
  loss (nats/token); ``perplexity``: its perplexity; ``metric``: the value
  that is fitted (loss or perplexity).

Kept alongside: every parameter kind (``params_total``, ``params_active``, ...),
every evaluation dataset (``eval_<name>_loss``, ``eval_<name>_perplexity``),
FLOP bookkeeping, the FFW configuration (``ffw_<field>``), the backbone
(``backbone_<field>``) and routing statistics (``expert_usage``,
``routing_unevenness``: mean over routed layers, as in He 2024, Table 2).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from analysis.fixed_backbone import StudyLayout, read_study_layout
from analysis.formatting import budget_text
from analysis.options import DEFAULT_EVAL_DATASET, DEFAULT_PARAMS_KIND, METRICS, PARAMS_KINDS, SWEEP_LOSS_UNIT
from analysis.records import ExcludedRun
from isoflop.errors import UserError
from isoflop.record_format import RecordError
from isoflop.run_records import EvalScores, RunResult

MAX_PLAUSIBLE_COUNT = 1e40
"""FLOPs, parameters and tokens above this are a unit or parsing mistake (frontier runs are ~1e26 FLOPs)."""
MAX_PLAUSIBLE_METRIC = 1e15
"""A fitted loss or perplexity beyond +-this is a unit or parsing mistake (and would overflow the fits)."""


@dataclass
class Collection:
    """The runs that enter the fits, plus everything that was left out and why.

    ``kind`` is ``sweep`` (run directories) or ``csv`` (external points).
    ``params_derived`` is True when the ``params`` column was derived from C = 6·N·D
    (a CSV without parameter counts) rather than read. ``loss_unit`` is None when
    unknown (a CSV without ``--loss-unit``). ``group_columns`` are the CSV columns
    that define the groups (the ``method`` column holds their labels);
    ``warnings`` are printed on stderr and listed in the report. ``layout`` is
    what the sweep's study.yaml records about its models (None for CSV input or
    a sweep without one).
    """

    runs: pd.DataFrame
    excluded: list[ExcludedRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: str = ""
    params_derived: bool = False
    kind: str = "sweep"
    loss_unit: str | None = SWEEP_LOSS_UNIT
    group_columns: tuple[str, ...] = ()
    warnings: list[str] = field(default_factory=list)
    layout: StudyLayout | None = None

    def methods_left_out(self) -> dict[str, int]:
        """Methods none of whose runs entered the fits (every one excluded: diverged, not
        finished, ...), with their number of excluded runs: absent from every fit and figure."""
        fitted = set(self.runs["method"]) if "method" in self.runs else set()
        counts: dict[str, int] = {}
        for run in self.excluded:
            if run.method is not None and run.method not in fitted:
                counts[run.method] = counts.get(run.method, 0) + 1
        return counts


def count_problem(value: float) -> str | None:
    """What is wrong with a FLOP, parameter or token count (None when it is plausible)."""
    if not math.isfinite(value):
        return "a finite number"
    if not 1.0 <= value <= MAX_PLAUSIBLE_COUNT:
        return f"a positive count, at least 1 and at most {budget_text(MAX_PLAUSIBLE_COUNT)}"
    return None


def metric_problem(value: float) -> str | None:
    """What is wrong with a fitted value, a loss or a perplexity (None when it is plausible)."""
    if not math.isfinite(value) or abs(value) > MAX_PLAUSIBLE_METRIC:
        return f"a finite number between -{budget_text(MAX_PLAUSIBLE_METRIC)} and {budget_text(MAX_PLAUSIBLE_METRIC)}"
    return None


def safe_exp(value: float) -> float:
    """exp(value), or inf where it overflows (a perplexity of a huge loss)."""
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


def _read_json(path: Path) -> dict:
    with path.open() as handle:
        content = json.load(handle)
    if not isinstance(content, dict):
        raise ValueError("top level is not a JSON object")
    return content


def _scalar_items(mapping: object, prefix: str) -> dict[str, object]:
    """Flatten the scalar fields of a mapping into prefixed columns."""
    if not isinstance(mapping, dict):
        return {}
    return {f"{prefix}{key}": value for key, value in mapping.items() if isinstance(value, (int, float, str, bool)) or value is None}


def _routing_means(routing: object) -> dict[str, float]:
    """Mean expert usage and unevenness over routed layers (He 2024, Table 2); empty for dense runs."""
    if not isinstance(routing, dict) or not routing:
        return {}
    usages = [layer["expert_usage"] for layer in routing.values() if isinstance(layer, dict) and "expert_usage" in layer]
    unevenness = [layer["unevenness"] for layer in routing.values() if isinstance(layer, dict) and "unevenness" in layer]
    means: dict[str, float] = {"routed_layers": float(len(routing))}
    if usages:
        means["expert_usage"] = float(sum(usages) / len(usages))
    if unevenness:
        means["routing_unevenness"] = float(sum(unevenness) / len(unevenness))
    return means


def run_row(run_spec: dict, result: RunResult, params_kind: str, eval_dataset: str, metric: str) -> dict[str, object]:
    """One tidy row from a run's run.json (may be empty) and result.json; KeyError/TypeError on missing facts
    (an evaluation corpus the run lacks, a null loss or parameter count)."""
    model = run_spec.get("model", {}) if isinstance(run_spec.get("model"), dict) else {}
    params = asdict(result.params)
    loss, perplexity = _loss_and_perplexity(result.eval[eval_dataset])
    row: dict[str, object] = {
        "run_id": result.run_id,
        "method": result.method,
        "budget": float(result.budget_flops),
        "params": float(params[params_kind]),
        "tokens": float(result.tokens),
        "loss": loss,
        "perplexity": perplexity,
        "metric": loss if metric == "loss" else perplexity,
    }
    row.update({f"params_{kind}": float(value) for kind, value in params.items()})
    for name, scores in result.eval.items():
        if scores.loss is not None:
            row[f"eval_{name}_loss"], row[f"eval_{name}_perplexity"] = _loss_and_perplexity(scores)
    for key in ("study", "status", "steps", "realized_flops", "flops_per_token_train", "final_train_loss",
                "wall_time_s", "tokens_per_s", "mfu", "code_version"):
        row[key] = getattr(result, key)
    row.update(_scalar_items(model.get("ffw"), "ffw_"))
    row.update(_scalar_items(model.get("backbone"), "backbone_"))
    row.update(_routing_means(result.routing))
    return row


def _loss_and_perplexity(scores: EvalScores) -> tuple[float, float]:
    """Mean loss and perplexity of one corpus; a perplexity recorded as null (it overflowed) is exp(loss) or inf.
    TypeError on a null loss."""
    loss = float(scores.loss)  # type: ignore[arg-type] - None raises TypeError: the run lacks that fact
    return loss, float(scores.perplexity) if scores.perplexity is not None else safe_exp(loss)


def check_sweep_directory(sweep_dir: Path) -> None:
    """Raise UserError (one line) unless ``sweep_dir`` is a folder."""
    if not sweep_dir.is_dir():
        what = "is not a folder" if sweep_dir.exists() else "does not exist"
        raise UserError(f"sweep directory {sweep_dir} {what}; pass the directory made by `isoflop submit` or use --csv FILE")


def _run_directories(sweep_dir: Path) -> list[Path]:
    runs_dir = sweep_dir / "runs"
    check_sweep_directory(sweep_dir)
    base = runs_dir if runs_dir.is_dir() else sweep_dir
    if not os.access(base, os.R_OK | os.X_OK):
        raise UserError(f"cannot list the runs in {base} (permission denied); check its permissions")
    try:
        return sorted(path for path in base.iterdir()
                      if path.is_dir() and ((path / "run.json").exists() or (path / "result.json").exists()))
    except OSError as error:
        raise UserError(f"cannot list the runs in {base} ({error.strerror or error}); check its permissions") from None


@dataclass
class RunOutcome:
    """What one run directory contributes: a row, or an exclusion; plus notes and the eval sets it names."""

    row: dict[str, object] | None = None
    excluded: ExcludedRun | None = None
    notes: list[str] = field(default_factory=list)
    datasets: set[str] = field(default_factory=set)


def _exclusion_reason(result: RunResult) -> str | None:
    """Why a finished run's result.json keeps it out of the fits (None: it enters)."""
    if result.status == "diverged":
        return f"diverged at step {result.diverged_at_step}; excluded"
    if result.status != "completed":
        return f"status {result.status!r} is not 'completed'; excluded"
    return None


def _row_problem(row: dict[str, object]) -> str | None:
    """Why a row cannot be fitted: a non-finite metric or an implausible count (None: fine)."""
    problem = metric_problem(float(row["metric"]))
    if problem:
        return f"the fitted metric {row['metric']!r} must be {problem} (a perplexity that overflows, or a NaN loss); skipped"
    for key in ("budget", "params", "tokens"):
        problem = count_problem(float(row[key]))
        if problem:
            return f"{key} {row[key]!r} must be {problem}; skipped"
    return None


def collect_run(run_dir: Path, params_kind: str, eval_dataset: str, metric: str) -> RunOutcome:
    """Read one run directory (run.json, then result.json) into a row or an exclusion with its reason."""
    run_id = run_dir.name
    outcome = RunOutcome()
    run_spec: dict = {}
    if (run_dir / "run.json").exists():
        try:
            run_spec = _read_json(run_dir / "run.json")
            run_id = str(run_spec.get("run_id", run_id))
        except (OSError, ValueError) as error:
            outcome.notes.append(f"run {run_id}: corrupt run.json ({error}); run.json ignored")
    method = run_spec.get("method") if isinstance(run_spec.get("method"), str) else None
    if not (run_dir / "result.json").exists():
        outcome.excluded = ExcludedRun(run_id, "missing or partial: run.json present but no result.json (not finished)",
                                       method)
        return outcome
    try:
        result = RunResult.read(run_dir / "result.json")
    except RecordError as error:  # unreadable, malformed, or of a format version this isoflop does not read
        outcome.excluded = ExcludedRun(run_id, f"corrupt result.json ({error.message}); skipped", method)
        return outcome
    run_id, method = result.run_id, result.method
    outcome.datasets.update(result.eval)
    reason = _exclusion_reason(result)
    if reason is None:
        try:
            outcome.row = run_row(run_spec, result, params_kind, eval_dataset, metric)
        except (KeyError, TypeError, ValueError) as error:
            reason = f"result.json lacks a needed fact ({type(error).__name__}: {error}); skipped"
    if outcome.row is not None:
        reason = _row_problem(outcome.row)
    if reason is not None:
        outcome.row, outcome.excluded = None, ExcludedRun(run_id, reason, method)
    return outcome


def collect_sweep(sweep_dir: Path | str, params_kind: str = DEFAULT_PARAMS_KIND, eval_dataset: str = DEFAULT_EVAL_DATASET,
                  metric: str = "loss") -> Collection:
    """Read every run of a sweep directory; completed runs become rows, the others are listed with a reason.

    Raises:
        UserError: no runs, no completed runs, or the evaluation dataset is absent from every run.
    """
    sweep_dir = Path(sweep_dir)
    if params_kind not in PARAMS_KINDS:
        raise UserError(f"--params {params_kind!r} is unknown; choose one of {', '.join(PARAMS_KINDS)}")
    if metric not in METRICS:
        raise UserError(f"--metric {metric!r} is unknown; choose {' or '.join(METRICS)}")
    run_dirs = _run_directories(sweep_dir)
    if not run_dirs:
        raise UserError(f"no runs found in {sweep_dir} (expected runs/<run_id>/run.json); check the path or run `isoflop submit` first")
    outcomes = [collect_run(run_dir, params_kind, eval_dataset, metric) for run_dir in run_dirs]
    rows = [outcome.row for outcome in outcomes if outcome.row is not None]
    excluded = [outcome.excluded for outcome in outcomes if outcome.excluded is not None]
    if not rows:
        datasets_seen = set().union(*(outcome.datasets for outcome in outcomes))
        if datasets_seen and eval_dataset not in datasets_seen:
            raise UserError(f"--eval-dataset {eval_dataset!r} is in no result.json; available: {', '.join(sorted(datasets_seen))}")
        reasons = "; ".join(f"{run.run_id}: {run.reason}" for run in excluded[:3])
        more = f"; and {len(excluded) - 3} more" if len(excluded) > 3 else ""
        raise UserError(f"no completed runs to analyse in {sweep_dir} ({len(excluded)} excluded: {reasons}{more}); "
                        "wait for runs still training, or see `isoflop status` for why the others ended")
    runs = pd.DataFrame(rows).sort_values(["method", "budget", "params"], ignore_index=True)
    notes = [f"params kind: {params_kind}", f"metric: {metric} on eval dataset {eval_dataset!r}",
             *(note for outcome in outcomes for note in outcome.notes)]
    try:
        layout = read_study_layout(sweep_dir)
    except ValueError as error:
        layout = None
        notes.append(f"study.yaml not read ({error}); whether the study pins its backbone is judged from the runs")
    return Collection(runs=runs, excluded=excluded, notes=notes, source=str(sweep_dir), layout=layout)


def to_parquet(frame: pd.DataFrame, path: Path | str) -> Path:
    """Write the tidy frame as Parquet; UserError with the fix when pyarrow is missing."""
    try:
        import pyarrow  # noqa: F401
    except ImportError as error:
        raise UserError("writing parquet needs pyarrow; `pip install pyarrow` or write CSV instead") from error
    path = Path(path)
    frame.to_parquet(path, index=False)
    return path
