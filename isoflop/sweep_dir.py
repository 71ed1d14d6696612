"""The sweep directory: where a study's plan, runs, results and job records live.

```
<root>/<study>/
    sweep.json               isoflop version, sweep name, creation time
    study.yaml               the resolved study config (compared on resubmit)
    plan.csv                 the plan, one row per run (schema of `isoflop plan --format csv`)
    code/<hash>/             snapshot of the packages the jobs import (isoflop, models, kernels)
    submitit/                submitit's pickles and raw stdout/stderr, named by job id
    runs/<run_id>/
        run.json             the RunSpec, written before the first launch
        jobs.jsonl           one JSON object a line: submissions and job events
        metrics.jsonl        training log (written by the trainer)
        checkpoints/         for exact resume (written by the trainer)
        result.json          written atomically at the end; its presence = done
        logs/                links to this run's job stdout/stderr
```

Every file is written atomically (a temporary file in the same folder, then
``os.replace``); ``jobs.jsonl`` is appended one line per ``write`` on an
``O_APPEND`` descriptor, so a reader never sees half a record. Torch-free.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from isoflop.errors import UserError

MARKER = "sweep.json"


def _umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old or the new file, never a part.

    The file gets the usual permissions (0666 less the umask), not the 0600 of a
    temporary file, so a team sharing a sweep directory can read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(descriptor, 0o666 & ~_umask())
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, value: Any) -> None:
    """:func:`write_atomic` of ``value`` as indented JSON."""
    write_atomic(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single ``write`` (atomic for lines this short)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


def csv_text(rows: list[dict[str, Any]]) -> str:
    """CSV with a header of the first row's keys (empty text for no rows)."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a torn last line (a crash mid-write) is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's object, or None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


@dataclass(frozen=True)
class JobRecord:
    """One submission of a run: which scheduler job ran it, where and when.

    Attributes:
        job_id: the scheduler's id (SLURM ``123_4`` for array task 4; the
            controller's pid for local jobs; ``debug-<time>`` in-process).
        executor: debug | local | slurm.
        submitted_at: UNIX time of the submission.
        code_hash: the code snapshot the job imports (``code/<hash>/``).
        isoflop_version: the package version at submission.
    """

    job_id: str
    executor: str
    submitted_at: float
    code_hash: str
    isoflop_version: str

    def to_dict(self) -> dict[str, Any]:
        return {"event": "submitted", "job_id": self.job_id, "executor": self.executor,
                "time": self.submitted_at, "code_hash": self.code_hash,
                "isoflop_version": self.isoflop_version}


def last_submission(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest ``submitted`` record among a run's jobs.jsonl ``events``, or None."""
    submissions = [event for event in events if event.get("event") == "submitted"]
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

    def result(self) -> dict[str, Any] | None:
        """result.json, or None while the run has not ended."""
        return read_json(self.result_json)

    def events(self) -> list[dict[str, Any]]:
        """Every record of jobs.jsonl, oldest first."""
        return read_jsonl(self.jobs_jsonl)

    def record_event(self, event: str, **fields: Any) -> None:
        """Append ``{"event": event, "time": now, **fields}`` to jobs.jsonl."""
        append_jsonl(self.jobs_jsonl, {"event": event, "time": time.time(), **fields})

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


class SweepDir:
    """A sweep directory (layout in the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    marker = property(lambda self: self.path / MARKER)
    study_yaml = property(lambda self: self.path / "study.yaml")
    plan_csv = property(lambda self: self.path / "plan.csv")
    runs_dir = property(lambda self: self.path / "runs")
    code_dir = property(lambda self: self.path / "code")
    submitit_dir = property(lambda self: self.path / "submitit")

    @classmethod
    def open(cls, path: Path | str) -> "SweepDir":
        """An existing sweep; UserError if ``path`` is not one."""
        sweep = cls(Path(path))
        if not sweep.marker.is_file():
            raise UserError(f"{path}: not a sweep directory (no {MARKER}); pass the folder that "
                            "`isoflop submit` printed, e.g. <root>/<study>")
        return sweep

    def exists(self) -> bool:
        return self.marker.is_file()

    def run(self, run_id: str) -> RunDir:
        return RunDir(self.runs_dir / run_id)

    def runs(self, plan_rows: dict[str, dict[str, str]] | None = None) -> Iterator[RunDir]:
        """Every run of the plan, in plan order (plan.csv, or ``plan_rows`` already
        read from it), else sorted by id."""
        ids = list(self.plan_rows() if plan_rows is None else plan_rows)
        for run_id in ids or sorted(p.name for p in self.runs_dir.iterdir() if p.is_dir()):
            yield self.run(run_id)

    def plan_rows(self) -> dict[str, dict[str, str]]:
        """plan.csv rows by run_id."""
        if not self.plan_csv.is_file():
            return {}
        with self.plan_csv.open(newline="") as handle:
            return {row["run_id"]: row for row in csv.DictReader(handle)}

    def create(self, resolved_yaml: str, plan_rows: list[dict[str, Any]], metadata: dict[str, Any]) -> None:
        """Write study.yaml, plan.csv and sweep.json (the last one marks the folder a sweep)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise UserError(f"--root: cannot write the sweep directory {self.path} ({error.strerror}); "
                            "pass a writable --root") from None
        write_atomic(self.study_yaml, resolved_yaml)
        self.write_plan(plan_rows)
        if not self.marker.is_file():
            write_json_atomic(self.marker, metadata)

    def write_plan(self, rows: list[dict[str, Any]]) -> None:
        """plan.csv: the rows of ``isoflop plan --format csv``."""
        write_atomic(self.plan_csv, csv_text(rows))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def study_changes(old_yaml: str, new_yaml: str, ignore: tuple[str, ...] = ("cluster",)) -> list[str]:
    """``key: old -> new`` for every setting that differs between two study.yaml texts.

    Keys under ``ignore`` (where jobs run, not what they compute) are left out.
    """
    import yaml

    old = _flatten(yaml.safe_load(old_yaml) or {})
    new = _flatten(yaml.safe_load(new_yaml) or {})
    changes = []
    for key in sorted(set(old) | set(new)):
        if key.split(".")[0] in ignore or old.get(key, "<unset>") == new.get(key, "<unset>"):
            continue
        changes.append(f"{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}")
    return changes
