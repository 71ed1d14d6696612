"""Data: offline corpus, deterministic disjoint split, packing, exact positions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from isoflop.data import PackedCorpus, StreamingCorpus, load_training_data
from isoflop.data_sources import held_out_documents, offline_corpus, text_hash_fraction
from isoflop.errors import UserError
from isoflop.study_config import DataConfig
from isoflop.tokenizers import ByteTokenizer, build_tokenizer
from train_support import write_corpus


def test_byte_tokenizer_ends_documents() -> None:
    tokens = ByteTokenizer().encode_document("hé")
    assert tokens.tolist() == [104, 195, 169, 256]
    assert DataConfig().resolved_vocab_size == ByteTokenizer.vocab_size == 257


def test_offline_corpus_is_the_standard_library() -> None:
    documents, content_hash = offline_corpus()
    assert len(documents) > 500 and len(content_hash) == 16
    assert offline_corpus()[1] == content_hash  # cached, stable
    data = load_training_data(DataConfig(), seq_len=64, seed=0, tokens_needed=10_000)
    description = data.describe()
    assert description["source"] == "offline" and description["content_hash"] == content_hash
    assert description["n_documents"] == len(documents)
    batch = data.train.next_batch(4)
    assert batch.shape == (4, 65) and batch.max() <= 256


def documents_of(tokens: np.ndarray) -> list[str]:
    """Texts between end-of-document ids (byte tokenizer)."""
    parts = np.split(tokens, np.where(tokens == 256)[0] + 1)
    return [bytes(part[part != 256].astype(np.uint8)).decode() for part in parts if part.size]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("\n".join(json.dumps({"text": text}) for text in texts) + "\n")
    return path


def test_split_is_deterministic_disjoint_and_sized_in_tokens(tmp_path: Path) -> None:
    texts = [f"document number {index}" for index in range(2000)]
    config = DataConfig(source="files", paths=[str(write_jsonl(tmp_path / "docs.jsonl", texts))],
                        validation_fraction=0.1)
    data = load_training_data(config, seq_len=16, seed=0, tokens_needed=100)
    validation, train = documents_of(data.validation_tokens(10**9)), documents_of(data.train.tokens)
    assert set(validation).isdisjoint(train) and sorted(validation + train) == sorted(texts)
    total_tokens = data.train.tokens.size + data.validation_tokens(0).size
    longest = max(len(text) + 1 for text in texts)
    assert 0.1 * total_tokens - longest < data.validation_tokens(0).size <= 0.1 * total_tokens
    described = data.describe()["validation"]
    assert described["documents"] == len(validation) and described["tokens"] == data.validation_tokens(0).size
    assert len(described["content_hash"]) == 16 and described["split"].startswith("near_duplicate_clusters")
    # Deterministic: the same corpus gives the same split in a fresh computation.
    text_fractions = [text_hash_fraction(text) for text in texts]
    again = held_out_documents(texts, [len(text) + 1 for text in texts], 0.1)
    assert sorted(texts[index] for index in np.nonzero(again)[0]) == sorted(validation)
    assert max(text_fractions[index] for index in np.nonzero(again)[0]) < 0.2  # taken in hash order


def test_near_duplicates_land_on_the_same_side() -> None:
    rng = np.random.default_rng(0)
    words = [f"w{index}" for index in range(500)]
    families = []
    for family in range(40):  # 40 templates of 60 words, 8 variants each differing in one word
        template = list(rng.choice(words, 60))
        variants = []
        for variant in range(8):
            changed = list(template)
            changed[int(rng.integers(60))] = f"variant{variant}"
            variants.append(" ".join(changed))
        families.append(variants)
    texts = [text for variants in families for text in variants]
    held_out = held_out_documents(texts, [len(text) for text in texts], 0.25)
    per_family = held_out.reshape(40, 8)
    assert (per_family.all(axis=1) | ~per_family.any(axis=1)).all()
    assert 0 < per_family.all(axis=1).sum() < 40


def exact_near_duplicates(queries: list[str], corpus: list[str], threshold: float) -> list[tuple[int, int, float]]:
    """(query, corpus document, Jaccard) of every pair whose word 5-gram Jaccard similarity exceeds
    ``threshold``, computed exactly (no MinHash): shared shingles counted through a sorted index."""
    def shingles(text: str) -> np.ndarray:
        words = text.split()
        grams = {hash(tuple(words[start:start + 5])) for start in range(max(1, len(words) - 4))}
        return np.fromiter(grams, dtype=np.int64, count=len(grams))

    corpus_shingles = [shingles(text) for text in corpus]
    values = np.concatenate(corpus_shingles)
    owners = np.repeat(np.arange(len(corpus)), [item.size for item in corpus_shingles])
    order = np.argsort(values, kind="stable")
    values, owners = values[order], owners[order]
    sizes = np.array([item.size for item in corpus_shingles])
    found = []
    for query_index, text in enumerate(queries):
        query = shingles(text)
        starts, ends = np.searchsorted(values, query, "left"), np.searchsorted(values, query, "right")
        matched = np.concatenate([owners[start:end] for start, end in zip(starts, ends)] or [np.empty(0, int)])
        shared = np.bincount(matched, minlength=len(corpus))
        similarity = shared / (query.size + sizes - shared)
        found += [(query_index, int(index), float(similarity[index]))
                  for index in np.nonzero(similarity > threshold)[0]]
    return found


def test_no_validation_document_has_a_near_duplicate_in_training() -> None:
    """The offline corpus (~1,800 standard-library files): no held-out file shares more
    than half of its word 5-grams (Jaccard > 0.5) with a training file; exact check, ~3 s."""
    texts, _ = offline_corpus()
    data = load_training_data(DataConfig(), seq_len=64, seed=0, tokens_needed=10_000)
    validation = documents_of(data.validation_tokens(0))
    validation_set = set(validation)
    train = [text for text in texts if text not in validation_set]
    assert len(validation) == data.describe()["validation"]["documents"] and len(validation) + len(train) == len(texts)
    assert exact_near_duplicates(validation, train, 0.5) == []
    # The check can fail: the old per-file hash split kept encodings/hz.py's siblings in training.
    siblings = [text for text in texts if "_multibytecodec as mbc" in text]
    assert len(exact_near_duplicates(siblings[:1], siblings[1:], 0.5)) >= 1


def test_packed_positions_restore_exactly_and_ranks_split_the_batch() -> None:
    tokens = np.arange(1000, dtype=np.int32)
    corpus = PackedCorpus(tokens, seq_len=8, seed=3)
    corpus.next_batch(4)
    state = corpus.state_dict()
    expected = [corpus.next_batch(4) for _ in range(40)]  # crosses epochs (124 sequences)
    restored = PackedCorpus(tokens, seq_len=8, seed=3)
    restored.load_state_dict(state)
    assert all(np.array_equal(a, restored.next_batch(4)) for a in expected)
    whole = PackedCorpus(tokens, 8, 0)
    first = whole.next_batch(4)
    assert np.array_equal(np.concatenate([PackedCorpus(tokens, 8, 0).next_batch(4, rank, 2)
                                          for rank in range(2)]), first)
    assert all(np.array_equal(row[1:], row[:-1] + 1) for row in first)  # targets = inputs shifted


def stream_of(documents: list[str]):
    """An opener of ``documents`` as a sharded ``datasets`` stream of {"text": ...} rows."""
    import datasets

    if not documents:
        features = datasets.Features({"text": datasets.Value("string")})
        return lambda: datasets.IterableDataset.from_generator(lambda: iter(()), features=features)
    dataset = datasets.Dataset.from_dict({"text": documents})
    return lambda: dataset.to_iterable_dataset(num_shards=min(4, len(documents)))


def test_streaming_positions_restore_exactly() -> None:
    documents = [f"streamed document {index} " * (index % 5 + 1) for index in range(300)]

    def make() -> StreamingCorpus:
        return StreamingCorpus(stream_of(documents), "text", ByteTokenizer(), seq_len=16,
                               validation_fraction=0.1, allow_multiple_epochs=True)

    corpus = make()
    for _ in range(5):
        corpus.next_batch(4)
    state = corpus.state_dict()
    expected = [corpus.next_batch(4) for _ in range(30)]
    restored = make()
    restored.load_state_dict(state)
    assert all(np.array_equal(a, restored.next_batch(4)) for a in expected)
    with pytest.raises(UserError, match="allow_multiple_epochs"):
        once = StreamingCorpus(stream_of(documents[:3]), "text", ByteTokenizer(), 16, None, False)
        for _ in range(100):
            once.next_batch(4)


def test_streaming_corpus_without_training_documents_fails() -> None:
    documents = [f"held-out document {index}" for index in range(20)]
    all_validation = StreamingCorpus(stream_of(documents), "text", ByteTokenizer(), 16, validation_fraction=1.0,
                                     allow_multiple_epochs=True)
    with pytest.raises(UserError, match="no documents outside the validation split"):
        all_validation.next_batch(4)  # used to start pass after pass forever
    empty = StreamingCorpus(stream_of([]), "text", ByteTokenizer(), 16, None, allow_multiple_epochs=True)
    with pytest.raises(UserError, match="has no documents; check data.name/split"):
        empty.next_batch(4)


def test_hugging_face_tokenizer_errors_are_one_line() -> None:
    with pytest.raises(UserError, match="transformers|cannot be loaded"):
        build_tokenizer("no-such-org/no-such-tokenizer", 1000)


def test_files_sources(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt", n_documents=50)
    data = load_training_data(DataConfig(source="files", paths=[str(corpus)], validation_fraction=0.2),
                              seq_len=16, seed=0, tokens_needed=100)
    assert data.describe()["n_documents"] == 50  # one document per paragraph
    pd = pytest.importorskip("pandas")
    parquet = tmp_path / "corpus.parquet"
    pd.DataFrame({"text": [f"parquet row {index}" for index in range(50)]}).to_parquet(parquet)
    data = load_training_data(DataConfig(source="files", paths=[str(parquet)], validation_fraction=0.2),
                              seq_len=8, seed=0, tokens_needed=100)
    assert data.describe()["n_documents"] == 50
