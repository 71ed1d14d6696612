"""Files that several processes write and read at once: atomic replaces, JSON Lines, CSV.

- :func:`write_atomic` / :func:`write_json_atomic`: a temporary file in the same
  folder, fsynced, then ``os.replace``: a reader sees the old file or the new
  one, never a part.
- :func:`append_jsonl`: one line per ``write`` on an ``O_APPEND`` descriptor, so
  lines of concurrent writers never interleave; :func:`read_jsonl` skips a torn
  line (a crash mid-write, or a line being written while it is read).
- :func:`finite_or_null`: NaN and inf as null (JSON has neither).
- :func:`csv_text`: rows as CSV text, header from the first row's keys.

Generic: the typed records of the sweep directory (:mod:`isoflop.run_records`)
and the trainer use these; nothing here knows their schemas. Torch-free.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


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


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN/inf float replaced by None (JSON has no NaN),
    inside dicts, lists and tuples too."""
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: Path, value: Any) -> None:
    """:func:`write_atomic` of ``value`` as indented JSON with sorted keys."""
    write_atomic(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single ``write`` (atomic for lines this short).

    A file that does not end in a newline holds a torn line (a write cut short by a
    full disk): the record starts on a line of its own, so that it is not lost with
    the torn one (:func:`read_jsonl` skips that).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(descriptor).st_size
        if size and os.pread(descriptor, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


def read_jsonl(path: Path) -> list[Any]:
    """Values of a JSON-lines file, oldest first ([] when there is no such file); a torn
    line (a crash mid-write, or bytes that are not UTF-8) is skipped.

    Raises:
        OSError: the path exists but cannot be read as a file (a folder, no permission).
    """
    if not path.exists():
        return []
    values = []
    for line in path.read_bytes().decode(errors="replace").splitlines():
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return values


def read_json(path: Path) -> Any | None:
    """A JSON file's value, or None if it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def csv_text(rows: list[dict[str, Any]]) -> str:
    """CSV with a header of the first row's keys (empty text for no rows)."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()
