"""Checkpoints for exact resume: streamed, checksummed, atomic; the last two kept.

A checkpoint is an opaque folder ``<run_dir>/checkpoints/step_NNNNNN/``; this
module is the one way to save, verify, load and copy one:

- :func:`save` writes the training state of step N (the model, the
  optimizer(s), the step, the data position, the RNG states, the loop's
  running totals; see :class:`isoflop.train.Trainer`);
- :func:`verify` says why a folder is unusable, or None;
- :func:`newest_good` finds the newest usable one (setting corrupt ones
  aside) and :func:`load` reads one; :func:`load_for_resume` does both in
  every process of a run;
- :func:`adopt` makes a checkpoint another run's (hard links where the file
  system allows, else copies), e.g. to start a branch run from it.

Inside, the state is written by :mod:`isoflop.checkpoint_format` with
``torch.distributed.checkpoint``: one file per tensor item, large tensors in
row blocks, every file hashed as it streams. Neither saving nor loading holds
a second copy of the state: the extra host memory is about one 128 MiB
block (``isoflop bench checkpoint`` measures it). With FSDP (``sharded``)
every rank writes its own shards; otherwise rank 0 writes the whole
(replicated) state.

``manifest.json`` = ``{"format": 2, "step", "run_id", "files": {name:
{"bytes", "sha256"}}}``, written last. Format 1 (one ``state.pt``, its SHA-256
in the manifest; isoflop 0.1) is still read.

Writing is atomic: everything goes into ``step_N.tmp/``, is fsynced, and the
folder is renamed to ``step_N/`` last, so a crash (or a full disk) leaves
either a complete checkpoint or a leftover ``.tmp`` folder, removed on the
next save or resume; the last good checkpoint is never replaced by a partial
one. Reading checks every file against the manifest (size and SHA-256, read
in blocks): a corrupt or partial checkpoint is reported on stderr, renamed
``corrupt-step_N`` (kept for inspection) and the previous good one is used.
When checkpoints exist but none is good, :func:`newest_good` raises a
:class:`UserError` and touches nothing, rather than silently restarting from
step 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from isoflop.atomic_files import read_json
from isoflop.checkpoint_format import read_state, write_state
from isoflop.distributed import DistributedContext
from isoflop.errors import UserError

CHECKPOINT_FORMAT = 2
READABLE_FORMATS = (1, 2)
KEEP_LAST = 2
MANIFEST = "manifest.json"
HASH_BLOCK_BYTES = 8 << 20


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """Finished checkpoint folders of a run, newest first."""
    root = checkpoint_dir(run_dir)
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


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    with open(folder / MANIFEST, "w") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def _publish(temporary: Path, final: Path) -> None:
    """Rename the complete ``temporary`` folder to ``final`` (replacing a same-step one) and fsync."""
    if final.exists():  # the same step saved again (e.g. asked for right after a periodic save)
        shutil.rmtree(final)
    os.replace(temporary, final)
    _fsync_dir(final.parent)


def save(run_dir: Path, step: int, run_id: str, state: dict[str, Any], context: DistributedContext, *,
         sharded: bool = False) -> Path | None:
    """Write ``state`` as the checkpoint of ``step`` atomically and prune to the last two.

    ``sharded`` (FSDP): every rank calls this and writes its shards; otherwise
    only rank 0 writes (the others return None at once). On an error (a full
    disk) the partial folder is removed and the error raised; the earlier
    checkpoints are untouched.
    """
    if not sharded and not context.is_main:
        return None
    root = checkpoint_dir(run_dir)
    final, temporary = root / f"step_{step:06d}", root / f"step_{step:06d}.tmp"
    try:
        if context.is_main:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir()
        if sharded:
            context.barrier()
        digests = write_state(temporary, state, sharded=sharded)
        if sharded:
            digests = {name: digest for part in context.gather_objects(digests) for name, digest in part.items()}
        if context.is_main:
            _write_manifest(temporary, {"format": CHECKPOINT_FORMAT, "step": step, "run_id": run_id,
                                        "files": {name: {"bytes": size, "sha256": sha256}
                                                  for name, (size, sha256) in sorted(digests.items())}})
            _publish(temporary, final)
            for _, old in step_dirs(run_dir)[KEEP_LAST:]:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if context.is_main:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    if sharded:
        context.barrier()
    return final


def _file_digest(path: Path) -> tuple[int, str]:
    """(bytes, SHA-256) of a file, read in blocks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK_BYTES):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def _manifest(path: Path) -> dict[str, Any] | None:
    manifest = read_json(path / MANIFEST)
    return manifest if isinstance(manifest, dict) else None


def _expected_files(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """{file name: {"bytes", "sha256"}} of a manifest, None when it is malformed."""
    if manifest.get("format", 1) == 1:
        return {"state.pt": {"bytes": manifest.get("bytes"), "sha256": manifest.get("sha256")}}
    files = manifest.get("files")
    if not isinstance(files, dict) or ".metadata" not in files or not all(
            isinstance(name, str) and "/" not in name and isinstance(expected, dict)
            for name, expected in files.items()):
        return None
    return files


def verify(path: Path, run_id: str) -> str | None:
    """Why the checkpoint folder ``path`` is unusable, or None when it is good."""
    manifest = _manifest(path)
    if manifest is None:
        return "missing or unreadable manifest.json"
    if manifest.get("run_id") != run_id:
        return f"it belongs to run {manifest.get('run_id')!r}"
    if manifest.get("format", 1) not in READABLE_FORMATS:
        return f"checkpoint format {manifest.get('format')!r} is not one this isoflop reads"
    files = _expected_files(manifest)
    if files is None:
        return "manifest.json does not list the checkpoint's files"
    for name, expected in files.items():
        try:
            size, sha256 = _file_digest(path / name)
        except OSError:
            return f"missing or unreadable {name}"
        if size != expected.get("bytes") or sha256 != expected.get("sha256"):
            return f"{name} does not match its checksum (partial or corrupt write)"
    return None


def newest_good(run_dir: Path, run_id: str, *, clean_up: bool = True) -> Path | None:
    """The newest usable checkpoint folder of the run, or None when there is none.

    With ``clean_up`` (the one process that tidies: rank 0) leftover ``.tmp``
    folders are removed and corrupt checkpoints newer than the good one are
    reported and renamed ``corrupt-step_N``. Raises :class:`UserError` when
    checkpoints exist and none is good, or when ``checkpoints`` is not a folder.
    """
    root = checkpoint_dir(run_dir)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} is not a folder (the run keeps its checkpoints there); move it aside")
    if not root.is_dir():
        return None
    if clean_up:
        for leftover in root.glob("step_*.tmp*"):
            shutil.rmtree(leftover, ignore_errors=True)
    problems: list[tuple[Path, str]] = []
    for _, path in step_dirs(run_dir):
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
        return path
    if problems:
        bad, reason = problems[0]
        raise UserError(f"checkpoint {bad} is unusable ({reason}) and no earlier good one exists; "
                        f"delete {root} to restart the run from step 0")
    return None


def load(path: Path, live_state: dict[str, Any] | None = None, like: dict[str, Any] | None = None, *,
         sharded: bool = False) -> dict[str, Any]:
    """The state saved in the checkpoint folder ``path`` (verify it first).

    Tensors of ``live_state`` are filled in place; the rest is allocated like
    the templates in ``like`` (:func:`isoflop.checkpoint_format.read_state`).
    Without either, everything is read into new CPU tensors (to inspect a checkpoint).
    """
    manifest = _manifest(path) or {}
    if manifest.get("format", 1) == 1:
        return torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    return read_state(path, live_state, like, sharded=sharded)


def load_for_resume(run_dir: Path, run_id: str, context: DistributedContext, live_state: dict[str, Any],
                    like: dict[str, Any] | None = None, *, sharded: bool = False) -> dict[str, Any] | None:
    """The state of the run's newest good checkpoint, read in every process, or None.

    Rank 0 chooses it (verifying, and tidying the folder: :func:`newest_good`)
    and tells the others, so no rank reads a folder another one is renaming
    and a failure on rank 0 stops every rank.
    """
    choice: tuple[str, str | None] = ("none", None)
    if context.is_main:
        try:
            chosen = newest_good(run_dir, run_id)
            choice = ("path", str(chosen)) if chosen is not None else ("none", None)
        except UserError as error:
            choice = ("error", error.message)
    kind, value = context.broadcast_from_main(choice)
    if kind == "error":
        raise UserError(value if context.is_main else f"rank 0 could not resume: {value}")
    if kind == "none":
        return None
    return load(Path(value), live_state, like, sharded=sharded)


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
