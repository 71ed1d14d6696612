"""The paper studies' figures and tables from fake sweeps: which settings vary, which curves, rows and columns exist.

He 2024 Figure 3a (N on a fixed backbone, from the dense backbone), Figure 3b
(curves per hk over the heads h), Figure 4 (query norms over a ladder, one
panel), Table 2 (N x query norm, the paper's layout), and the matched-parameter
table of Csordás et al. 2023; the report of a study on one fixed backbone, and
of a ladder study with sizes missing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.ablation_figures import experts_figure, heads_figure
from analysis.ablations import detect_ablations
from analysis.collect import collect_sweep
from analysis.comparison_figure import comparison_figure
from analysis.matched_params import matched_parameter_table
from analysis.tables import expert_usage_grid
from conftest import analyze
from record_support import run_result
from isoflop.run_records import EvalScores, ParamCounts

BUDGET = 3e11
BACKBONE = {"n_layers": 2, "d_model": 24, "n_heads": 2}
NORMS = {"off": {"query_batchnorm": False}, "prefix": {}, "batch": {"query_norm_statistics": "batch"}}
PEER = {"family": "peer", "n_heads": 2, "top_k": 8, "d_key": 32, "query_batchnorm": True,
        "query_norm_statistics": "prefix"}


def write_run(runs_dir: Path, run_id: str, method: str, ffw: dict, perplexity: float, params_total: float,
              params_active: float = 3e4, budget: float = BUDGET, backbone: dict | None = None,
              usage: float | None = None, unevenness: float | None = None) -> None:
    """A completed run with the given facts in its run.json and result.json."""
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True)
    backbone = backbone or BACKBONE
    (run_dir / "run.json").write_text(json.dumps({"run_id": run_id, "model": {"ffw": ffw, "backbone": backbone}}))
    routing = {} if usage is None else {"blocks.1.ffw": {"expert_usage": usage, "unevenness": unevenness,
                                                          "n_experts": ffw.get("n_experts")}}
    loss = math.log(perplexity)
    run_result(run_id=run_id, method=method, budget_flops=budget, tokens=budget / (6 * params_active),
               params=ParamCounts(total=int(params_total), active=int(params_active), embedding=6000,
                                  non_embedding=int(params_total) - 6000, active_non_embedding=int(params_active) - 6000),
               eval={"validation": EvalScores(loss=loss, perplexity=perplexity, tokens=4096, requested_tokens=4096,
                                              capped=False)},
               routing=routing).write(run_dir / "result.json")


def table2_sweep(root: Path) -> Path:
    """Dense + PEER with N = 256..16k x three query norms on one backbone (the Table 2 study)."""
    runs_dir = root / "runs"
    write_run(runs_dir, "dense", "dense", {"family": "dense"}, 9.0, 2.6e4)
    for index, n_experts in enumerate((256, 1024, 4096, 16384)):
        for shift, (norm, setting) in enumerate(NORMS.items()):
            write_run(runs_dir, f"peer-{n_experts}-{norm}", f"peer_{n_experts}_{norm}",
                      {**PEER, "n_experts": n_experts, **setting}, 8.5 - 0.3 * index - 0.05 * shift,
                      2.6e4 + 48 * n_experts, usage=1.0 - 0.01 * index, unevenness=0.3 + 0.2 * index - 0.1 * shift)
    return root


def test_table2_study_gives_figure_3a_with_a_curve_per_query_norm_from_the_dense_backbone(tmp_path: Path) -> None:
    runs = collect_sweep(table2_sweep(tmp_path / "sweep")).runs
    ablations = detect_ablations(runs, n_bootstrap=0, seed=0, robust=False)
    assert [(a.name, a.fixed_backbone) for a in ablations] == [("experts", True)]
    experts = ablations[0]
    assert list(experts.reference["method"]) == ["dense"]
    figure = experts_figure(experts, "Perplexity")
    (axes,) = figure.axes
    lines = axes.get_lines()
    assert len(lines) == 3  # off, causal, batch
    dense_params = runs.loc[runs["method"] == "dense", "params_total"].item()
    for line in lines:
        x, y = line.get_data()
        assert len(x) == 5 and x[0] == dense_params and y[0] == 9.0  # from the dense backbone ...
        assert list(x[1:]) == sorted(x[1:])  # ... through N ascending
    labels = {text.get_text() for text in axes.texts}
    assert labels == {"256", "1k", "4k", "16k", "dense"}
    legend = {text.get_text() for text in figure.legends[0].get_texts()}
    assert {"no query norm", "causal query norm", "query BatchNorm (non-causal)"} <= legend
    assert axes.get_xlabel() == "Total parameters" and axes.get_xscale() == "log"


def test_table2_has_the_papers_layout(tmp_path: Path) -> None:
    runs = collect_sweep(table2_sweep(tmp_path / "sweep")).runs
    grid, tidy = expert_usage_grid(runs)["peer"]
    assert list(grid["N"]) == ["256", "1k", "4k", "16k"]  # rows: N
    assert list(grid.columns[2:5]) == ["no norm: usage (%)", "no norm: unevenness", "no norm: perplexity"]
    assert [column.split(":")[0] for column in grid.columns[2::3]] == ["no norm", "causal norm", "BatchNorm (non-causal)"]
    row = grid.set_index("N").loc["4k"]
    assert row["causal norm: perplexity"] == pytest.approx(8.5 - 0.6 - 0.05)
    assert row["causal norm: usage (%)"] == pytest.approx(98.0)
    assert row["causal norm: unevenness"] == pytest.approx(0.3 + 0.4 - 0.1)
    assert row["BatchNorm (non-causal): unevenness"] == pytest.approx(0.3 + 0.4 - 0.2)
    assert len(tidy) == 12 and set(tidy["query_norm"]) == {"off", "prefix", "batch"}
    assert (tidy["selection"] == "the only run").all()


def test_analyze_writes_figure_3a_and_table2(tmp_path: Path) -> None:
    sweep = table2_sweep(tmp_path / "sweep")
    assert analyze(str(sweep), "--bootstrap", "0") == 0
    report = sweep / "report"
    for name in ("ablation_peer_experts.png", "ablation_peer_experts.pdf", "table2_peer.md", "table2_peer.tex"):
        assert (report / name).stat().st_size > 500, name
    markdown = (report / "table2_peer.md").read_text()
    assert markdown.startswith("| budget | N | no norm: usage (%) |") and "| 3e11 | 4k |" in markdown
    tidy = pd.read_csv(report / "table2_peer.csv")
    assert {"n_experts", "query_norm", "perplexity", "expert_usage_percent", "unevenness", "run_id"} <= set(tidy.columns)
    assert "table2_peer" in (report / "report.md").read_text()
    assert not (report / "table_matched_params.md").exists()  # dense vs PEER: no equal parameter counts


def test_figure_3b_draws_one_curve_per_hk_over_the_heads(tmp_path: Path) -> None:
    runs_dir = tmp_path / "sweep" / "runs"
    compositions = [(hk, h) for hk in (8, 16, 32) for h in (1, 2, 4, 8) if 2 <= hk // h]
    for hk, h in compositions:
        best_h = {8: 1, 16: 2, 32: 4}[hk]  # the optimal h grows with hk, as in the paper
        perplexity = 8.0 - 0.2 * math.log2(hk) + 0.1 * abs(math.log2(h / best_h))
        write_run(runs_dir, f"hk{hk}-h{h}", f"hk{hk}_h{h}", {**PEER, "n_experts": 4096, "n_heads": h, "top_k": hk // h},
                  perplexity, 2.2e5 + 800 * h)
    runs = collect_sweep(tmp_path / "sweep").runs
    (ablation,) = detect_ablations(runs, n_bootstrap=0, seed=0, robust=False)
    assert (ablation.name, ablation.fixed_backbone) == ("active_experts", True)
    figure = heads_figure(ablation, "Perplexity")
    (axes,) = figure.axes
    curves = [line.get_data() for line in axes.get_lines()]
    assert [list(x) for x, _ in curves] == [[1, 2, 4], [1, 2, 4, 8], [1, 2, 4, 8]]  # hk = 8, 16, 32 over h
    rings = [collection.get_offsets()[0][0] for collection in axes.collections]
    assert rings == [1, 2, 4]  # the best h of each hk curve
    assert axes.get_xscale() == "log" and [tick.get_text() for tick in axes.get_xticklabels()] == ["1", "2", "4", "8"]
    assert [text.get_text() for text in figure.legends[0].get_texts()][:3] == ["hk = 8", "hk = 16", "hk = 32"]


def test_figure_4_puts_the_query_norms_of_a_ladder_in_one_panel(tmp_path: Path) -> None:
    runs_dir = tmp_path / "sweep" / "runs"
    for budget in (1e11, 3e11):
        optimum = 2e4 * (budget / 1e11) ** 0.5
        for shift, (norm, setting) in enumerate(NORMS.items()):
            for size in np.geomspace(optimum / 3, optimum * 3, 5):
                perplexity = 7.0 - math.log10(budget / 1e11) + 0.4 * math.log10(size / optimum) ** 2 + 0.1 * shift
                write_run(runs_dir, f"{norm}-{budget:.0e}-{size:.0f}", f"peer_{norm}", {**PEER, "n_experts": 4096, **setting},
                          perplexity, 50 * size, params_active=size, budget=budget)
    runs = collect_sweep(tmp_path / "sweep").runs
    (ablation,) = detect_ablations(runs, n_bootstrap=20, seed=0, robust=False)
    assert (ablation.name, ablation.fixed_backbone) == ("query_norm", False)
    assert sorted((o.group, o.budget, o.status) for o in ablation.optima)[0] == ("causal query norm", 1e11, "ok")
    assert len(ablation.optima) == 6
    figure = comparison_figure(ablation.runs, ablation.optima, "perplexity", "Perplexity", "Parameters", "setting",
                               "Figure 4")
    assert len(figure.axes) == 1
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend[:3] == ["no query norm", "causal query norm", "query BatchNorm (non-causal)"]
    assert sum("FLOPs" in text for text in legend) == 2
    assert len(figure.axes[0].get_lines()) == 6  # a parabola per (norm, budget)
    grid, tidy = expert_usage_grid(runs.assign(expert_usage=1.0, routing_unevenness=0.5))["peer"]
    assert list(grid["budget"].unique()) == [1e11, 3e11] and len(grid.columns) == 2 + 3 * 3
    assert tidy["selection"].str.startswith("lowest perplexity of 5").all()


def matched_sweep(root: Path) -> Path:
    """dense, a parameter-matched MoE and a top-K activation on the same three backbones at one budget."""
    runs_dir = root / "runs"
    methods = {"dense": ({"family": "dense"}, 1.0, 0.0),
               "sigma_moe": ({"family": "token_choice_moe"}, 1.003, -0.2),
               "topk_activation": ({"family": "topk_activation", "k": 12}, 1.0, 0.3)}
    for size_index, params_total in enumerate((2e4, 4e4, 8e4)):
        for method, (ffw, params_ratio, shift) in methods.items():
            perplexity = 8.0 + 0.5 * (size_index - 1) ** 2 + shift
            routed = method == "sigma_moe"  # an MoE records its expert usage, as a real run does
            if routed:  # and its expert count grows with the backbone (Csordás et al. keep the expert size)
                ffw = {**ffw, "n_experts": 4 * 2 ** size_index}
            write_run(runs_dir, f"{method}-{size_index}", method, ffw, perplexity, params_total * params_ratio,
                      params_active=params_total * (0.7 if routed else 1.0),
                      usage=0.9 if routed else None, unevenness=0.1 if routed else None,
                      backbone={**BACKBONE, "d_model": 16 * 2 ** size_index})
    return root


def test_matched_parameter_table_has_a_row_per_backbone_and_a_column_per_method(tmp_path: Path) -> None:
    runs = collect_sweep(matched_sweep(tmp_path / "sweep")).runs
    table = matched_parameter_table(runs)
    assert list(table.columns) == ["budget", "params_total", "dense", "sigma_moe", "topk_activation", "best"]
    assert len(table) == 3 and list(table["best"]) == ["sigma_moe"] * 3
    assert table.loc[1, "dense"] == pytest.approx(8.0) and table.loc[1, "topk_activation"] == pytest.approx(8.3)
    assert matched_parameter_table(runs[runs["method"] != "dense"].assign(ffw_family="token_choice_moe")) is None

    assert analyze(str(tmp_path / "sweep"), "--bootstrap", "0") == 0
    report = tmp_path / "sweep" / "report"
    assert pd.read_csv(report / "table_matched_params.csv").shape == (3, 6)
    assert not list(report.glob("table2_*")), "Table 2 is of product-key layers with a query norm setting"
    assert (report / "isoflop_methods.png").stat().st_size > 1000
    assert "| budget | params_total | dense | sigma_moe | topk_activation | best |" in (
        report / "table_matched_params.md").read_text()


def fixed_backbone_sweep(root: Path, study_model: dict | None) -> Path:
    """Dense and PEER with N = 1k and 256 on one backbone at two budgets; a study.yaml with ``study_model`` as its
    ``model`` settings and the methods in the study's order (none when ``study_model`` is None)."""
    methods = {"dense": ({"family": "dense"}, 9.0, 2.6e4), "peer_1k": ({**PEER, "n_experts": 1024}, 8.0, 7.5e4),
               "peer_256": ({**PEER, "n_experts": 256}, 8.5, 3.7e4)}
    for budget, gain in ((1e11, 0.0), (3e11, 0.5)):
        for method, (ffw, perplexity, params_total) in methods.items():
            routed = method != "dense"
            write_run(root / "runs", f"{method}-{budget:.0e}", method, ffw, perplexity - gain, params_total, budget=budget,
                      usage=0.9 if routed else None, unevenness=0.5 if routed else None)
    if study_model is not None:
        (root / "study.yaml").write_text(yaml.safe_dump({"name": "fig3a", "methods": {m: {} for m in methods},
                                                         "model": study_model}, sort_keys=False))
    return root


def report_text(sweep: Path) -> str:
    assert analyze(str(sweep), "--bootstrap", "0") == 0
    return (sweep / "report" / "report.md").read_text()


def test_a_fixed_backbone_study_reports_its_losses_not_failed_fits(tmp_path: Path) -> None:
    sweep = fixed_backbone_sweep(tmp_path / "pinned", BACKBONE)
    report = report_text(sweep)
    assert report.count("- **Fixed backbone**: one model per method and budget (the study pins model.n_layers=2, "
                        "model.d_model=24, model.n_heads=2); the comparison is over the setting — see "
                        "[ablation_peer_experts.png](ablation_peer_experts.png), [table2_peer.md](table2_peer.md) "
                        "and the table below.") == 1
    table = report.split("## Loss on validation (nats/token) by method and budget (fixed backbone)")[1]
    rows = [line for line in table.split("\n\n")[2].splitlines()]
    assert rows[0] == "| method | total params | C = 1e11 | C = 3e11 |"
    assert rows[2:] == [f"| dense | 26000 | {math.log(9.0):.4g} | {math.log(8.5):.4g} |",  # the study's order
                        f"| peer_1k | 75000 | {math.log(8.0):.4g} | {math.log(7.5):.4g} |",
                        f"| peer_256 | 37000 | {math.log(8.5):.4g} | {math.log(8.0):.4g} |"]
    for failed_fit in ("too_few_points", "Fits that are not ok", "No power law", "Partial report", "isoflop.png"):
        assert failed_fit not in report, failed_fit
    assert not (sweep / "report" / "isoflop.png").exists()  # one dot per panel: the ablation figure replaces it
    assert (sweep / "report" / "ablation_peer_experts.png").is_file()

    unrecorded = report_text(fixed_backbone_sweep(tmp_path / "unrecorded", None))  # no study.yaml: the runs show it
    assert "(every method has a single model size, the same at every budget)" in unrecorded
    assert "too_few_points" not in unrecorded and "| peer_1k | 75000 |" in unrecorded.split("| dense |")[1]


def test_single_sizes_of_a_ladder_study_are_still_failed_fits(tmp_path: Path) -> None:
    ladder = fixed_backbone_sweep(tmp_path / "ladder", {"n_layers": None, "d_model": None, "n_heads": None})
    for method in ("dense", "peer_1k", "peer_256"):  # the ladder's other sizes never finished
        (ladder / "runs" / f"{method}-big").mkdir()
        (ladder / "runs" / f"{method}-big" / "run.json").write_text(json.dumps({"run_id": f"{method}-big"}))
    report = report_text(ladder)
    assert "Fixed backbone" not in report and "3 run(s) did not enter the fits" in report
    assert report.count("| too_few_points | 1 |") == 2 * 3 * 2  # params and tokens, 3 methods, 2 budgets
    assert (ladder / "report" / "isoflop.png").is_file()

    mixed = tmp_path / "mixed"  # no study.yaml; dense over a ladder, PEER at one size
    write_run(mixed / "runs", "peer", "peer", {**PEER, "n_experts": 1024}, 8.0, 7.5e4)
    for size in (1e4, 2e4, 4e4, 8e4, 1.6e5):
        write_run(mixed / "runs", f"dense-{size:.0f}", "dense", {"family": "dense"}, 8.0 + math.log10(size / 4e4) ** 2,
                  size, params_active=size, backbone={**BACKBONE, "d_model": int(size / 1000)})
    report = report_text(mixed)
    assert "Fixed backbone" not in report
    assert "| peer | 3e11 | loss vs log10(params) | too_few_points | 1 |" in report
    assert "| dense | 3e11 | ok |" in report
