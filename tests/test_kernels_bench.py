"""Kernel benchmark CLI: cheap import, bandwidth table, a tiny CPU run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import heavy_imports
from kernels.bench import bandwidth_for, main


def test_import_does_not_load_torch() -> None:
    assert heavy_imports(("kernels.bench",), ("torch",)) == []


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
                   "--experts", "4", "--repeats", "1", "--json", str(out)])
    assert status == 0
    results = json.loads(out.read_text())
    assert {"peer torch", "peer reference (gather+einsum)", "dense FFW d_ff=4d"} <= results["peer"].keys()
    assert all(r["seconds"] > 0 for r in results["peer"].values())
    assert results["cvmm"]["4"]["sigma-MoE cvmm torch"]["seconds"] > 0
