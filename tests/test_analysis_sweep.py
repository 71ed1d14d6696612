"""``isoflop analyze SWEEP_DIR`` on a fake sweep directory: report, exclusions, figures, tables."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.collect import collect_sweep
from analysis.figure_style import FIGURE_DPI, FIGURE_WIDTH_INCHES, PANEL_HEIGHT_INCHES
from conftest import analyze, heavy_imports
from isoflop.errors import UserError

METHODS = {  # method -> (ffw family, loss offset)
    "dense": ("dense", 0.0),
    "moe": ("expert_choice_moe", -0.05),
    "pkm": ("pkm", -0.03),
    "peer": ("peer", -0.09),
}
BUDGETS = (6e18, 2e19)


def chinchilla_loss(params: float, tokens: float) -> float:
    return 1.69 + 406.4 / params**0.34 + 410.7 / tokens**0.28


def write_run(runs_dir: Path, run_id: str, method: str, budget: float, params: float, ffw: dict,
              offset: float = 0.0, status: str = "completed", write_result: bool = True) -> None:
    tokens = budget / (6.0 * params)
    loss = chinchilla_loss(params, tokens) + offset
    params_dict = {"total": params * (8 if method != "dense" else 1), "active": params, "embedding": 1e6,
                   "non_embedding": params - 1e6, "active_non_embedding": params - 1e6}
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True)
    spec = {"run_id": run_id, "method": method, "budget_flops": budget, "tokens": tokens, "params": params_dict,
            "model": {"ffw": ffw, "backbone": {"n_layers": 4, "d_model": 128, "n_heads": 4}}}
    (run_dir / "run.json").write_text(json.dumps(spec))
    if not write_result:
        return
    routing = {} if method == "dense" else {"blocks.3.ffw": {"expert_usage": 0.5 + 0.4 * bool(ffw.get("query_batchnorm")),
                                                             "unevenness": 0.3, "n_experts": ffw.get("n_experts", 64)}}
    result = {"run_id": run_id, "study": "tiny", "method": method, "budget_flops": budget, "status": status,
              "diverged_at_step": 17 if status == "diverged" else None, "steps": 100, "tokens": tokens,
              "realized_flops": budget * 0.999, "flops_per_token_train": 6 * params, "params": params_dict,
              "final_train_loss": loss - 0.05,
              "eval": {"validation": {"loss": loss, "perplexity": math.exp(loss), "tokens": 65536},
                       "wikitext103": {"loss": loss + 0.3, "perplexity": math.exp(loss + 0.3), "tokens": 65536}},
              "routing": routing, "wall_time_s": 1.0, "tokens_per_s": 1000.0, "mfu": 0.1, "code_version": "abc123"}
    (run_dir / "result.json").write_text(json.dumps(result))


def build_sweep(root: Path) -> Path:
    """Four methods x two budgets x five sizes, a PEER ablation, plus one diverged, one partial, one corrupt run."""
    runs_dir = root / "runs"
    for method, (family, offset) in METHODS.items():
        ffw = {"family": family, "n_experts": 65536, "n_heads": 8, "top_k": 16, "query_batchnorm": True}
        if method == "dense":
            ffw = {"family": "dense"}
        for budget in BUDGETS:
            center = np.log10(0.1 * (budget / 6.0) ** 0.5)
            for index, log_params in enumerate(np.linspace(center - 0.6, center + 0.6, 5)):
                write_run(runs_dir, f"{method}-{budget:.0e}-{index}", method, budget, 10.0**log_params, ffw, offset)
    for n_experts, batchnorm, offset in ((16384, True, -0.06), (65536, False, -0.07)):
        ffw = {"family": "peer", "n_experts": n_experts, "n_heads": 8, "top_k": 16, "query_batchnorm": batchnorm}
        center = np.log10(0.1 * (6e18 / 6.0) ** 0.5)
        for index, log_params in enumerate(np.linspace(center - 0.6, center + 0.6, 5)):
            write_run(runs_dir, f"peer-ablation-{n_experts}-{batchnorm}-{index}", f"peer-{n_experts}-bn{int(batchnorm)}",
                      6e18, 10.0**log_params, ffw, offset)
    write_run(runs_dir, "dense-diverged", "dense", 6e18, 3e8, {"family": "dense"}, status="diverged")
    write_run(runs_dir, "dense-partial", "dense", 6e18, 3e8, {"family": "dense"}, write_result=False)
    write_run(runs_dir, "dense-corrupt", "dense", 6e18, 3e8, {"family": "dense"})
    (runs_dir / "dense-corrupt" / "result.json").write_text('{"run_id": "dense-corrupt", "status": ')
    return root


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from the PNG IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def test_collect_lists_exclusions(tmp_path: Path) -> None:
    collection = collect_sweep(build_sweep(tmp_path / "sweep"))
    reasons = {run.run_id: run.reason for run in collection.excluded}
    assert "diverged" in reasons["dense-diverged"]
    assert "no result.json" in reasons["dense-partial"]
    assert "corrupt result.json" in reasons["dense-corrupt"]
    assert len(collection.runs) == 4 * 2 * 5 + 10
    assert collection.runs["params"].equals(collection.runs["params_active"])
    assert {"eval_wikitext103_perplexity", "ffw_n_experts", "expert_usage"} <= set(collection.runs.columns)


def test_corrupt_run_json_is_a_note_and_the_run_is_fitted(tmp_path: Path) -> None:
    sweep = build_sweep(tmp_path / "sweep")
    (sweep / "runs" / "dense-6e+18-2" / "run.json").write_text('{"run_id": "dense-6e+18-2", ')
    collection = collect_sweep(sweep)
    assert "dense-6e+18-2" in set(collection.runs["run_id"])
    assert "dense-6e+18-2" not in {run.run_id for run in collection.excluded}
    assert len(collection.runs) == 4 * 2 * 5 + 10
    assert any("dense-6e+18-2" in note and "corrupt run.json" in note for note in collection.notes)

    assert analyze(str(sweep), "--out", str(tmp_path / "out"), "--bootstrap", "0") == 0
    optima = pd.read_csv(tmp_path / "out" / "optima.csv").set_index(["method", "budget"])
    assert optima.loc[("dense", 6e18), "n_points"] == 5
    report = (tmp_path / "out" / "report.md").read_text()
    assert "3 run(s) did not enter the fits" in report
    assert "Note: run dense-6e+18-2: corrupt run.json" in report


def test_report_from_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = build_sweep(tmp_path / "sweep")
    assert analyze(str(sweep), "--bootstrap", "100", "--metric", "perplexity", "--predict", "1e20", "--approach3") == 0
    out_dir = sweep / "report"
    captured = capsys.readouterr()
    assert "dense-diverged" in captured.err and str(out_dir / "report.md") in captured.out

    report = (out_dir / "report.md").read_text()
    for run_id in ("dense-diverged", "dense-partial", "dense-corrupt"):
        assert run_id in report
    assert "![isoflop](isoflop.png)" in report and "Approach 3" in report

    optima = pd.read_csv(out_dir / "optima.csv")
    assert list(optima.columns[:11]) == ["method", "budget", "status", "n_opt", "n_opt_lo", "n_opt_hi", "d_opt",
                                         "d_opt_lo", "d_opt_hi", "loss_opt", "n_points"]
    assert len(optima) == 4 * 2 + 2

    for stem in ("isoflop", "scaling", "ablation_peer_experts", "ablation_peer_query_norm"):
        for suffix in (".png", ".pdf"):
            assert (out_dir / f"{stem}{suffix}").stat().st_size > 1000, stem
    width, height = png_size(out_dir / "isoflop.png")
    assert width == round(FIGURE_WIDTH_INCHES * FIGURE_DPI)
    assert height > 2 * PANEL_HEIGHT_INCHES * FIGURE_DPI  # six groups: six panels in 2 rows of 3
    import matplotlib.image

    pixels = matplotlib.image.imread(out_dir / "isoflop.png")
    assert pixels.shape[:2] == (height, width) and pixels.std() > 0.01  # not blank

    perplexity = pd.read_csv(out_dir / "table_perplexity.csv")
    assert {"validation", "wikitext103", "selection"} <= set(perplexity.columns)
    assert set(perplexity["method"]) >= set(METHODS)
    usage = pd.read_csv(out_dir / "table_usage.csv")
    assert usage["expert_usage_percent"].between(0, 100).all() and "dense" not in set(usage["method"])
    for stem in ("table_perplexity", "table_usage"):
        assert (out_dir / f"{stem}.tex").read_text().startswith("\\begin{table}")
        assert (out_dir / f"{stem}.md").read_text().startswith("| ")
    usage_md = (out_dir / "table_usage.md").read_text()
    assert "| 65536 |" in usage_md and "65536.0" not in usage_md and "| 6e18 |" in usage_md  # counts, budgets
    assert "6000000000000000000" not in usage_md and "e+18" not in usage_md
    usage_tex = (out_dir / "table_usage.tex").read_text()
    assert "$6\\times10^{18}$" in usage_tex and "\\toprule" in usage_tex and "n\\_experts" in usage_tex
    assert "65536.0" not in usage_tex
    assert "a line through two points" in report  # two budgets: no exponent interval
    laws = pd.read_csv(out_dir / "powerlaws.csv").query("row == 'fit'")
    assert (laws["interval"] == "none").all() and laws["exponent_lo"].isna().all()


def test_other_params_kind_and_eval_dataset(tmp_path: Path) -> None:
    sweep = build_sweep(tmp_path / "sweep")
    assert analyze(str(sweep), "--out", str(tmp_path / "out"), "--bootstrap", "0", "--params", "total",
                   "--eval-dataset", "wikitext103", "--parquet") == 0
    runs = pd.read_parquet(tmp_path / "out" / "runs.parquet")
    assert runs["params"].equals(runs["params_total"])
    assert np.allclose(runs["loss"], runs["eval_wikitext103_loss"])


def test_bad_sweeps_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        analyze(str(tmp_path / "absent"))
    (tmp_path / "a-file").write_text("not a sweep\n")
    with pytest.raises(UserError, match="sweep directory .*a-file is not a folder"):  # not "--out ... cannot write"
        analyze(str(tmp_path / "a-file"))
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    with pytest.raises(UserError, match="no runs found"):
        analyze(str(tmp_path / "empty"))
    sweep = build_sweep(tmp_path / "sweep")
    with pytest.raises(UserError, match="available: validation, wikitext103"):
        analyze(str(sweep), "--eval-dataset", "lambada")
    with pytest.raises(UserError, match="exactly one"):
        analyze(str(sweep), "--csv", str(tmp_path / "x.csv"))
    only_partial = tmp_path / "partial"
    write_run(only_partial / "runs", "dense-partial", "dense", 6e18, 3e8, {"family": "dense"}, write_result=False)
    with pytest.raises(UserError, match="no completed runs"):
        analyze(str(only_partial))


def test_command_module_imports_nothing_heavy() -> None:
    assert heavy_imports(("analysis.command",), ("pandas", "numpy", "scipy", "matplotlib")) == []


def test_implausible_run_is_excluded_with_its_reason(tmp_path: Path) -> None:
    sweep = build_sweep(tmp_path / "sweep")
    result_path = sweep / "runs" / "dense-6e+18-0" / "result.json"
    result = json.loads(result_path.read_text())
    result["params"]["active"] = 1e-300
    result_path.write_text(json.dumps(result))
    collection = collect_sweep(sweep)
    reasons = {run.run_id: run.reason for run in collection.excluded}
    assert "params 1e-300 must be a positive count" in reasons["dense-6e+18-0"]
    assert "dense-6e+18-0" not in set(collection.runs["run_id"])


def test_one_budget_done_and_one_training_does_not_ask_for_a_second_budget(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Two budgets planned, the second's runs still training (no result.json): the partial report
    points at those runs, not at adding a budget the sweep already has."""
    sweep = build_sweep(tmp_path / "sweep")
    for result in (sweep / "runs").glob("*-2e+19-*/result.json"):
        result.unlink()
    assert analyze(str(sweep), "--out", str(tmp_path / "out"), "--bootstrap", "0") == 0
    printed = capsys.readouterr().out
    assert "partial report: a single budget" in printed and "still training" in printed
    assert "add a second budget" not in printed


def test_a_method_whose_every_run_diverged_is_named_not_dropped(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A method with no run in the fits (all diverged) is said to be absent, on stdout and in the
    report, and its excluded runs carry the method."""
    sweep = build_sweep(tmp_path / "sweep")
    for index in range(3):
        write_run(sweep / "runs", f"wild-{index}", "wild", 6e18, 3e8 * (index + 1), {"family": "dense"},
                  status="diverged")
    assert analyze(str(sweep), "--out", str(tmp_path / "out"), "--bootstrap", "0") == 0
    assert "wild             no run entered the fits (3 excluded" in capsys.readouterr().out
    report = (tmp_path / "out" / "report.md").read_text()
    assert "No run of **wild** (3 run(s), every one excluded) entered the fits" in report
    assert "| wild-0 | wild | diverged" in report
