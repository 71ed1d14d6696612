"""The typed records a run leaves in the sweep directory, written and read through one class each.

- :class:`PlanRow`: one row of ``plan.csv`` (= ``isoflop plan --format csv``),
  built by the planner's command, read by ``isoflop status``.
- :class:`JobEvent`: one line of a run's ``jobs.jsonl`` (submissions and job
  events), written by submission and cancel, read by ``isoflop status``.
- :class:`RunResult`: ``result.json``, written by the trainer at the end of a
  run, read by the trainer (a completed run is not trained again), by
  ``isoflop status`` and by the analysis.

The version rules are :mod:`isoflop.record_format`'s. ``plan.csv`` version 1
has no version column (its bytes are ``isoflop plan``'s CSV, kept stable); a
later version adds one. Torch-free.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from isoflop.atomic_files import append_jsonl, csv_text, finite_or_null, write_atomic
from isoflop.record_format import (
    RecordError,
    check_version,
    optional_field,
    record_from_mapping,
    records_from_jsonl,
    without_unused_optional_fields,
)

if TYPE_CHECKING:
    from isoflop.run_spec import RunSpec


def _read_text(path: Path, kind: str) -> str | None:
    """The file's text, None when it does not exist; RecordError when it cannot be read."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        fix = ("check the file's permissions" if isinstance(error, PermissionError) else
               "restore the file from a copy, or move what is in its place aside")
        raise RecordError(f"{path}: cannot read the {kind} ({reason}); {fix}") from None


FOLDER_NAME_RULE = "must be one folder's name: not empty, without '/' or '\\', not '.' or '..'"
"""What :func:`is_folder_name` accepts, for the messages that refuse a name."""


def is_folder_name(name: str) -> bool:
    """Whether ``name`` can name a folder inside ``runs/`` (no separator, not ``.``/``..``)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


# ---- plan.csv --------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlanRow:
    """One planned run: shape, exact accounting (params, FLOPs per token), tokens and schedule.

    Attributes (units): ``budget`` and ``realized_flops`` in training FLOPs;
    ``n_params_*`` in parameters (``active``: those one token reads);
    ``flops_per_token_*`` in FLOPs per token (``forward``/``train`` exact matmul
    counts, ``6n``/``6n_non_embedding`` the 6·N conventions); ``tokens`` and
    ``steps`` of the run; ``tokens_per_param`` = tokens per active
    non-embedding parameter; ``realized_over_budget`` = realized / budget;
    ``causal``: whether the FFW keeps a token's output independent of later
    tokens in training (a plan.csv without the column is all causal: no
    option that breaks it existed then).
    A branch (``strategy: cooldown_branches``) also has ``trunk_id`` and
    ``fork_step``, the step of the trunk it starts from; other rows have neither
    column. ``trunks.csv`` holds the trunks in the same schema.
    """

    VERSION: ClassVar[int] = 1
    KIND: ClassVar[str] = "plan"

    run_id: str
    method: str
    budget: float
    n_layers: int
    d_model: int
    n_heads: int
    ffw: str
    ffw_family: str
    n_params_total: int
    n_params_active: int
    n_params_embedding: int
    n_params_active_non_embedding: int
    flops_per_token_forward: float
    flops_per_token_train: float
    flops_per_token_6n: float
    flops_per_token_6n_non_embedding: float
    tokens: int
    steps: int
    batch_size: int
    seq_len: int
    tokens_per_param: float
    realized_flops: float
    realized_over_budget: float
    learning_rate: float
    causal: bool = True  # False: the FFW lets later tokens of a sequence change earlier outputs in training
    trunk_id: str | None = optional_field(None)
    fork_step: int | None = optional_field(None)

    @classmethod
    def from_run_spec(cls, run: RunSpec) -> PlanRow:
        """The row of a planned run (numbers as the accounting gives them)."""
        backbone, costs = run.model.backbone, run.costs
        accounting = {name: costs[name] for name in (
            "n_params_total", "n_params_active", "n_params_embedding", "n_params_active_non_embedding",
            "flops_per_token_forward", "flops_per_token_train", "flops_per_token_6n",
            "flops_per_token_6n_non_embedding")}
        return cls(run_id=run.run_id, method=run.method, budget=run.budget_flops, n_layers=backbone.n_layers,
                   d_model=backbone.d_model, n_heads=backbone.n_heads, ffw=run.model.ffw.summary(),
                   ffw_family=run.model.ffw.family, **accounting, tokens=run.tokens, steps=run.steps,
                   batch_size=run.batch_size, seq_len=run.seq_len,
                   tokens_per_param=run.tokens / costs["n_params_active_non_embedding"],
                   realized_flops=run.realized_flops,
                   realized_over_budget=run.realized_flops / run.budget_flops,
                   learning_rate=run.learning_rate, causal=run.model.ffw.causal, trunk_id=run.trunk_id,
                   fork_step=run.cooldown_start_step if run.trunk_id else None)

    def to_dict(self) -> dict[str, Any]:
        """The row's columns in order (version 1 writes no version column; a row that is
        no branch no trunk_id and fork_step)."""
        return without_unused_optional_fields(self, {column.name: getattr(self, column.name)
                                                     for column in fields(self)})

    @staticmethod
    def csv_text(rows: Iterable[PlanRow]) -> str:
        """``plan.csv``: a header of the column names, one line a row."""
        return csv_text([row.to_dict() for row in rows])

    @classmethod
    def read_csv(cls, path: Path) -> dict[str, PlanRow]:
        """``plan.csv``'s rows by run_id ({} when there is no such file).

        Raises:
            RecordError: for an unreadable file, a row of an unknown version or a malformed row.
        """
        text = _read_text(path, cls.KIND)
        if text is None or not text.strip():  # a plan of no rows is written empty
            return {}
        fix = f"delete {path.name}, and the `isoflop submit` that made the sweep writes it again"
        rows: dict[str, PlanRow] = {}
        try:
            reader = csv.DictReader(text.splitlines())
            required = {column.name for column in fields(cls)
                        if column.default is MISSING and column.default_factory is MISSING}
            missing = sorted(required - set(reader.fieldnames or ()))
            if missing:  # cut short, or not a plan: the rows below could not say so
                raise RecordError(f"{path}: not a valid plan (its header lacks {', '.join(missing[:3])}"
                                  f"{', ...' if len(missing) > 3 else ''}); {fix}")
            for line, values in enumerate(reader, start=2):
                source = f"{path} line {line}"
                check_version(values, cls.KIND, cls.VERSION, source)
                row = record_from_mapping(cls, values, cls.KIND, source, fix=fix)
                if not is_folder_name(row.run_id):
                    raise RecordError(f"{source}: not a valid plan (run_id {row.run_id!r} is not a folder name); "
                                      f"{fix}")
                rows[row.run_id] = row
        except csv.Error as error:
            raise RecordError(f"{path}: not a valid plan ({error}); {fix}") from None
        return rows


# ---- jobs.jsonl ------------------------------------------------------------------------------

JobEventKind = Literal["submitted", "started", "checkpointed", "requeue_refused", "failed", "finished",
                       "cancelled"]


@dataclass(frozen=True)
class JobEvent:
    """One line of ``jobs.jsonl``: something a scheduler job of the run did, or had done to it.

    Attributes:
        event: submitted | started | checkpointed | requeue_refused | failed | finished | cancelled.
        time: UNIX time of the event (seconds).
        job_id: the scheduler's id (SLURM ``123_4`` for array task 4; the
            controller's pid for local jobs; ``debug-...`` in-process).
        executor, code_hash, isoflop_version: ``submitted``: debug | local |
            slurm, the code snapshot the job imports (``code/<hash>/``), the
            package version.
        host, pid, code: ``started``: where the job runs and the code folder it
            imported; ``host`` of a ``submitted`` event: where it was submitted
            (a local job can only be looked at there).
        saved: ``checkpointed``: whether a checkpoint was written.
        error: ``failed`` / ``requeue_refused``: the exception, one line.
        status: ``finished``: the run's status (completed | diverged).
    """

    VERSION: ClassVar[int] = 1
    KIND: ClassVar[str] = "job event"

    event: JobEventKind
    time: float
    job_id: str | None = None
    executor: str | None = None
    code_hash: str | None = None
    isoflop_version: str | None = None
    host: str | None = None
    pid: int | None = None
    code: str | None = None
    saved: bool | None = None
    error: str | None = None
    status: str | None = None
    version: int = VERSION

    def __post_init__(self) -> None:
        if self.event == "submitted" and (self.job_id is None or self.executor is None):
            raise ValueError("a submitted event needs its job_id and executor")

    @classmethod
    def now(cls, event: JobEventKind, **details: Any) -> JobEvent:
        """An event that happens now."""
        return cls(event=event, time=time.time(), **details)

    def to_dict(self) -> dict[str, Any]:
        """The JSON line's object: the fields that are set."""
        return {name: value for name, value in asdict(self).items() if value is not None}

    def append_to(self, path: Path) -> None:
        """Append this event to ``path`` (one ``write``: lines never interleave)."""
        append_jsonl(path, self.to_dict())

    @classmethod
    def read_all(cls, path: Path) -> list[JobEvent]:
        """Every event of ``path``, oldest first; a torn line (a crash mid-write) is skipped.

        Raises:
            RecordError: for a line of an unknown version or one that is no job event.
        """
        return records_from_jsonl(cls, path, cls.KIND, cls.VERSION, fix="remove that line",
                                  unreadable_fix="move it aside (the run's scheduler history is then forgotten)")


# ---- result.json -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ParamCounts:
    """Parameters of the model (integers in the files isoflop writes): all of them,
    those one token reads, the embedding table's, and the non-embedding ones."""

    total: float | None
    active: float | None
    embedding: float | None
    non_embedding: float | None
    active_non_embedding: float | None


@dataclass(frozen=True)
class EvalScores:
    """One evaluation corpus: mean loss (nats per predicted token), perplexity = exp(loss)
    (None when not finite), tokens evaluated, tokens asked for, and whether the corpus
    held fewer (``capped``)."""

    loss: float | None
    perplexity: float | None
    tokens: int
    requested_tokens: int | None = None
    capped: bool = False


@dataclass(frozen=True)
class RunResult:
    """``result.json``: what a finished run did, written once at its end (its presence = done).

    Attributes:
        status: ``completed``, or ``diverged`` (a NaN/inf loss stopped it before
            the update of step ``diverged_at_step``).
        steps, tokens: optimizer steps done and training tokens seen (an integer).
        realized_flops: tokens x flops_per_token_train (training FLOPs).
        params: the accounting's parameter counts.
        final_train_loss: mean training loss (nats/token) of the last logging
            interval; None unless completed.
        eval: scores by corpus (``validation`` and every ``data.eval_datasets`` name).
        routing: routing statistics by layer (expert_usage, unevenness, ...;
            :mod:`models.routing` owns their names).
        wall_time_s, tokens_per_s, mfu: training time over all attempts, mean
            throughput, model FLOP utilisation (None: unknown peak).
        code_version: the git commit (or package version) that trained it.
        data: :meth:`isoflop.data.TrainingData.describe` (source, content hash,
            documents, epochs, ...): a mapping whose keys that module owns.
        device, world_size: the accelerator's name and the process count.
        notes: remarks such as capped evaluation corpora.
    """

    VERSION: ClassVar[int] = 1
    KIND: ClassVar[str] = "run result"

    run_id: str
    study: str
    method: str
    budget_flops: float
    status: Literal["completed", "diverged"]
    diverged_at_step: int | None
    steps: int
    tokens: float
    realized_flops: float
    flops_per_token_train: float
    params: ParamCounts
    final_train_loss: float | None
    eval: dict[str, EvalScores]
    routing: dict[str, dict[str, Any]]
    wall_time_s: float
    tokens_per_s: float
    mfu: float | None
    code_version: str
    data: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    world_size: int | None = None
    notes: tuple[str, ...] = ()
    version: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, the version first."""
        values = asdict(self)
        values["notes"] = list(self.notes)
        return {"version": values.pop("version"), **values}

    def write(self, path: Path) -> None:
        """``result.json`` atomically, NaN/inf as null."""
        write_atomic(path, json.dumps(finite_or_null(self.to_dict()), indent=2, allow_nan=False))

    @classmethod
    def from_dict(cls, values: Any, source: str = "result.json") -> RunResult:
        """The result of a ``result.json`` object. Raises RecordError."""
        if isinstance(values, dict):
            check_version(values, cls.KIND, cls.VERSION, source)
        return record_from_mapping(cls, values, cls.KIND, source)

    @classmethod
    def read(cls, path: Path) -> RunResult | None:
        """``path``'s result, or None while the run has not written one.

        Raises:
            RecordError: for an unreadable or malformed file, or an unknown version.
        """
        text = _read_text(path, cls.KIND)
        if text is None:
            return None
        try:
            values = json.loads(text)
        except ValueError as error:
            raise RecordError(f"{path}: not a valid {cls.KIND} (not JSON: {error}); restore the file "
                              "from a copy or delete it") from None
        return cls.from_dict(values, str(path))
