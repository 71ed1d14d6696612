"""Kernel benchmark CLI: cheap import, bandwidth table, a tiny CPU run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import heavy_imports
from isoflop.bench.kernels import bandwidth_for, main


def test_import_does_not_load_torch() -> None:
    assert heavy_imports(("isoflop.bench.kernels",), ("torch",)) == []


def test_bandwidth_table_is_keyed_by_device_name() -> None:
    assert bandwidth_for("NVIDIA H100 80GB HBM3") == 3.35e12
    assert bandwidth_for("NVIDIA H100 PCIe") == 2.0e12
    assert bandwidth_for("NVIDIA H200") == 4.8e12
    assert bandwidth_for("NVIDIA A100-SXM4-80GB") == 2.0e12
    assert bandwidth_for("cpu") is None


@pytest.mark.slow
def test_tiny_cpu_run_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    status = main(["--device", "cpu", "--tokens", "64", "--dim", "32", "--rows", "1024", "--moe-tokens", "64",
                   "--experts", "4", "--repeats", "1", "--bandwidth-gbs", "10", "--json", str(out)])
    assert status == 0
    results = json.loads(out.read_text())
    peer = results["peer"]
    assert set(peer["cases"]) == {"peer torch", "peer torch sparse_grad", "peer reference (gather+einsum)",
                                  "dense FFW d_ff=4d"}
    assert all(case["seconds"] > 0 and case["time_ratio"] > 0 for case in peer["cases"].values())
    bound, kernel = peer["bound"], peer["cases"]["peer torch"]
    assert bound["kernel_case"] == "peer torch" and bound["bandwidth_bytes_per_s"] == 10e9
    assert bound["min_bytes"] > 6 * 64 * 32 * 4  # more than the per-token tensors alone
    assert bound["seconds"] == pytest.approx(bound["min_bytes"] / 10e9)
    assert bound["kernel_vs_bound"] == pytest.approx(kernel["seconds"] / bound["seconds"])
    cvmm = results["cvmm"]["by_experts"]["4"]
    assert cvmm["baseline"] == "dense MLP d_ff=512" and cvmm["cases"]["sigma-MoE cvmm torch"]["seconds"] > 0
