"""A disk cache of tokenized, split in-memory corpora, shared by every run on a machine.

Each run of a study is its own process, and the offline and ``files`` corpora
are tokenized and split (near-duplicate clustering included,
:func:`isoflop.data_sources.held_out_documents`) in memory: about 2.3 s per
run on the standard library at one thread, ~6% of the ``tiny`` study's
job time. The first run of a machine stores the result here and later runs
map it (two read-only memory-mapped ``.npy`` files, checked by CRC-32: ~0.1 s).

Where: ``$ISOFLOP_CACHE_DIR`` or ``~/.cache/isoflop``; ``ISOFLOP_CACHE_DIR=off``
turns the cache off. An entry is a folder ``tokens/<key>/`` holding
``train.npy``, ``validation.npy`` and ``meta.json``; the key covers every
input of the split: the corpus files' paths, sizes and modification times
(a file that changes gets a new key, as make and ccache decide staleness),
the tokenizer, the validation fraction and this format's version.

Safe to share: an entry is written to a private folder and renamed into place
in one step, so a reader sees a whole entry or none; two processes filling the
same key race harmlessly (the second rename fails, both results are equal).
An entry that does not load, or whose arrays do not match the CRC-32 and
sizes in its ``meta.json`` (a truncated or corrupt file), is ignored and
rebuilt. A cache folder that cannot be written is skipped (the split is then
computed per process, as without a cache). Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

CACHE_ENV = "ISOFLOP_CACHE_DIR"
CACHE_OFF = "off"
FORMAT_VERSION = 1


def cache_root() -> Path | None:
    """The cache folder, or None when ``ISOFLOP_CACHE_DIR=off``."""
    configured = os.environ.get(CACHE_ENV)
    if configured == CACHE_OFF:
        return None
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "isoflop"


def files_fingerprint(files: Iterable[Path]) -> str:
    """SHA-256 (16 hex digits) of each file's path, size and modification time (ns), in order."""
    digest = hashlib.sha256()
    for path in files:
        status = path.stat()
        digest.update(f"{path}\0{status.st_size}\0{status.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:16]


def entry_key(inputs: dict[str, Any]) -> str:
    """The key of the split of ``inputs`` (JSON-serializable: fingerprint, tokenizer, fraction)."""
    text = json.dumps({"format": FORMAT_VERSION, **inputs}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _checksum(tokens: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(tokens).data)


def load(key: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """(train tokens, validation tokens, meta) of entry ``key``, or None when absent or unusable."""
    root = cache_root()
    if root is None:
        return None
    folder = root / "tokens" / key
    try:
        meta = json.loads((folder / "meta.json").read_text())
        # memory-mapped read-only: the machine's processes share the page cache's one copy
        train = np.load(folder / "train.npy", mmap_mode="r", allow_pickle=False)
        validation = np.load(folder / "validation.npy", mmap_mode="r", allow_pickle=False)
        checks = meta["checks"]
        if (train.size, validation.size) != (checks["train_tokens"], checks["validation_tokens"]):
            return None
        if (_checksum(train), _checksum(validation)) != (checks["train_crc32"], checks["validation_crc32"]):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return train, validation, meta["split"]


def store(key: str, train: np.ndarray, validation: np.ndarray, split: dict[str, Any]) -> None:
    """Write entry ``key`` (``split``: JSON-serializable facts of the split), replacing an
    entry :func:`load` found unusable; skipped silently when the cache is off or its folder
    cannot be written."""
    root = cache_root()
    if root is None:
        return
    final = root / "tokens" / key
    staging = root / "tokens" / f".{key}.{os.getpid()}"
    try:
        staging.mkdir(parents=True, exist_ok=True)
        np.save(staging / "train.npy", train, allow_pickle=False)
        np.save(staging / "validation.npy", validation, allow_pickle=False)
        checks = {"train_tokens": int(train.size), "validation_tokens": int(validation.size),
                  "train_crc32": _checksum(train), "validation_crc32": _checksum(validation)}
        (staging / "meta.json").write_text(json.dumps({"split": split, "checks": checks}))
        if final.is_dir():  # unusable, or written meanwhile by another process: either is replaced
            shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    except OSError:
        pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
