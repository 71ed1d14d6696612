"""Where documents come from: the offline corpus, local files, or the Hub.

Three sources, each an iterator of document texts:

- ``offline``: the Python standard library sources of the running interpreter
  (``sysconfig.get_paths()["stdlib"]``, every ``*.py`` outside
  site-packages/dist-packages, in sorted path order). ~1,800 files / ~31 MB
  for CPython 3.11, so ~31 M byte tokens; nothing to download. Its content
  hash (SHA-256 over paths and bytes) goes into each result, because a
  different interpreter gives a different corpus.
- ``files``: local ``.txt`` (one document per blank-line-separated paragraph),
  ``.jsonl``/``.json`` and ``.parquet`` files (one document per row, text in
  ``text_field``), read through the ``datasets`` packaged loaders in streaming
  mode, so the same code reads a few kB or many GB.
- ``hub``: a Hugging Face dataset by name, streamed (``allenai/c4`` with
  subset ``en`` is what cluster studies use, with its ``validation`` split
  held out). Needs network access or a populated cache.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from isoflop.errors import UserError

FILE_BUILDERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
"""File suffix -> ``datasets`` packaged builder."""


@lru_cache(maxsize=1)
def offline_corpus_files() -> tuple[Path, ...]:
    """The standard library's ``.py`` files of the running interpreter, sorted (no
    site-packages, dist-packages or __pycache__)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    excluded = {"site-packages", "dist-packages", "__pycache__"}
    files = []
    for folder, subfolders, names in os.walk(root):  # pruned: site-packages is not walked at all
        subfolders[:] = [name for name in subfolders if name not in excluded]
        files.extend(Path(folder) / name for name in names if name.endswith(".py"))
    return tuple(sorted(files))


@lru_cache(maxsize=1)
def offline_corpus() -> tuple[tuple[str, ...], str]:
    """The standard library sources: (documents in sorted path order, content hash).

    Cached per process (~0.6 s to read and hash).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    digest = hashlib.sha256()
    documents = []
    for path in offline_corpus_files():
        raw = path.read_bytes()
        digest.update(str(path.relative_to(root)).encode() + b"\0" + raw + b"\0")
        text = raw.decode("utf-8", errors="replace")
        if text.strip():
            documents.append(text)
    if not documents:
        raise UserError(f"data.source=offline: no Python sources found under {root}; "
                        "use data.source=files with data.paths")
    return tuple(documents), digest.hexdigest()[:16]


def resolve_paths(patterns: list[str] | tuple[str, ...], where: str = "data.paths") -> list[str]:
    """Expand globs, check every file is readable and of a known kind; sorted."""
    resolved: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(str(pattern)))) or [str(pattern)]
        for match in matches:
            path = Path(match)
            if not path.is_file() or not os.access(path, os.R_OK):
                raise UserError(f"{where}: {match} is not a readable file; fix the path")
            if path.suffix.lower() not in FILE_BUILDERS:
                raise UserError(f"{where}: {match} has suffix {path.suffix or '(none)'}; use one of "
                                f"{', '.join(sorted(FILE_BUILDERS))}")
            resolved.append(str(path.resolve()))
    builders = {FILE_BUILDERS[Path(path).suffix.lower()] for path in resolved}
    if len(builders) > 1:
        raise UserError(f"{where}: mixes file kinds ({', '.join(sorted(builders))}); use one kind per list")
    if not resolved:
        raise UserError(f"{where} is empty; list at least one file")
    return resolved


def file_documents(paths: list[str], text_field: str, where: str = "data.paths") -> Iterator[str]:
    """Documents of local files (already resolved by :func:`resolve_paths`), streamed."""
    import datasets

    builder = FILE_BUILDERS[Path(paths[0]).suffix.lower()]
    options = {"sample_by": "paragraph"} if builder == "text" else {}
    try:
        stream = datasets.load_dataset(builder, data_files=list(paths), split="train", streaming=True,
                                       **options)
        for row in stream:
            yield _text_of(row, text_field, where)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - a file the loader cannot parse
        raise UserError(f"{where}: cannot read {', '.join(paths)} as {builder} "
                        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                        "fix or replace the file") from None


def hub_documents(name: str, subset: str | None, split: str, text_field: str,
                  where: str = "data.name") -> Iterator[str]:
    """Documents of a Hub dataset, streamed (e.g. ``allenai/c4``, ``en``, ``train``)."""
    import datasets

    try:
        stream = datasets.load_dataset(name, subset, split=split, streaming=True)
        for row in stream:
            yield _text_of(row, text_field, where)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - network, unknown name, missing split
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{where}={name!r} (subset {subset!r}, split {split!r}) cannot be streamed "
                        f"({message}); check the name and network access, or use data.source=files") from None


def _text_of(row: dict, text_field: str, where: str) -> str:
    if text_field not in row:
        raise UserError(f"{where}: rows have no field {text_field!r} (fields: {', '.join(row)}); "
                        "set text_field")
    return str(row[text_field] or "")


def text_hash_fraction(text: str) -> float:
    """SHA-256 of a text's UTF-8 bytes, its first 8 bytes read as a number in [0, 1)."""
    value = int.from_bytes(hashlib.sha256(text.encode("utf-8", errors="replace")).digest()[:8], "big")
    return value / 2.0 ** 64


def document_is_validation(text: str, validation_fraction: float) -> bool:
    """Deterministic split of a stream (Hub corpora without a validation split):
    :func:`text_hash_fraction` below ``validation_fraction`` -> validation. Same
    text, same side, on every machine and every rank."""
    return text_hash_fraction(text) < validation_fraction


NEAR_DUPLICATE_JACCARD = 0.3
"""Documents whose word 5-gram Jaccard similarity reaches this are kept on one
side of the split (with everything similar to them, transitively). On the
standard library, 0.3 joins templated siblings that 0.5 leaves apart (the CJK
codecs such as ``encodings/hz.py``: 23 siblings at J >= 0.3, 3 at J > 0.5)
without chaining unrelated files (largest cluster: 45 single-byte codecs,
0.6 MB); clusters are the same from 0.2 to 0.4."""


def held_out_documents(texts: Sequence[str], token_counts: Sequence[int], validation_fraction: float) -> np.ndarray:
    """Which documents of an in-memory corpus form the validation split (bool per document).

    Near-duplicates stay together: documents are clustered by word 5-gram
    Jaccard similarity >= :data:`NEAR_DUPLICATE_JACCARD`
    (:func:`isoflop.near_duplicates.near_duplicate_clusters`). Clusters are
    visited in the order of their smallest member's :func:`text_hash_fraction`
    and each one that still fits goes to validation, until the validation
    split holds ``validation_fraction`` of the tokens (a cluster larger than
    what is left stays in training). Deterministic: the same corpus gives the
    same split on every machine.
    """
    from isoflop.near_duplicates import near_duplicate_clusters

    clusters = near_duplicate_clusters(texts, NEAR_DUPLICATE_JACCARD)  # (n,) smallest member index
    counts = np.asarray(token_counts, dtype=np.int64)
    cluster_tokens = np.bincount(clusters, weights=counts, minlength=len(texts))
    cluster_key = np.full(len(texts), np.inf)
    np.minimum.at(cluster_key, clusters, [text_hash_fraction(text) for text in texts])
    target = validation_fraction * counts.sum()
    chosen = np.zeros(len(texts), dtype=bool)
    taken = 0.0
    for cluster in np.argsort(cluster_key, kind="stable"):
        if not np.isfinite(cluster_key[cluster]):
            break  # not a cluster id
        if taken + cluster_tokens[cluster] <= target:
            chosen[cluster] = True
            taken += cluster_tokens[cluster]
    return chosen[clusters]
