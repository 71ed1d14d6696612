"""The training stream of a streamed corpus (Hub datasets such as C4), exactly resumable.

Documents come in stream order from a ``datasets`` streaming ``IterableDataset``
and are packed on the fly (see :mod:`isoflop.data` for packing and the split).
The position saved in a checkpoint is the dataset's own resumable state
(``IterableDataset.state_dict()``), the stream's features, and the tokens read
but not yet used.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from isoflop.data_sources import document_is_validation
from isoflop.errors import UserError
from isoflop.tokenizers import Tokenizer


class StreamingCorpus:
    """Documents streamed in order (Hub datasets such as C4), packed on the fly.

    The documents come from a ``datasets`` streaming ``IterableDataset`` (rows
    with a text field); its position is the dataset's own resumable state
    (``IterableDataset.state_dict()`` after the last document used), so a
    resumed run continues where the stream stopped: whole shards already used
    are never opened again, and within the current shard ``datasets`` skips
    ahead without this class seeing (let alone tokenizing) a used document.
    """

    def __init__(self, open_stream: Callable[[], Any], text_field: str, tokenizer: Tokenizer, seq_len: int,
                 validation_fraction: float | None, allow_multiple_epochs: bool, where: str = "data.name") -> None:
        self._open_stream = open_stream  # () -> a datasets.IterableDataset at its start, a fresh one each call
        self.text_field = text_field
        self.where = where
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.validation_fraction = validation_fraction
        self.allow_multiple_epochs = allow_multiple_epochs
        self.documents_consumed = 0  # in the current pass
        self.passes = 0
        self._stream_state: dict | None = None  # the dataset's state after the last document read
        self._features: dict | None = None  # the columns of the stream that state belongs to
        self._skip_documents = 0
        self._buffer = np.empty(0, dtype=np.int32)
        self._iterator: Iterator[str] | None = None

    @property
    def epochs(self) -> float | None:
        """Completed passes (the corpus size is unknown until a pass ends)."""
        return float(self.passes) if self.passes else None

    def _text(self, row: Any) -> str:
        if not isinstance(row, dict) or self.text_field not in row:
            fields = ", ".join(row) if isinstance(row, dict) else type(row).__name__
            raise UserError(f"{self.where}: rows have no field {self.text_field!r} (fields: {fields}); "
                            "set text_field")
        return str(row[self.text_field] or "")

    def _rows(self, stream: Any) -> Iterator[Any]:
        """The stream's rows; a stream that breaks off (the network) is a :class:`UserError`."""
        try:
            yield from stream
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - network, a damaged shard
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UserError(f"{self.where}: the training stream broke off ({message}); check network access "
                            "and run it again (it resumes from its last checkpoint)") from None

    def _documents(self) -> Iterator[str]:
        """Training documents in stream order, pass after pass when allowed.

        Raises :class:`UserError` when a whole pass yields no training document
        (an empty corpus, or every document in the validation split), or when the
        corpus runs out without ``allow_multiple_epochs``.
        """
        while True:
            stream = self._open_stream()
            whole_pass = self._stream_state is None  # a resumed pass starts mid-corpus
            if self._stream_state is not None:
                if _layout(stream.state_dict(), _features(stream)) != _layout(self._stream_state, self._features):
                    raise UserError(f"{self.where}: the training stream is not built like the one this "
                                    "checkpoint's position was taken in (another dataset or datasets version); "
                                    "resume with the same ones, or delete the run's checkpoints to restart it")
                stream.load_state_dict(self._stream_state)
            self._features = _features(stream)
            produced = False
            for row in self._rows(stream):
                self._stream_state = stream.state_dict()
                if self._skip_documents:  # a position saved as a document count (isoflop 0.1)
                    self._skip_documents -= 1
                    continue
                self.documents_consumed += 1
                text = self._text(row)
                if self.validation_fraction is not None and \
                        document_is_validation(text, self.validation_fraction):
                    continue
                produced = True
                yield text
            if whole_pass and not produced:
                if self.documents_consumed == 0:
                    raise UserError("the training corpus has no documents; check data.name/split")
                raise UserError(f"the training corpus has no documents outside the validation split (all "
                                f"{self.documents_consumed} fall in data.validation_fraction="
                                f"{self.validation_fraction}); check data.name/split or lower "
                                "data.validation_fraction")
            if not self.allow_multiple_epochs:
                raise UserError("the training corpus ran out before the run's tokens were reached; set "
                                "data.allow_multiple_epochs=true or lower the budget")
            print("isoflop train: warning: training corpus exhausted; starting another pass",
                  file=sys.stderr)
            self.passes += 1
            self.documents_consumed = 0
            self._stream_state = None

    def next_batch(self, batch_size: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """This rank's (batch_size / world_size, T + 1) slice of the next global batch."""
        needed = batch_size * self.seq_len + 1
        if self._iterator is None:
            self._iterator = self._documents()
        pieces = [self._buffer]
        available = self._buffer.size
        while available < needed:
            piece = self.tokenizer.encode_document(next(self._iterator))
            pieces.append(piece)
            available += piece.size
        tokens = np.concatenate(pieces)
        self._buffer = tokens[batch_size * self.seq_len:]  # keeps the last target as next input
        per_rank = batch_size // world_size
        starts = [(rank * per_rank + offset) * self.seq_len for offset in range(per_rank)]
        return np.stack([tokens[start:start + self.seq_len + 1] for start in starts])

    def state_dict(self) -> dict:
        """The position: the dataset's stream state, the pass, and the tokens read but not yet used."""
        return {"kind": "streaming", "stream": self._stream_state, "features": self._features,
                "documents_consumed": self.documents_consumed, "passes": self.passes, "buffer": self._buffer.copy()}

    def load_state_dict(self, state: dict) -> None:
        self._stream_state = state.get("stream")
        self._features = state.get("features")
        self.documents_consumed = int(state["documents_consumed"])
        # isoflop 0.1 saved only the count: the stream is read again from its start, skipping that many
        self._skip_documents = self.documents_consumed if "stream" not in state else 0
        self.passes = int(state["passes"])
        self._buffer = np.asarray(state["buffer"], dtype=np.int32)
        self._iterator = None


def _features(stream: Any) -> dict | None:
    """The columns of a ``datasets`` stream as a dict (None: not declared, inferred while reading)."""
    features = getattr(stream, "features", None)
    return features.to_dict() if features is not None else None


def _layout(state: Any, features: dict | None) -> tuple[list[str], dict | None]:
    """How a ``datasets`` stream position is read: the types of the state's nested example
    iterables (outermost first) and the stream's features; the positions left out."""
    types = []
    while isinstance(state, dict):
        if "type" in state:
            types.append(str(state["type"]))
        state = state.get("examples_iterable")
    return types, features
