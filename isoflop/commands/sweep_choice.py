"""Which sweep folder ``isoflop submit`` and ``isoflop study`` write: ``--root/<name>``.

The name (``--name``, else the study's ``name``) must be one folder of
``--root``: a name that would lead elsewhere (empty, with ``/`` or ``\\``,
``.`` or ``..``) is refused, and so is a folder there that holds someone else's
files (not empty and not a sweep). A sweep there that holds a different study
is refused with the first differences, unless ``--new`` (``isoflop submit``:
the first free ``<name>-2``, ``<name>-3``, ...) or another ``--name``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from isoflop.errors import UserError

SHOWN_CHANGES = 5


def sweep_name(text: str) -> str:
    """argparse type for ``--name``: a folder name (:func:`~isoflop.run_records.is_folder_name`)."""
    from isoflop.run_records import FOLDER_NAME_RULE, is_folder_name

    if not is_folder_name(text):
        raise argparse.ArgumentTypeError(f"{text!r} {FOLDER_NAME_RULE} (the sweep is DIR/NAME of --root DIR); "
                                         "pass e.g. --name my_sweep")
    return text


def add_name_argument(parser: argparse.ArgumentParser) -> None:
    """``--name`` of ``isoflop submit`` and ``isoflop study``."""
    parser.add_argument("--name", type=sweep_name, default=None,
                        help="sweep directory name, one folder of --root (default: the study's name)")


def new_sweep_advice(name: str, explicit_name: bool, takes_new: bool) -> str:
    """How to start a fresh sweep beside the sweep ``name`` that cannot be continued: ``--new``
    where the command takes it (``isoflop submit``), else ``--name``."""
    other_name = "another --name" if explicit_name else "--name NAME"
    if takes_new:
        return f"pass --new (a new sweep {name}-N beside it) or {other_name}"
    return f"pass {other_name} for a new sweep beside it"


def recorded_study_changes(sweep: Any, resolved_yaml: str, advice: str = "pass --name NAME for a fresh sweep"
                           ) -> list[str]:
    """:func:`~isoflop.sweep_dir.study_changes` between the sweep's study.yaml and ``resolved_yaml``;
    a study.yaml that cannot be read or parsed is a :class:`UserError` ending in ``advice``
    (the file is never overwritten)."""
    import yaml

    from isoflop.sweep_dir import study_changes

    try:
        recorded = sweep.study_yaml.read_text() if sweep.study_yaml.exists() else ""
        return study_changes(recorded, resolved_yaml)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError) as error:
        reason = getattr(error, "strerror", None) or " ".join(str(error).split())[:120]
        raise UserError(f"{sweep.study_yaml}: cannot read the study this sweep was created with ({reason}); "
                        f"restore the file, or {advice}") from None


def check_folder_is_free(path: Path, explicit_name: bool) -> None:
    """Raise :class:`UserError` if ``path`` is there but cannot hold the sweep: a file, or a
    folder that is not empty and holds no sweep (nor the start of one,
    :meth:`~isoflop.sweep_dir.SweepDir.started`): the user's own files, never written into."""
    from isoflop.sweep_dir import MARKER, WRITE_PROBE_PREFIX, SweepDir

    if not (path.exists() or path.is_symlink()) or SweepDir(path).started():
        return
    fix = ("pass another --name, or another --root" if explicit_name else
           "pass --name NAME for a folder of its own, or another --root")
    if not path.is_dir():
        raise UserError(f"{path} is a file, where the sweep's folder belongs; {fix}")
    try:
        # another submit of this sweep may be probing the new folder (a file of its own, gone at once)
        empty = all(entry.name.startswith(WRITE_PROBE_PREFIX) for entry in path.iterdir())
    except OSError:
        return  # writing it is tried, and refused with the reason (SweepDir.make_writable_folder)
    if not empty:
        raise UserError(f"{path} is a folder of other files, not a sweep (no {MARKER}); {fix}, "
                        "or empty that folder")


def choose_sweep_path(root: Path, name: str, resolved_yaml: str, explicit_name: bool, new: bool, *,
                      takes_new: bool = False) -> Path:
    """The sweep folder to use: ``root/name`` unless it holds a different study (with ``new``:
    the first of ``root/name-2``, ``root/name-3``, ... that does not); ``takes_new``: the
    command has ``--new`` (``isoflop submit``), so its advice may name it.

    ``name`` is one folder's name already: ``--name``'s argparse type and the study's
    own check (:class:`~isoflop.study_config.StudyConfig`) refuse any other.

    Raises:
        UserError: the folder holds someone else's files; it holds a different study
            and ``new`` is not set.
    """
    from isoflop.sweep_dir import SweepDir

    advice = new_sweep_advice(name, explicit_name, takes_new)
    candidate, suffix = root / name, 1
    while True:
        check_folder_is_free(candidate, explicit_name)
        sweep = SweepDir(candidate)
        if not sweep.exists():
            return candidate
        changes = recorded_study_changes(sweep, resolved_yaml, advice)
        if not changes:
            return candidate
        if not new:
            shown = "; ".join(changes[:SHOWN_CHANGES])
            more = f" (and {len(changes) - SHOWN_CHANGES} more)" if len(changes) > SHOWN_CHANGES else ""
            raise UserError(f"{candidate}: the study changed since this sweep was created: {shown}{more}; "
                            f"{advice}, or undo the change to continue the sweep")
        suffix += 1
        candidate = root / f"{name}-{suffix}"
