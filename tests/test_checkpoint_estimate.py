"""``submit --dry-run``'s checkpoint sizes against a checkpoint really saved, and its
warning when saving one would not fit the time-limit signal's lead time."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SWEEP, isoflop

from isoflop import checkpoint
from isoflop.commands.submit import checkpoint_bytes
from isoflop.compose import load_study
from isoflop.distributed import DistributedContext
from isoflop.optimization import build_optimizers
from isoflop.planner import plan
from isoflop.submission import SIGNAL_DELAY_S

SHAPE = ["ladder.shapes=[[4,256,4]]"]  # ~3.4M parameters: a 41 MB checkpoint


def planned_run() -> object:
    return plan(load_study(SWEEP, SHAPE, [1e14]).study).runs[0]


def test_estimated_size_is_the_size_of_a_saved_checkpoint(tmp_path: Path) -> None:
    from models import build_model

    spec = planned_run()
    model = build_model(spec.model, device=torch.device("cpu"), sparse_tables=False)
    optimizer, _ = build_optimizers(model, spec)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()  # allocates Adam's moments
    context = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    saved = checkpoint.save(tmp_path, 1, spec.run_id, {"model": model.state_dict(),
                                                       "optimizer": optimizer.state_dict()}, context)
    saved_bytes = sum(path.stat().st_size for path in saved.iterdir())
    assert checkpoint_bytes(spec) == pytest.approx(saved_bytes, rel=0.01)  # the rest: file headers, RNG states


@pytest.mark.parametrize("slower", [False, True])
def test_dry_run_warns_when_a_checkpoint_outlasts_the_signal(tmp_path: Path, capsys, slower: bool) -> None:
    spec = planned_run()
    seconds = SIGNAL_DELAY_S * (2.0 if slower else 0.5)
    bandwidth = checkpoint_bytes(spec) / seconds / 1e9
    assert isoflop("submit", "--sweep", SWEEP, "--budget", "1e14", "--dry-run", "--root", tmp_path, *SHAPE,
                   f"cluster.checkpoint_write_gbps={bandwidth!r}") == 0
    captured = capsys.readouterr()
    assert f"{spec.run_id}  {checkpoint_bytes(spec) / 1e9:.3g} GB  {seconds:.3g} s" in captured.out
    warning = [line for line in captured.err.splitlines() if "checkpoint" in line]
    if slower:
        assert len(warning) == 1 and spec.run_id in warning[0] and f"{SIGNAL_DELAY_S} s" in warning[0]
    else:
        assert warning == []
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_bad_bandwidth_is_one_line(tmp_path: Path, capsys, value: str) -> None:
    assert isoflop("submit", "--sweep", SWEEP, "--dry-run", "--root", tmp_path,
                   f"cluster.checkpoint_write_gbps={value}") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "cluster.checkpoint_write_gbps" in error and "Traceback" not in error
