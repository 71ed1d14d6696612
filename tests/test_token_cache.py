"""The disk cache of tokenized, split corpora (isoflop.token_cache) as the trainer uses it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from isoflop import token_cache
from isoflop.data import _tokenized_split, load_training_data
from isoflop.study_config import DataConfig

SEQ_LEN = 16


def write_corpus(folder: Path, documents: int = 60) -> list[str]:
    """Text files of distinct paragraphs, each a document."""
    folder.mkdir(parents=True, exist_ok=True)
    words = np.random.default_rng(0).integers(0, 100_000, size=(documents, 40))  # no near-duplicates
    paths = []
    for file_index in range(3):
        path = folder / f"part{file_index}.txt"
        paragraphs = [" ".join(f"w{word}" for word in words[file_index * (documents // 3) + index])
                      for index in range(documents // 3)]
        path.write_text("\n\n".join(paragraphs) + "\n")
        paths.append(str(path))
    return paths


def split_of(paths: list[str]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train tokens, validation tokens and description, with the in-process cache emptied first
    (so only the disk cache can spare the work)."""
    _tokenized_split.cache_clear()
    data = load_training_data(DataConfig(source="files", paths=paths, validation_fraction=0.2), SEQ_LEN, 0, 0)
    return np.asarray(data.train.tokens), np.asarray(data.validation_tokens(0)), data.describe()


def entries(cache: Path) -> list[Path]:
    folder = cache / "tokens"
    return sorted(path for path in folder.iterdir() if not path.name.startswith(".")) if folder.is_dir() else []


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(token_cache.CACHE_ENV, str(folder))
    yield folder
    _tokenized_split.cache_clear()


def test_a_cached_split_equals_the_computed_one_and_spares_the_work(cache: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    paths = write_corpus(tmp_path / "corpus")
    computed = split_of(paths)
    assert len(entries(cache)) == 1

    def no_recompute(*args: object) -> None:
        raise AssertionError("the split was computed again although the cache holds it")

    monkeypatch.setattr("isoflop.data._split_corpus", no_recompute)
    loaded = split_of(paths)
    np.testing.assert_array_equal(loaded[0], computed[0])
    np.testing.assert_array_equal(loaded[1], computed[1])
    assert loaded[2] == computed[2]  # content hash, documents, validation set: result.json unchanged
    assert computed[1].size > 0 and computed[0].size > 0


def test_a_changed_corpus_file_is_a_new_entry(cache: Path, tmp_path: Path) -> None:
    paths = write_corpus(tmp_path / "corpus")
    before = split_of(paths)
    with open(paths[0], "a") as handle:
        handle.write("\n\nan added paragraph that was not there before\n")
    after = split_of(paths)
    assert len(entries(cache)) == 2
    assert after[2]["content_hash"] != before[2]["content_hash"]
    assert after[0].size + after[1].size > before[0].size + before[1].size


class ShiftingTokenizer:
    """A stand-in for a Hugging Face tokenizer saved in a folder: byte ids shifted by the number
    written in the folder's ``shift.txt`` (so editing that file changes every id)."""

    vocab_size = 512

    def __init__(self, folder: Path) -> None:
        self.shift = int((folder / "shift.txt").read_text())
        self.end_of_document = self.vocab_size - 1

    def encode_document(self, text: str) -> np.ndarray:
        ids = [byte + self.shift for byte in text.encode()]
        return np.asarray(ids + [self.end_of_document], dtype=np.int32)


def test_a_tokenizer_folder_changed_in_place_is_a_new_entry(cache: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    paths = write_corpus(tmp_path / "corpus")
    folder = tmp_path / "my-tokenizer"
    folder.mkdir()
    (folder / "shift.txt").write_text("0")
    monkeypatch.setattr("isoflop.data.build_tokenizer", lambda name, vocab_size: ShiftingTokenizer(Path(name)))

    def split_with_the_folder() -> np.ndarray:
        _tokenized_split.cache_clear()
        config = DataConfig(source="files", paths=paths, validation_fraction=0.2, tokenizer=str(folder),
                            vocab_size=512)
        return np.asarray(load_training_data(config, SEQ_LEN, 0, 0).train.tokens)

    before = split_with_the_folder()
    (folder / "shift.txt").write_text("100")  # the tokenizer re-saved with other ids, same name
    os.utime(folder / "shift.txt", ns=(1, 1))
    after = split_with_the_folder()
    assert len(entries(cache)) == 2  # not the first tokenizer's ids from the cache
    np.testing.assert_array_equal(after[after != 511], before[before != 511] + 100)


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta"])
def test_a_corrupt_entry_is_ignored_and_rebuilt(cache: Path, tmp_path: Path, damage: str) -> None:
    paths = write_corpus(tmp_path / "corpus")
    computed = split_of(paths)
    (entry,) = entries(cache)
    train_file = entry / "train.npy"
    if damage == "truncate":
        train_file.write_bytes(train_file.read_bytes()[:-40])
    elif damage == "flip":
        raw = bytearray(train_file.read_bytes())
        raw[-8] ^= 0xFF
        train_file.write_bytes(bytes(raw))
    else:
        (entry / "meta.json").write_text("{not json")
    loaded = split_of(paths)
    np.testing.assert_array_equal(loaded[0], computed[0])
    assert loaded[2] == computed[2]
    assert token_cache.load(entry.name) is not None  # rebuilt whole


def test_off_or_unwritable_cache_still_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = write_corpus(tmp_path / "corpus")
    monkeypatch.setenv(token_cache.CACHE_ENV, token_cache.CACHE_OFF)
    reference = split_of(paths)
    assert token_cache.cache_root() is None
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv(token_cache.CACHE_ENV, str(blocked))
    np.testing.assert_array_equal(split_of(paths)[0], reference[0])
    assert blocked.is_file()
    _tokenized_split.cache_clear()


def test_the_offline_corpus_listing_skips_installed_packages() -> None:
    from isoflop.data_sources import offline_corpus_files

    files = offline_corpus_files()
    assert files and all(path.suffix == ".py" for path in files)
    assert not any({"site-packages", "dist-packages", "__pycache__"} & set(path.parts) for path in files)
    assert list(files) == sorted(files)
    assert all(os.access(path, os.R_OK) for path in files[:20])
