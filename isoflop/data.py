"""Training and evaluation token streams: split, tokenize, pack, checkpoint.

Documents (from :mod:`isoflop.data_sources`) are tokenized (:mod:`isoflop.tokenizers`),
each followed by the end-of-document id, and concatenated. Sequence packing
(as in nanoGPT): training sequence j is ``tokens[j·T : j·T + T + 1]``, inputs the
first T ids, targets the last T, so documents run across sequence boundaries
and no token is padding.

Split, deterministic and disjoint on every machine:

- in-memory corpora (offline, files): ``validation_fraction`` of the tokens,
  as whole clusters of near-duplicate documents
  (:func:`isoflop.data_sources.held_out_documents`), so no validation document
  has a near-duplicate in training;
- streamed Hub datasets: their own ``validation_split`` (C4's
  ``validation``) or, without one, each document by its text hash
  (:func:`isoflop.data_sources.document_is_validation`).

The validation set's size and content hash go into ``result.json``
(:meth:`TrainingData.describe`).

Two training streams, both exactly resumable from :meth:`state_dict`:

- :class:`PackedCorpus` (offline and files sources): all training tokens in
  memory; each epoch visits the sequences in a permutation seeded by
  (seed, epoch); the state is one integer, the global sequences consumed.
- :class:`StreamingCorpus` (hub source): documents streamed in order; the state
  is the ``datasets`` stream's own position (``IterableDataset.state_dict()``)
  and the tokens not yet used; resuming continues the stream where it stopped,
  without reading the documents already used again.

Global batch b (sequences) at step s is sequences [s·b, (s+1)·b); with W
processes, rank r takes the slice [r·b/W, (r+1)·b/W) — the same sequences a
single process would see, which is what makes the multi-process loss equal to
the single-process one.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from isoflop.data_sources import (
    NEAR_DUPLICATE_JACCARD, document_is_validation, file_documents, held_out_documents, hub_documents,
    offline_corpus, offline_corpus_files, resolve_paths,
)
from isoflop import token_cache
from isoflop.errors import UserError
from isoflop.streaming_corpus import StreamingCorpus
from isoflop.study_config import DataConfig, EvalDatasetConfig
from isoflop.tokenizers import Tokenizer, build_tokenizer, tokenizer_identity


class PackedCorpus:
    """In-memory training tokens, visited in a seeded permutation per epoch."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int) -> None:
        self.tokens = tokens  # (n_tokens,) int32
        self.seq_len = seq_len
        self.seed = seed
        self.n_sequences = (tokens.size - 1) // seq_len
        self.sequences_consumed = 0
        self._permutation_epoch = -1
        self._permutation = np.empty(0, dtype=np.int64)

    @property
    def epochs(self) -> float:
        """Passes over the training tokens so far."""
        return self.sequences_consumed / max(1, self.n_sequences)

    def _sequence(self, global_index: int) -> np.ndarray:
        epoch, within = divmod(global_index, self.n_sequences)
        if epoch != self._permutation_epoch:
            self._permutation = np.random.default_rng([self.seed, epoch]).permutation(self.n_sequences)
            self._permutation_epoch = epoch
        start = int(self._permutation[within]) * self.seq_len
        return self.tokens[start:start + self.seq_len + 1]  # (T + 1,)

    def next_batch(self, batch_size: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """This rank's (batch_size / world_size, T + 1) slice of the next global batch."""
        per_rank = batch_size // world_size
        first = self.sequences_consumed + rank * per_rank
        self.sequences_consumed += batch_size
        return np.stack([self._sequence(first + offset) for offset in range(per_rank)])

    def state_dict(self) -> dict:
        return {"kind": "packed", "sequences_consumed": self.sequences_consumed}

    def load_state_dict(self, state: dict) -> None:
        self.sequences_consumed = int(state["sequences_consumed"])


@dataclass(frozen=True)
class ValidationSet:
    """What the held-out split is, for ``result.json``.

    Attributes:
        split: how it was drawn (``near_duplicate_clusters`` with its Jaccard
            threshold, ``document_hash``, or the Hub split's name).
        documents: held-out documents (None when streamed).
        tokens: held-out tokens (None when streamed).
        content_hash: SHA-256 (16 hex digits) of the held-out token ids, or of
            the streamed split's identity.
    """

    split: str
    documents: int | None
    tokens: int | None
    content_hash: str


@dataclass
class TrainingData:
    """The training stream, the held-out validation tokens, and a description
    for ``result.json`` (source, content_hash, n_documents, validation)."""

    train: PackedCorpus | StreamingCorpus
    tokenizer: Tokenizer
    validation_tokens: Callable[[int], np.ndarray]  # max_tokens -> ids (all held-out ids when in memory)
    source: str
    content_hash: str
    n_documents: int | None
    validation: ValidationSet

    def describe(self) -> dict:
        """The ``data`` entry of ``result.json``."""
        documents = self.n_documents if self.n_documents is not None else getattr(
            self.train, "documents_consumed", None)
        return {"source": self.source, "content_hash": self.content_hash, "n_documents": documents,
                "epochs": self.train.epochs, "validation": asdict(self.validation)}


def token_hash(tokens: np.ndarray) -> str:
    """SHA-256 (16 hex digits) of int32 token ids."""
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype=np.int32).tobytes()).hexdigest()[:16]


@lru_cache(maxsize=4)
def _tokenized_split(source: str, paths: tuple[str, ...], text_field: str, tokenizer_name: str,
                     vocab_size: int | None, validation_fraction: float
                     ) -> tuple[np.ndarray, np.ndarray, int, str, ValidationSet]:
    """(train tokens, validation tokens, n_documents, content hash, validation set)
    of an in-memory corpus; cached per process (tests and sweeps reuse it) and on disk
    for the machine's other processes (:mod:`isoflop.token_cache`)."""
    files = offline_corpus_files() if source == "offline" else tuple(Path(path) for path in paths)
    key = token_cache.entry_key({"source": source, "files": token_cache.files_fingerprint(files),
                                 "text_field": text_field, "tokenizer": tokenizer_identity(tokenizer_name),
                                 "vocab_size": vocab_size,
                                 "validation_fraction": validation_fraction,
                                 "near_duplicate_jaccard": NEAR_DUPLICATE_JACCARD})
    cached = token_cache.load(key)
    if cached is not None:
        train, validation, split = cached
        return train, validation, split["n_documents"], split["content_hash"], ValidationSet(**split["validation"])
    train, validation, n_documents, content_hash, validation_set = _split_corpus(
        source, paths, text_field, tokenizer_name, vocab_size, validation_fraction)
    token_cache.store(key, train, validation, {"n_documents": n_documents, "content_hash": content_hash,
                                               "validation": asdict(validation_set)})
    return train, validation, n_documents, content_hash, validation_set


def _split_corpus(source: str, paths: tuple[str, ...], text_field: str, tokenizer_name: str,
                  vocab_size: int | None, validation_fraction: float
                  ) -> tuple[np.ndarray, np.ndarray, int, str, ValidationSet]:
    """:func:`_tokenized_split` computed: read, tokenize, and split by near-duplicate clusters."""
    tokenizer = build_tokenizer(tokenizer_name, vocab_size)
    if source == "offline":
        texts, corpus_hash = offline_corpus()
    else:
        texts, corpus_hash = tuple(text for text in file_documents(list(paths), text_field) if text.strip()), ""
    if not texts:
        raise UserError(f"data.paths: {', '.join(paths)} holds no text; use a non-empty corpus")
    encoded = [tokenizer.encode_document(text) for text in texts]
    held_out = held_out_documents(texts, [piece.size for piece in encoded], validation_fraction)
    empty = np.empty(0, dtype=np.int32)
    train = np.concatenate([piece for piece, out in zip(encoded, held_out) if not out] or [empty])
    validation = np.concatenate([piece for piece, out in zip(encoded, held_out) if out] or [empty])
    if not corpus_hash:
        digest = hashlib.sha256(train.tobytes())
        digest.update(validation.tobytes())
        corpus_hash = digest.hexdigest()[:16]
    validation_set = ValidationSet(split=f"near_duplicate_clusters(jaccard>={NEAR_DUPLICATE_JACCARD})",
                                   documents=int(held_out.sum()), tokens=int(validation.size),
                                   content_hash=token_hash(validation))
    return train, validation, len(texts), corpus_hash, validation_set


def load_training_data(config: DataConfig, seq_len: int, seed: int, tokens_needed: int) -> TrainingData:
    """Open the training corpus of ``config`` and check it holds ``tokens_needed``.

    Raises :class:`UserError` when the corpus is empty, has no validation
    documents, or is smaller than ``tokens_needed`` without
    ``allow_multiple_epochs`` (with it: one warning on stderr).
    """
    tokenizer = build_tokenizer(config.tokenizer, config.vocab_size)
    if config.source == "hub":
        return _hub_training_data(config, tokenizer, seq_len)
    paths = tuple(resolve_paths(config.paths)) if config.source == "files" else ()
    train, validation, n_documents, content_hash, validation_set = _tokenized_split(
        config.source, paths, config.text_field, config.tokenizer, config.vocab_size,
        config.validation_fraction)
    if validation.size < 2:
        raise UserError(f"data.validation_fraction={config.validation_fraction}: no document of the "
                        f"{n_documents} falls in the validation split; raise it or add documents")
    corpus = PackedCorpus(train, seq_len, seed)
    available = corpus.n_sequences * seq_len
    if corpus.n_sequences == 0:
        raise UserError(f"the training corpus has {train.size} tokens, fewer than one sequence of "
                        f"{seq_len + 1}; use a larger corpus")
    if tokens_needed > available:
        if not config.allow_multiple_epochs:
            raise UserError(f"the training corpus has {available} tokens but the run needs {tokens_needed}; "
                            "use a larger corpus, a smaller budget, or data.allow_multiple_epochs=true")
        print(f"isoflop train: warning: the run repeats its corpus ({tokens_needed / available:.2f} epochs "
              f"of {available} tokens)", file=sys.stderr)
    return TrainingData(train=corpus, tokenizer=tokenizer, validation_tokens=lambda max_tokens: validation,
                        source=config.source, content_hash=content_hash, n_documents=n_documents,
                        validation=validation_set)


def _hub_training_data(config: DataConfig, tokenizer: Tokenizer, seq_len: int) -> TrainingData:
    """Streaming training data from the Hub (e.g. allenai/c4 en; not exercised offline)."""
    def open_training_stream() -> Any:
        import datasets

        try:
            return datasets.load_dataset(config.name, config.subset, split=config.split, streaming=True)
        except Exception as error:  # noqa: BLE001 - network, unknown name, missing split
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UserError(f"data.name={config.name!r} (subset {config.subset!r}, split {config.split!r}) "
                            f"cannot be streamed ({message}); check the name and network access, or use "
                            "data.source=files") from None

    def validation_tokens(max_tokens: int) -> np.ndarray:
        if config.validation_split:
            documents = hub_documents(config.name, config.subset, config.validation_split,
                                      config.text_field)
        else:
            documents = (text for text in hub_documents(config.name, config.subset, config.split,
                                                        config.text_field)
                         if document_is_validation(text, config.validation_fraction))
        return collect_tokens(documents, tokenizer, max_tokens + 1)

    held_out = None if config.validation_split else config.validation_fraction
    corpus = StreamingCorpus(open_training_stream, config.text_field, tokenizer, seq_len, held_out,
                             config.allow_multiple_epochs)
    identity = f"hub:{config.name}:{config.subset}:{config.split}:{config.tokenizer}"
    split = config.validation_split or f"document_hash(<{config.validation_fraction})"
    validation_identity = f"hub:{config.name}:{config.subset}:{split}:{config.tokenizer}"
    validation_set = ValidationSet(split=split, documents=None, tokens=None,
                                   content_hash=hashlib.sha256(validation_identity.encode()).hexdigest()[:16])
    return TrainingData(train=corpus, tokenizer=tokenizer, validation_tokens=validation_tokens,
                        source="hub", content_hash=hashlib.sha256(identity.encode()).hexdigest()[:16],
                        n_documents=None, validation=validation_set)


def collect_tokens(documents: Iterator[str], tokenizer: Tokenizer, max_tokens: int) -> np.ndarray:
    """The first ``max_tokens`` ids of ``documents`` (fewer if they run out)."""
    pieces, total = [], 0
    for text in documents:
        if not text.strip():
            continue
        piece = tokenizer.encode_document(text)
        pieces.append(piece)
        total += piece.size
        if total >= max_tokens:
            break
    return np.concatenate(pieces)[:max_tokens] if pieces else np.empty(0, dtype=np.int32)


def eval_dataset_tokens(config: EvalDatasetConfig, tokenizer: Tokenizer, max_tokens: int) -> np.ndarray:
    """Up to ``max_tokens + 1`` ids of an evaluation corpus (Hub by name, or local files)."""
    where = f"data.eval_datasets[{config.name}]"
    if config.source == "files":
        documents = file_documents(resolve_paths([config.path], where=where), config.text_field, where)
    else:
        documents = hub_documents(config.path or config.name, config.subset, config.split,
                                  config.text_field, where=where)
    tokens = collect_tokens(documents, tokenizer, max_tokens + 1)
    if tokens.size < 2:
        raise UserError(f"{where}: {config.path} holds no text to evaluate on; fix the path")
    return tokens


def evaluation_windows(tokens: np.ndarray, seq_len: int, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``tokens`` that predict ``max_tokens`` targets (all of them when there are fewer).

    Every window holds T + 1 ids (T = ``seq_len``) and predicts its last T, as
    a training sequence does; a corpus shorter than that is one shorter window.
    With at most ``max_tokens`` targets, windows tile the corpus and the last
    one ends at its last id, overlapping its predecessor: only its targets not
    yet predicted are counted, so every target but the first is counted once.
    With more, ceil(max_tokens / T) windows are spread evenly over the whole
    corpus (a sample of every part of it, not only its first documents).

    Returns:
        windows (n, L) int32, L = min(T, len - 1) + 1, and first_counted (n,)
        int64: window i counts its targets at positions >= first_counted[i].
    """
    targets = tokens.size - 1
    length = min(seq_len, targets)
    if length < 1:
        return np.empty((0, 2), dtype=np.int32), np.empty(0, dtype=np.int64)
    if targets <= max_tokens:
        starts = np.arange(0, targets - length + 1, length)
        first_counted = np.zeros(starts.size, dtype=np.int64)
        remainder = targets - (starts[-1] + length)
        if remainder:
            starts = np.append(starts, targets - length)
            first_counted = np.append(first_counted, length - remainder)
    else:
        count = min(-(-max_tokens // length), targets // length)
        starts = np.arange(count) * (targets - length) // max(1, count - 1)  # spacing >= length: no overlap
        first_counted = np.zeros(starts.size, dtype=np.int64)
    windows = np.stack([tokens[start:start + length + 1] for start in starts])
    return windows, first_counted
