"""The layer benchmark runs end to end at tiny sizes; model configs stay torch-free."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import heavy_imports
from models.bench import main


def test_bench_runs_at_tiny_size_and_writes_ratios(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    status = main(["--d-model", "16", "--n-experts", "64", "--heads", "2", "--top-k", "2", "--d-key", "8",
                   "--tokens", "16", "--repeats", "1", "--skip-large", "--device", "cpu", "--json", str(output)])
    assert status == 0
    comparison = json.loads(output.read_text())["comparison"]
    assert set(comparison) == {"dense", "peer", "peer_sparse_tables", "peer_reference_backend"}
    assert comparison["dense"]["time_vs_dense"] == 1.0
    assert all(result["seconds"] > 0 and result["peak_bytes"] > 0 for result in comparison.values())


def test_importing_model_configs_does_not_import_torch() -> None:
    assert heavy_imports(("models", "models.config", "models.registry"), ("torch",)) == []
