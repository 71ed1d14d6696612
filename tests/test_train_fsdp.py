"""``train.parallelism=fsdp`` (FSDP2 ``fully_shard``) on two CPU processes (gloo)
trains the same model as DDP: the same loss at every step and the same
evaluation, within fp32 tolerance (only reduction orders differ), for a dense
model and for PEER, whose expert tables are what FSDP shards. Its sharded
checkpoints (each rank writes its shards) resume exactly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from isoflop import checkpoint
from isoflop.study_config import DataConfig
from conftest import SWEEP, isoflop
from train_support import (
    PEER_TINY, logged_losses, tiny_spec, train_in_processes, training_records, write_corpus, write_run,
)


@pytest.mark.slow
@pytest.mark.parametrize("ffw", [None, PEER_TINY], ids=["dense", "peer"])
def test_fsdp_matches_ddp_on_two_processes(tmp_path: Path, ffw) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    data = DataConfig(source="files", paths=[str(corpus)], validation_fraction=0.1)
    ddp = tiny_spec(steps=6, method="peer" if ffw else "dense", ffw=ffw, data=data, micro_batch_size=1,
                    checkpoint_every_steps=4)
    fsdp = dataclasses.replace(ddp, train=dataclasses.replace(ddp.train, parallelism="fsdp"))
    results = {}
    for name, spec in (("ddp", ddp), ("fsdp", fsdp)):
        run_dir = write_run(tmp_path / name, spec)
        train_in_processes(run_dir, 2, tmp_path)
        results[name] = json.loads((run_dir / "result.json").read_text())
    assert len(logged_losses(tmp_path / "fsdp")) == 6
    # reduce-scatter and all-reduce sum in different orders; Adam carries the rounding on (1.5e-5 by step 6)
    assert logged_losses(tmp_path / "fsdp") == pytest.approx(logged_losses(tmp_path / "ddp"), rel=1e-4, abs=1e-6)
    assert results["fsdp"]["eval"]["validation"]["loss"] == pytest.approx(
        results["ddp"]["eval"]["validation"]["loss"], rel=1e-4)

    resumed = write_run(tmp_path / "resumed", fsdp)
    checkpoint.adopt(checkpoint.step_folder(tmp_path / "fsdp", 4), fsdp.run_id, resumed, fsdp.run_id)
    train_in_processes(resumed, 2, tmp_path)
    assert [record["step"] for record in training_records(resumed)] == [5, 6]
    assert logged_losses(resumed) == logged_losses(tmp_path / "fsdp")[4:]


@pytest.mark.parametrize("overrides, fragment", [
    (["train.parallelism=fsdp", "train.sparse_tables=true"], "sparse row gradients cannot be sharded by FSDP"),
    (["train.parallelism=zero"], "train.parallelism='zero': must be one of ddp, fsdp"),
])
def test_bad_parallelism_is_one_line(tmp_path: Path, capsys, overrides: list[str], fragment: str) -> None:
    assert isoflop("plan", "--sweep", SWEEP, "--out", tmp_path / "plan.csv", *overrides) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and fragment in error and "Traceback" not in error
    assert not any(tmp_path.iterdir())
