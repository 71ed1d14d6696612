"""The report directory, written as a whole or not at all.

Every file of a report is written into a fresh temporary directory beside
``--out``; only when all of them are written does it take ``--out``'s place
(two renames within one filesystem, so a reader sees the previous report or the
new one, never a mixture). A failure on the way (a full disk, a bug) leaves
the previous report and everything else as it was.

Nothing is ever written over an input or over a user's own files: ``--out``
must not be an input or hold one (``analyze --csv report/runs.csv`` from a sweep
directory would otherwise replace its own input), and an existing ``--out``
must be empty or a previous report: one listed in its :data:`MANIFEST`, or,
for reports written before the manifest existed, a folder holding ``report.md``
and only files of the kinds a report holds.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from isoflop.errors import UserError

MANIFEST = ".isoflop-report"
"""File in every report directory listing the files the report wrote, one a line."""
LEGACY_REPORT_SUFFIXES = (".md", ".csv", ".tex", ".png", ".pdf", ".parquet")


def _sibling_directory(out_dir: Path, role: str) -> Path:
    """A new, uniquely named directory beside ``out_dir`` (usual permissions: 0777 less the umask)."""
    path = out_dir.parent / f".{out_dir.name}.{role}-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir()
    return path


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies below it (both resolved)."""
    return path == folder or folder in path.parents


def _foreign_entries(out_dir: Path) -> list[str]:
    """Entries of an existing ``out_dir`` that a previous report did not write."""
    entries = sorted(entry.name for entry in out_dir.iterdir())
    manifest = out_dir / MANIFEST
    if manifest.is_file():
        written = set(manifest.read_text().split("\n")) | {MANIFEST}
        return [name for name in entries if name not in written]
    if entries and "report.md" not in entries:
        return entries
    return [name for name in entries
            if not ((out_dir / name).is_file() and Path(name).suffix in LEGACY_REPORT_SUFFIXES)]


class ReportDirectory:
    """Collects a report in a temporary directory and puts it in place of ``out_dir`` on :meth:`commit`.

    Use as a context manager: leaving it with an exception removes the temporary
    directory and leaves ``out_dir`` untouched; an OSError on the way (a full disk,
    a permission) becomes a one-line UserError.
    """

    def __init__(self, out_dir: Path, inputs: list[Path]) -> None:
        self.out_dir = self.check_destination(out_dir, inputs)
        parent = self.out_dir.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.path = _sibling_directory(self.out_dir, "partial")
        except OSError as error:
            raise UserError(f"--out {out_dir}: cannot write in {parent} ({error.strerror or error}); "
                            "pass a writable --out DIR") from None

    @staticmethod
    def check_destination(out_dir: Path, inputs: list[Path]) -> Path:
        """Refuse (UserError) an ``out_dir`` that is or holds an input, is not writable, or holds foreign files;
        returns it as an absolute path."""
        out_dir = Path(os.path.abspath(out_dir))
        resolved = out_dir.resolve()
        for source in inputs:
            if _inside(source.resolve(), resolved):
                raise UserError(f"--out {out_dir} holds the input {source}, which the report would replace; "
                                "pass another --out DIR")
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"--out {out_dir} exists and is not a directory; pass a directory for the report")
        if out_dir.is_dir():
            if not os.access(out_dir, os.W_OK | os.X_OK):
                raise UserError(f"--out {out_dir} is not writable; pass a writable --out DIR")
            try:
                foreign = _foreign_entries(out_dir)
            except OSError as error:
                raise UserError(f"--out {out_dir}: cannot be read ({error.strerror or error}); pass another --out DIR") from None
            if foreign:
                raise UserError(f"--out {out_dir} holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}, "
                                "which no report wrote; move them or pass a new or empty --out DIR")
        if not os.access(_nearest_existing(out_dir.parent), os.W_OK | os.X_OK):
            raise UserError(f"--out {out_dir}: cannot write in {out_dir.parent} (not writable); pass a writable --out DIR")
        return out_dir

    def __enter__(self) -> ReportDirectory:
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if error is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            if isinstance(error, OSError):
                raise UserError(f"cannot write the report for {self.out_dir} ({error.strerror or error}); "
                                "free disk space or pass another --out DIR") from None
        return False

    def commit(self) -> Path:
        """Write the manifest, then put the finished report in place of ``out_dir``; returns ``out_dir``."""
        names = sorted(entry.name for entry in self.path.iterdir())
        (self.path / MANIFEST).write_text("\n".join(names) + "\n")
        previous = None
        if self.out_dir.exists():
            previous = _sibling_directory(self.out_dir, "previous")
            os.rename(self.out_dir, previous / self.out_dir.name)
        try:
            os.rename(self.path, self.out_dir)
        except OSError:
            if previous is not None:
                os.rename(previous / self.out_dir.name, self.out_dir)
                shutil.rmtree(previous, ignore_errors=True)
            raise
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
        return self.out_dir
