"""wandb offline logging into the run directory; peak FLOP/s lookup and measurement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isoflop import hardware
from isoflop.errors import UserError
from isoflop.hardware import cpu_peak_flops, lookup_peak_flops, measured_cpu_peak_flops, peak_flops
from isoflop.study_config import DataConfig
from isoflop.train import run
from train_support import tiny_spec, write_corpus


@pytest.mark.slow
def test_wandb_offline_run_directory_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    corpus = write_corpus(tmp_path / "corpus.txt")
    spec = tiny_spec(steps=2, logger="wandb",
                     data=DataConfig(source="files", paths=[str(corpus)], validation_fraction=0.1))
    result = run(spec, tmp_path / "run")
    assert result.status == "completed"
    offline_runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert offline_runs, "no offline wandb run under run_dir/wandb"
    assert any(offline_runs[0].glob("*.wandb"))


def test_peak_flops_table_and_cpu_measurement() -> None:
    assert lookup_peak_flops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4e12)
    assert lookup_peak_flops("NVIDIA H100 PCIe") == pytest.approx(756e12)
    assert lookup_peak_flops("NVIDIA A100-SXM4-80GB") == pytest.approx(312e12)
    assert lookup_peak_flops("NVIDIA L40S") == pytest.approx(362.05e12)
    assert lookup_peak_flops("NVIDIA H200") == pytest.approx(989.4e12)
    assert lookup_peak_flops("mystery accelerator") is None
    with pytest.raises(UserError, match="peak_flops"):
        peak_flops("mystery accelerator")
    measured = measured_cpu_peak_flops()
    assert 1e8 < measured < 1e14 and measured_cpu_peak_flops() == measured  # cached per process
    assert peak_flops("cpu") == cpu_peak_flops()


def test_the_cpu_peak_is_measured_once_per_machine(tmp_path, monkeypatch) -> None:
    measurements = []

    def measure() -> float:
        measurements.append(1)
        return 1.5e11 + len(measurements)

    monkeypatch.setattr(hardware, "measured_cpu_peak_flops", measure)
    monkeypatch.setenv("ISOFLOP_CACHE_DIR", str(tmp_path))

    def fresh_process_peak() -> float:
        cpu_peak_flops.cache_clear()
        return cpu_peak_flops()

    assert fresh_process_peak() == 1.5e11 + 1
    assert fresh_process_peak() == 1.5e11 + 1 and len(measurements) == 1  # read back, not measured
    saved = tmp_path / hardware.CPU_PEAK_FILE
    assert list(json.loads(saved.read_text()).values()) == [1.5e11 + 1]
    saved.write_text("{not json")  # a corrupt file is measured and written again
    assert fresh_process_peak() == 1.5e11 + 2 and json.loads(saved.read_text())
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # another thread count is another entry
    try:
        assert fresh_process_peak() == 1.5e11 + 3 and len(json.loads(saved.read_text())) == 2
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("ISOFLOP_CACHE_DIR", "off")
    assert fresh_process_peak() == 1.5e11 + 4  # no cache: measured in each process
    cpu_peak_flops.cache_clear()


def test_measuring_the_cpu_peak_leaves_the_global_random_state_alone() -> None:
    import torch

    torch.manual_seed(1234)
    before = torch.get_rng_state()
    assert measured_cpu_peak_flops.__wrapped__(sizes=(64,), seconds_per_size=0.01) > 0  # uncached
    assert torch.equal(torch.get_rng_state(), before)
