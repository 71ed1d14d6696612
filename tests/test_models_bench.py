"""The layer benchmark runs end to end at tiny sizes and its PEER bound counts what the
step does; model configs stay torch-free."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import heavy_imports

from models import bench
from models.bench import main
from models.bench_bound import StepBound, peer_step_bytes, peer_step_matmul_flops, touched_expert_rows
from models.builder import build_ffw
from models.ffw.peer_config import PEERConfig
from models.verify import measure_ffw_forward_flops_per_token

TINY = ["--d-model", "16", "--n-experts", "64", "--heads", "2", "--top-k", "2", "--d-key", "8", "--tokens", "16"]


PEER_VARIANTS = ("peer", "peer_batch_norm")  # the default (prefix) query normalisation and the paper's BatchNorm
LAYERS = {"dense", *PEER_VARIANTS, "peer_routing", "peer_routing_batch_norm", "peer_sparse_tables",
          "peer_reference_backend"}


def test_bench_runs_at_tiny_size_and_writes_ratios_and_the_bound(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "bench.json"
    status = main([*TINY, "--repeats", "1", "--skip-large", "--device", "cpu", "--json", str(output)])
    assert status == 0
    comparison = json.loads(output.read_text())["comparison"]
    assert set(comparison) == LAYERS | {"bound"}
    assert set(comparison["bound"]) == set(PEER_VARIANTS)
    assert all(comparison[name]["seconds"] > 0 and comparison[name]["peak_bytes"] > 0 for name in LAYERS)
    assert all(comparison["bound"][name]["touched_rows"] > 0 for name in PEER_VARIANTS)
    printed = capsys.readouterr().out
    assert "GFLOP/s fp32 matmul" in printed and "bound = matmul FLOPs" in printed
    assert all(f"{name} measured" in printed for name in PEER_VARIANTS)


# Timings a fake clock gives each step (seconds); every other step takes 0.01 s.
FAKE_SECONDS = {"dense": 0.02, "peer": 0.05, "peer_batch_norm": 0.04, "matmul": 0.5, "copy": 0.25, "gather": 0.125}


def test_ratios_and_bounds_follow_the_timings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With known step times: each layer's time over the dense one, the probes' rates (work over
    time, as documented: 2·2048³ FLOPs, 2 x 128 MiB copied and gathered) and each PEER variant's
    measured time over its own bound (the faster bandwidth, here the gather's)."""
    monkeypatch.setattr(bench, "median_seconds",
                        lambda steps, repeats: {name: FAKE_SECONDS.get(name, 0.01) for name in steps})
    output = tmp_path / "bench.json"
    assert main([*TINY, "--repeats", "1", "--skip-large", "--device", "cpu", "--json", str(output)]) == 0
    comparison = json.loads(output.read_text())["comparison"]
    assert comparison["peer"]["time_vs_dense"] == pytest.approx(2.5)
    assert comparison["peer_batch_norm"]["time_vs_dense"] == pytest.approx(2.0)
    assert comparison["peer_routing"]["time_vs_dense"] == pytest.approx(0.5)
    matmul_rate, gather_rate = 2 * 2048 ** 3 / 0.5, 2 * 128 * 2 ** 20 / 0.125
    for name in PEER_VARIANTS:
        bound = comparison["bound"][name]
        assert bound["matmul_flops_per_second"] == pytest.approx(matmul_rate)
        assert bound["copy_bytes_per_second"] == pytest.approx(2 * 128 * 2 ** 20 / 0.25)
        expected_bound = bound["step_matmul_flops"] / matmul_rate + bound["step_bytes"] / gather_rate
        assert comparison[name]["time_vs_bound"] == pytest.approx(FAKE_SECONDS[name] / expected_bound)


def test_step_matmul_flops_are_three_times_the_counted_forward() -> None:
    config = PEERConfig(n_experts=256, n_heads=2, top_k=4, d_key=8)
    layer = build_ffw(config, 32, 1)
    counted_forward = measure_ffw_forward_flops_per_token(config, 32, seq_len=8, batch_size=2)
    assert peer_step_matmul_flops(layer, tokens=100) == 3 * counted_forward * 100


@pytest.mark.parametrize("glu", [False, True])
def test_step_bytes_by_hand(glu: bool) -> None:
    """d = 16, N = 64 (n = 8), h = 2, k = 2, d_key = 8, 16 tokens, fp32, 40 rows touched."""
    layer = build_ffw(PEERConfig(n_experts=64, n_heads=2, top_k=2, d_key=8, glu=glu), 16, 1)
    # U, V (and W): touched rows read in forward, read in backward, gradient written
    rows = (9 if glu else 6) * 40 * 16 * 4
    activations = 4 * 16 * 16 * 4  # x, dy read; y, dx written
    # query 16 x (2 * 8), sub-keys 2 * 2 * 8 * 4, BatchNorm weight and bias 2 * 16: read twice, gradient written
    other_parameters = 3 * (16 * 16 + 2 * 2 * 8 * 4 + 2 * 16) * 4
    pairs = 16 * 2 * 2 * (2 * (8 + 4) + 4)  # ids and scores read forward and backward, score gradient written
    assert peer_step_bytes(layer, 16, touched_rows=40) == rows + activations + other_parameters + pairs


def test_touched_rows_are_the_distinct_retrieved_experts() -> None:
    torch.manual_seed(0)
    layer = build_ffw(PEERConfig(n_experts=64, n_heads=2, top_k=2, d_key=8), 16, 1).eval()
    x = torch.randn(1, 3, 16)
    _, expert_index = layer.retrieval(x)
    assert touched_expert_rows(layer, x) == len(set(expert_index.flatten().tolist()))


def test_bound_is_the_sum_of_matmul_and_memory_time_at_the_faster_bandwidth() -> None:
    bound = StepBound(matmul_flops_per_second=2e11, copy_bytes_per_second=1e10, gather_bytes_per_second=2e10,
                      step_matmul_flops=4e9, step_bytes=1e8, touched_rows=10)
    assert bound.seconds == pytest.approx(4e9 / 2e11 + 1e8 / 2e10)


def test_importing_model_configs_does_not_import_torch() -> None:
    assert heavy_imports(("models", "models.config", "models.registry"), ("torch",)) == []
