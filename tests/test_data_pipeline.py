"""Data: offline corpus, deterministic disjoint split, packing, exact positions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from isoflop.data import PackedCorpus, StreamingCorpus, evaluation_sequences, load_training_data
from isoflop.data_sources import document_is_validation, offline_corpus
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


def test_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    texts = [f"document number {index}" for index in range(2000)]
    flags = [document_is_validation(text, 0.1) for text in texts]
    assert flags == [document_is_validation(text, 0.1) for text in texts]
    assert 0.07 < sum(flags) / len(flags) < 0.13
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": text}) for text in texts) + "\n")
    data = load_training_data(DataConfig(source="files", paths=[str(path)], validation_fraction=0.1),
                              seq_len=16, seed=0, tokens_needed=100)
    def documents_of(tokens: np.ndarray) -> set[str]:
        """Texts between end-of-document ids."""
        parts = np.split(tokens, np.where(tokens == 256)[0] + 1)
        return {bytes(part[part != 256].astype(np.uint8)).decode() for part in parts if part.size}

    validation, train = documents_of(data.validation_tokens(10**9)), documents_of(data.train.tokens)
    expected_validation = {text for text, flag in zip(texts, flags) if flag}
    assert validation == expected_validation
    assert train == set(texts) - expected_validation


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


def test_evaluation_sequences_predict_every_token_once() -> None:
    sequences = evaluation_sequences(np.arange(21, dtype=np.int32), seq_len=8)
    assert [len(sequence) for sequence in sequences] == [9, 9, 5]
    assert sum(len(sequence) - 1 for sequence in sequences) == 20


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
