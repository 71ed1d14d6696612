"""Tokenizers: text -> token ids, each document ended by an end-of-document id.

- ``bytes`` (the default): the UTF-8 bytes of the text (ids 0..255) followed by
  the end-of-document id 256; vocabulary 257 (``DataConfig.resolved_vocab_size``).
  Needs nothing downloaded.
- any other name: a Hugging Face tokenizer (``transformers.AutoTokenizer``),
  for cluster runs. ``transformers`` is not a dependency of isoflop: it is
  imported only here, and a missing package or a name that cannot be loaded
  (e.g. offline with an empty cache) is a :class:`UserError`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from isoflop.errors import UserError
from isoflop.token_cache import files_fingerprint

BYTE_VOCAB_SIZE = 257
"""256 byte values + the end-of-document id."""

BYTE_END_OF_DOCUMENT = 256


class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    vocab_size: int
    end_of_document: int

    def encode_document(self, text: str) -> np.ndarray:
        """(n_tokens + 1,) int32 ids of ``text`` followed by the end-of-document id."""
        ...


class ByteTokenizer:
    """UTF-8 bytes as tokens (ids 0..255) plus end-of-document 256."""

    vocab_size = BYTE_VOCAB_SIZE
    end_of_document = BYTE_END_OF_DOCUMENT

    def encode_document(self, text: str) -> np.ndarray:
        encoded = np.frombuffer(text.encode("utf-8", errors="replace"), dtype=np.uint8)
        tokens = np.empty(encoded.size + 1, dtype=np.int32)  # (n_bytes + 1,)
        tokens[:-1] = encoded
        tokens[-1] = self.end_of_document
        return tokens


class HuggingFaceTokenizer:
    """A ``transformers`` tokenizer by name; the end-of-document id is its EOS
    token (or its vocabulary size - 1 when it has none)."""

    def __init__(self, name: str, vocab_size: int) -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise UserError(f"data.tokenizer={name!r} needs the 'transformers' package, which is not "
                            "installed; pip install transformers, or use data.tokenizer=bytes") from None
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(name)
        except Exception as error:  # noqa: BLE001 - any loading failure is the user's to fix
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UserError(f"data.tokenizer={name!r} cannot be loaded ({reason}); check the name, or "
                            "download it once with network access (it is cached), or use "
                            "data.tokenizer=bytes") from None
        eos = self._tokenizer.eos_token_id
        self.end_of_document = int(eos) if eos is not None else vocab_size - 1
        if len(self._tokenizer) > vocab_size:
            raise UserError(f"data.vocab_size={vocab_size}: tokenizer {name} has {len(self._tokenizer)} "
                            f"tokens; set data.vocab_size={len(self._tokenizer)} or larger")
        self.vocab_size = vocab_size

    def encode_document(self, text: str) -> np.ndarray:
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return np.asarray(list(ids) + [self.end_of_document], dtype=np.int32)


def tokenizer_identity(name: str) -> str:
    """What a tokenizer's ids depend on, for the keys of cached token ids: its name and, where
    the name is a local folder (a Hugging Face tokenizer written by ``save_pretrained``), the
    paths, sizes and modification times of the files in it, so that a tokenizer edited or
    replaced in place gets new keys instead of another tokenizer's cached ids. A hub name
    stands for itself."""
    folder = Path(name).expanduser()
    if name == "bytes" or not folder.is_dir():
        return name
    return f"{name}@{files_fingerprint(sorted(path for path in folder.rglob('*') if path.is_file()))}"


@lru_cache(maxsize=8)
def build_tokenizer(name: str, vocab_size: int | None) -> Tokenizer:
    """The tokenizer called ``name`` (``bytes`` or a Hugging Face name).

    Cached per process (a Hugging Face tokenizer is loaded once): tokenizers
    only encode, they hold no state that changes, so callers share one.
    """
    if name == "bytes":
        return ByteTokenizer()
    return HuggingFaceTokenizer(name, int(vocab_size or 0))
