"""The sweep directory: where a study's plan, runs, results and job records live.

```
<root>/<study>/
    sweep.json               isoflop version, sweep name, creation time
    study.yaml               the resolved study config (compared on resubmit)
    plan.csv                 the plan, one row per run (schema of `isoflop plan --format csv`)
    trunks.csv               strategy cooldown_branches: the trunks, in plan.csv's schema
    ladders.jsonl            `isoflop study --adaptive`: how each budget's ladder was placed (isoflop.adaptive_ladder)
    code/<hash>/             snapshot of the packages the jobs import (isoflop, models, kernels)
    submitit/                submitit's pickles and raw stdout/stderr, named by job id
    runs/<run_id>/
        run.json             the RunSpec, written before the first launch
        jobs.jsonl           one JSON object a line: submissions and job events
        metrics.jsonl        training log (written by the trainer)
        checkpoints/         for exact resume (written by the trainer)
        result.json          written atomically at the end; its presence = done
        logs/                links to this run's job stdout/stderr
        fork.json            a branch: the trunk checkpoint it was given (isoflop.forks)
    trunks/<trunk_id>/       strategy cooldown_branches: each trunk, laid out as a run
        forks/step_NNNNNN/   its fork checkpoints, with cluster.keep_fork_checkpoints only
```

Each file has one typed record that writes and reads it: ``plan.csv`` rows
are :class:`~isoflop.run_records.PlanRow`, ``jobs.jsonl`` lines
:class:`~isoflop.run_records.JobEvent`, ``result.json``
:class:`~isoflop.run_records.RunResult`, ``run.json``
:class:`~isoflop.run_spec.RunSpec`. Files are replaced atomically and
``jobs.jsonl`` is appended one line per write (:mod:`isoflop.atomic_files`).
Torch-free.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from isoflop.atomic_files import write_atomic, write_json_atomic
from isoflop.errors import UserError, file_system_error
from isoflop.run_records import JobEvent, PlanRow, RunResult
from isoflop.study_config import EXECUTION_SETTINGS

MARKER = "sweep.json"


def last_submission(events: list[JobEvent]) -> JobEvent | None:
    """The newest ``submitted`` event among a run's ``events``, or None."""
    submissions = [event for event in events if event.event == "submitted"]
    return submissions[-1] if submissions else None


class RunDir:
    """``runs/<run_id>/`` of a sweep."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.run_id = self.path.name

    run_json = property(lambda self: self.path / "run.json")
    jobs_jsonl = property(lambda self: self.path / "jobs.jsonl")
    metrics_jsonl = property(lambda self: self.path / "metrics.jsonl")
    result_json = property(lambda self: self.path / "result.json")
    logs = property(lambda self: self.path / "logs")
    fork_json = property(lambda self: self.path / "fork.json")

    def result(self) -> RunResult | None:
        """result.json, or None while the run has not ended."""
        return RunResult.read(self.result_json)

    def events(self) -> list[JobEvent]:
        """Every event of jobs.jsonl, oldest first."""
        return JobEvent.read_all(self.jobs_jsonl)

    def record_event(self, event: JobEvent) -> None:
        """Append ``event`` to jobs.jsonl."""
        event.append_to(self.jobs_jsonl)

    def last_metrics(self) -> dict[str, Any] | None:
        """The last training record (``step`` and ``loss``) of metrics.jsonl, else the last
        record with a ``step``; reads the file's tail only."""
        path = self.metrics_jsonl
        try:
            with path.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - 16384))
                lines = handle.read().decode(errors="replace").splitlines()
        except OSError:
            return None
        fallback = None
        for line in reversed(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "step" in record:
                if "loss" in record:
                    return record
                fallback = fallback or record
        return fallback


WRITE_PROBE_PREFIX = ".write-test-"
"""The empty file :meth:`SweepDir.make_writable_folder` writes and removes at once."""


class SweepDir:
    """A sweep directory (layout in the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    marker = property(lambda self: self.path / MARKER)
    study_yaml = property(lambda self: self.path / "study.yaml")
    plan_csv = property(lambda self: self.path / "plan.csv")
    trunks_csv = property(lambda self: self.path / "trunks.csv")
    runs_dir = property(lambda self: self.path / "runs")
    trunks_dir = property(lambda self: self.path / "trunks")
    submit_lock = property(lambda self: self.path / ".submit.lock")
    code_dir = property(lambda self: self.path / "code")
    submitit_dir = property(lambda self: self.path / "submitit")

    @classmethod
    def open(cls, path: Path | str) -> SweepDir:
        """An existing sweep; UserError if ``path`` is not one."""
        sweep = cls(Path(path))
        if not sweep.marker.is_file():
            raise UserError(f"{path}: not a sweep directory (no {MARKER}); pass the folder that "
                            "`isoflop submit` printed, e.g. <root>/<study>")
        return sweep

    def exists(self) -> bool:
        return self.marker.is_file()

    def started(self) -> bool:
        """Whether the folder holds a sweep, or one whose creation began: a file that only
        isoflop writes there (sweep.json, study.yaml, the submit lock, or ladders.jsonl,
        which ``isoflop study --adaptive`` writes before the rest)."""
        from isoflop.adaptive_ladder import LADDERS_FILE

        return any((self.path / name).exists()
                   for name in (MARKER, self.study_yaml.name, self.submit_lock.name, LADDERS_FILE))

    def run(self, run_id: str) -> RunDir:
        """The folder of run (or trunk) ``run_id``: ``trunks/<run_id>`` when that exists, else ``runs/<run_id>``."""
        trunk = self.trunks_dir / run_id
        return RunDir(trunk if trunk.is_dir() else self.runs_dir / run_id)

    def runs(self, plan_rows: dict[str, PlanRow] | None = None) -> Iterator[RunDir]:
        """Every run of the plan, in plan order (plan.csv, or ``plan_rows`` already
        read from it), else sorted by id."""
        ids = list(self.plan_rows() if plan_rows is None else plan_rows)
        if not ids:
            try:
                ids = sorted(p.name for p in self.runs_dir.iterdir() if p.is_dir())
            except OSError as error:
                raise UserError(f"{self.path}: no plan.csv and no readable runs/ folder ({error.strerror}); "
                                "re-create the sweep with `isoflop submit` (the same study)") from None
        for run_id in ids:
            yield self.run(run_id)

    def plan_rows(self) -> dict[str, PlanRow]:
        """plan.csv rows by run_id."""
        return PlanRow.read_csv(self.plan_csv)

    def trunk_rows(self) -> dict[str, PlanRow]:
        """trunks.csv rows by trunk id ({} for a sweep without trunks)."""
        return PlanRow.read_csv(self.trunks_csv)

    @contextlib.contextmanager
    def submission_lock(self, timeout_s: float | None = None) -> Iterator[None]:
        """Hold the sweep's submission lock: one submitter at a time decides what to submit
        and records it (``isoflop submit``, and trunks submitting their branches; ``isoflop
        cancel``, so that no job is submitted while it cancels). A lock file that cannot be
        opened is a UserError naming the sweep.

        Raises:
            TimeoutError: ``timeout_s`` seconds passed and another process still holds it.
        """
        try:
            lock = open(self.submit_lock, "a")  # noqa: SIM115 - closed below
        except OSError as error:
            raise file_system_error(error, f"lock the sweep {self.path} for submitting") from None
        with lock:
            if timeout_s is None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            else:
                deadline = time.monotonic() + timeout_s
                while True:
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"{self.submit_lock} is held") from None
                        time.sleep(0.2)
            yield

    def trunk(self, trunk_id: str) -> RunDir:
        """``trunks/<trunk_id>/``."""
        return RunDir(self.trunks_dir / trunk_id)

    def make_writable_folder(self) -> None:
        """Create the sweep's folder if needed and check it can be written (UserError naming --root)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f"{WRITE_PROBE_PREFIX}{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise UserError(f"--root: cannot write the sweep directory {self.path} ({error.strerror}); "
                            "pass a writable --root") from None

    def create(self, resolved_yaml: str, plan_rows: list[PlanRow], metadata: dict[str, Any],
               trunk_rows: list[PlanRow] = ()) -> None:
        """Write study.yaml, plan.csv (and trunks.csv) and sweep.json (the last one marks the folder a sweep)."""
        self.make_writable_folder()
        write_atomic(self.study_yaml, resolved_yaml)
        self.write_plan(plan_rows, trunk_rows)
        if not self.marker.is_file():
            write_json_atomic(self.marker, metadata)

    def write_plan(self, rows: list[PlanRow], trunk_rows: list[PlanRow] = ()) -> None:
        """plan.csv: the rows of ``isoflop plan --format csv``; trunks.csv: the trunks, if any."""
        write_atomic(self.plan_csv, PlanRow.csv_text(rows))
        if trunk_rows:
            write_atomic(self.trunks_csv, PlanRow.csv_text(trunk_rows))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def study_changes(old_yaml: str, new_yaml: str, ignore: tuple[str, ...] = EXECUTION_SETTINGS) -> list[str]:
    """``key: old -> new`` for every setting that differs between two study.yaml texts.

    Keys in or under ``ignore`` (where and how jobs run, not what they compute) are
    left out, and so is a setting that the old study.yaml lacks (it was written
    before the setting existed) while the new one holds its dataclass default:
    that default is what the old study did.
    """
    import yaml

    old = _flatten(yaml.safe_load(old_yaml) or {})
    new = _flatten(yaml.safe_load(new_yaml) or {})
    changes = []
    for key in sorted(set(old) | set(new)):
        ignored = any(key == setting or key.startswith(f"{setting}.") for setting in ignore)
        if ignored or old.get(key, "<unset>") == new.get(key, "<unset>"):
            continue
        if key not in old and _setting_default(key) == new[key]:
            continue
        changes.append(f"{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}")
    return changes


def _setting_default(key: str) -> Any:
    """The dataclass default of a dotted study setting (``train.schedule``), or a marker
    that equals nothing when the key has none (a method's setting, a required one)."""
    import dataclasses
    import typing

    from isoflop.study_config import StudyConfig

    owner: Any = StudyConfig
    *path, name = key.split(".")
    for part in path:
        hints = typing.get_type_hints(owner) if dataclasses.is_dataclass(owner) else {}
        owner = hints.get(part)
    fields = {field.name: field for field in dataclasses.fields(owner)} if dataclasses.is_dataclass(owner) else {}
    field = fields.get(name)
    if field is None or field.default is dataclasses.MISSING:
        return object()
    return field.default
