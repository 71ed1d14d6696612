"""Resuming a streamed training corpus continues the ``datasets`` stream where it stopped
(``IterableDataset.state_dict()``), without reading the documents already used again.

The corpus is local JSON Lines shards streamed through ``datasets.load_dataset`` exactly
as C4 is on a cluster (the packaged ``json`` builder, ``streaming=True``, the features
declared as C4's dataset card declares them, so that no shard is read to infer them). A resume opens
no shard before the position's (``datasets`` reads the shard in which the position falls,
and the one before when the position sits at its chunk boundary, to skip to it): the
first shard, used up two shards before the position, is damaged after the position is
saved, so a resume that read it again would fail instead of matching the uninterrupted
stream.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from isoflop.data import StreamingCorpus
from isoflop.errors import UserError
from isoflop.study_config import DataConfig
from isoflop.tokenizers import ByteTokenizer
from isoflop.train import run
from conftest import metrics
from train_support import tiny_spec


def write_shards(folder: Path, documents_per_shard: list[int], split: str = "train") -> list[Path]:
    """``<split>-NNNNN.jsonl`` shards of {"text": ...} rows; shard 0's documents are short."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for shard, count in enumerate(documents_per_shard):
        path = folder / f"{split}-{shard:05d}.jsonl"
        words = "short" if shard == 0 else "a streamed document of shard"
        path.write_text("".join(json.dumps({"text": f"{words} {shard} number {index}"}) + "\n"
                                for index in range(count)))
        shards.append(path)
    return shards


DATASET_CARD = """---
dataset_info:
  features:
  - name: text
    dtype: string
configs:
- config_name: default
  data_files:
  - split: train
    path: train-*.jsonl
  - split: validation
    path: validation-*.jsonl
---
"""


def damage(shards: list[Path]) -> None:
    for path in shards:
        path.write_text("this is not JSON\n")


def test_a_resumed_stream_continues_without_reading_used_shards_again(tmp_path: Path) -> None:
    import datasets

    shards = write_shards(tmp_path / "corpus", [3, 3, 20, 20, 20])

    def corpus(features: datasets.Features | None = datasets.Features({"text": datasets.Value("string")})
               ) -> StreamingCorpus:
        return StreamingCorpus(lambda: datasets.load_dataset("json", data_files=[str(path) for path in shards],
                                                             split="train", streaming=True, features=features),
                               "text", ByteTokenizer(), seq_len=16, validation_fraction=None,
                               allow_multiple_epochs=False)

    stream = corpus()
    for _ in range(4):  # 4 x 64 tokens: shards 0 and 1 (~170 tokens) are used up
        stream.next_batch(4)
    state = stream.state_dict()
    expected = [stream.next_batch(4) for _ in range(10)]

    damage(shards[:1])
    resumed = corpus()
    resumed.load_state_dict(state)
    assert all(np.array_equal(batch, resumed.next_batch(4)) for batch in expected)
    with pytest.raises(UserError, match="the training stream broke off"):  # the damage is real
        corpus().next_batch(4)
    # without declared features datasets reads shard 0 to infer them and builds another
    # pipeline, whose stream position would land elsewhere: refused, not misread
    elsewhere = corpus(features=None)
    elsewhere.load_state_dict(state)
    with pytest.raises(UserError, match="is not built like the one this checkpoint's position was taken in"):
        elsewhere.next_batch(4)


@pytest.mark.slow
def test_a_run_on_a_streamed_corpus_resumes_bitwise_from_its_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"  # a dataset folder opened by name, as data.source=hub opens allenai/c4
    shards = write_shards(folder, [3, 3, 40, 40, 40])
    write_shards(folder, [30], split="validation")
    (folder / "README.md").write_text(DATASET_CARD)
    data = DataConfig(source="hub", name=str(folder), split="train", validation_split="validation")
    spec = tiny_spec(steps=6, data=data, checkpoint_every_steps=2)
    reference = run(spec, tmp_path / "reference")
    assert reference.status == "completed"

    run_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "reference" / "checkpoints" / "step_000002", run_dir / "checkpoints" / "step_000002")
    damage(shards[:1])  # two steps (256 tokens) used shards 0 and 1 (~170 tokens) up
    resumed = run(spec, run_dir)
    assert [record["step"] for record in metrics(run_dir) if record.get("kind") == "resume"] == [2]
    losses = {record["step"]: record["loss"] for record in metrics(run_dir) if "loss" in record}
    assert losses == {record["step"]: record["loss"] for record in metrics(tmp_path / "reference")
                      if "loss" in record and record["step"] > 2}
    assert resumed.final_train_loss == reference.final_train_loss
    assert resumed.eval["validation"].loss == reference.eval["validation"].loss
