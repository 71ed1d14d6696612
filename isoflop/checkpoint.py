"""Checkpoints for exact resume: atomic, checksummed, the last two kept.

Layout under ``<run_dir>/checkpoints/``::

    step_000120/state.pt        torch.save of the training state (below)
    step_000120/manifest.json   {"step", "run_id", "sha256", "bytes", "format"}

The state holds the model, the optimizer(s), the step (the learning-rate
schedule is a pure function of it), the data position, the RNG states
(python, numpy, torch CPU and CUDA: :func:`random_generator_states`) and the
running totals of the loop. :func:`load_for_resume` reads it in every process
of a (multi-process) run.

Writing is atomic: everything goes into ``step_N.tmp-<pid>/``, is fsynced, and
the folder is renamed to ``step_N/`` last, so a crash leaves either a complete
checkpoint or a leftover ``.tmp`` folder that is ignored and removed. Reading
checks the manifest and the SHA-256 of ``state.pt``: a corrupt or partial
checkpoint is reported on stderr, renamed ``corrupt-step_N`` (kept for
inspection, never overwritten) and the previous good one is used. When
checkpoints exist but none is good, :func:`load_latest` raises a
:class:`UserError` and touches nothing, rather than silently restarting from
step 0.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from isoflop.distributed import DistributedContext
from isoflop.errors import UserError

CHECKPOINT_FORMAT = 1
KEEP_LAST = 2


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """Finished checkpoint folders, newest first."""
    found = []
    if root.is_dir():
        for path in root.iterdir():
            if path.is_dir() and path.name.startswith("step_") and path.name[5:].isdigit():
                found.append((int(path.name[5:]), path))
    return sorted(found, reverse=True)


def _fsync_dir(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save(run_dir: Path, step: int, run_id: str, state: dict[str, Any]) -> Path:
    """Write ``state`` as the checkpoint of ``step`` atomically; prune to the last two."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    final = root / f"step_{step:06d}"
    temporary = root / f"step_{step:06d}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    with buffer.getbuffer() as payload:  # a view of the serialized state, not a copy
        with open(temporary / "state.pt", "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        manifest = {"format": CHECKPOINT_FORMAT, "step": step, "run_id": run_id,
                    "sha256": hashlib.sha256(payload).hexdigest(), "bytes": payload.nbytes}
    with open(temporary / "manifest.json", "w") as handle:
        json.dump(manifest, handle)
        handle.flush()
        os.fsync(handle.fileno())
    if final.exists():  # the same step saved again (e.g. asked for right after a periodic save)
        shutil.rmtree(final)
    os.replace(temporary, final)
    _fsync_dir(root)
    for _, old in _step_dirs(root)[KEEP_LAST:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify(path: Path, run_id: str) -> str | None:
    """Why the checkpoint folder ``path`` is unusable, or None when it is good."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return "missing or unreadable manifest.json"
    if manifest.get("run_id") != run_id:
        return f"it belongs to run {manifest.get('run_id')!r}"
    try:
        payload = (path / "state.pt").read_bytes()
    except OSError:
        return "missing state.pt"
    if len(payload) != manifest.get("bytes") or hashlib.sha256(payload).hexdigest() != manifest.get("sha256"):
        return "state.pt does not match its checksum (partial or corrupt write)"
    return None


def load_latest(run_dir: Path, run_id: str, map_location: str | torch.device = "cpu", *,
                clean_up: bool = True) -> dict[str, Any] | None:
    """The newest good checkpoint's state, or None when there is none.

    With ``clean_up`` (one process of a run: the main rank, before the others
    read) leftover ``.tmp`` folders are removed and corrupt checkpoints are
    reported and renamed ``corrupt-step_N``; without it the folder is only read
    (bad checkpoints are skipped in place). Raises :class:`UserError` when
    checkpoints exist and none is good.
    """
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return None
    if clean_up:
        for leftover in root.glob("step_*.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    problems: list[tuple[Path, str]] = []
    for _, path in _step_dirs(root):
        problem = verify(path, run_id)
        if problem is not None:
            problems.append((path, problem))
            continue
        if clean_up:
            for bad, reason in problems:  # newer than the good one: set aside, never reused
                corrupt = root / f"corrupt-{bad.name}"
                shutil.rmtree(corrupt, ignore_errors=True)
                os.replace(bad, corrupt)
                print(f"isoflop train: warning: checkpoint {bad} is unusable ({reason}); moved to "
                      f"{corrupt.name}, resuming from {path.name}", file=sys.stderr)
        return torch.load(path / "state.pt", map_location=map_location, weights_only=False)
    if problems:
        bad, reason = problems[0]
        raise UserError(f"checkpoint {bad} is unusable ({reason}) and no earlier good one exists; "
                        f"delete {root} to restart the run from step 0")
    return None


def load_for_resume(run_dir: Path, run_id: str, context: DistributedContext) -> dict[str, Any] | None:
    """The newest good checkpoint of the run (see :func:`load_latest`), or None.

    The main rank reads first and is the only one to tidy the folder (leftover
    ``.tmp`` folders, corrupt checkpoints set aside); the other ranks read after
    a barrier, so no rank sees a folder another one is renaming. The barrier is
    passed even when the main rank fails, so the others fail too instead of waiting.
    """
    if not context.is_main:
        context.barrier()
        return load_latest(run_dir, run_id, map_location=context.device, clean_up=False)
    try:
        return load_latest(run_dir, run_id, map_location=context.device)
    finally:
        context.barrier()


def step_folder(run_dir: Path, step: int) -> Path:
    """The folder of the checkpoint taken after ``step`` steps: ``checkpoints/step_NNNNNN``."""
    return checkpoint_dir(run_dir) / f"step_{step:06d}"


def link_tree(source: Path, destination: Path) -> None:
    """Copy the folder ``source`` to ``destination`` (which must not exist) by hard links,
    or by copies where the file system cannot link (another device). Never changes ``source``:
    checkpoint files are never modified in place, only replaced."""
    def link_or_copy(from_path: str, to_path: str) -> None:
        try:
            os.link(from_path, to_path)
        except OSError:
            shutil.copy2(from_path, to_path)

    shutil.copytree(source, destination, copy_function=link_or_copy)


def adopt(source: Path, source_run_id: str, run_dir: Path, run_id: str) -> Path:
    """Make the checkpoint folder ``source`` of run ``source_run_id`` (a trunk's, at a fork
    step) the checkpoint of run ``run_id`` in ``run_dir``, which then resumes from it as
    from its own.

    ``source`` is verified first (a bad one raises :class:`UserError`); its files are
    hard-linked (:func:`link_tree`) into a temporary folder whose manifest names
    ``run_id`` (and ``adopted_from``), and the folder is renamed into
    ``run_dir/checkpoints/`` last, so the run sees the whole checkpoint or none.
    Returns the adopted folder.
    """
    problem = verify(source, source_run_id)
    if problem is not None:
        raise UserError(f"checkpoint {source} cannot be handed on ({problem}); delete it to let its run "
                        "save it again")
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / source.name
    temporary = root / f"{source.name}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    link_tree(source, temporary)
    manifest = json.loads((source / "manifest.json").read_text())
    (temporary / "manifest.json").unlink()  # a link to the source's: replaced, not written through
    with open(temporary / "manifest.json", "w") as handle:
        json.dump({**manifest, "run_id": run_id, "adopted_from": source_run_id}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    _fsync_dir(root)
    return final


def random_generator_states() -> dict:
    """Python, numpy, torch CPU and CUDA random states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_random_generator_states(states: dict) -> None:
    """Put back the states :func:`random_generator_states` returned."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
