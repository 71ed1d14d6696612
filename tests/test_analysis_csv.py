"""``isoflop analyze --csv``: the published Llama-3 isoFLOP points, column handling and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.csv_input import load_csv
from conftest import analyze
from isoflop.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LLAMA3_CSV = SHARED_DATA / "llama3_isoflops.csv"
needs_llama3 = pytest.mark.skipif(not LLAMA3_CSV.is_file(), reason=f"{LLAMA3_CSV} absent (shared/ must sit beside the repository)")


def tokens_law(out_dir: Path) -> pd.Series:
    table = pd.read_csv(out_dir / "powerlaws.csv")
    return table[(table["row"] == "fit") & (table["quantity"] == "tokens")].iloc[0]


@needs_llama3
def test_llama3_tokens_exponent_matches_the_paper(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Llama 3 (arXiv 2407.21783) publishes D*(C) = 0.29 C^0.53; plain least squares gives 0.299 C^0.537."""
    assert analyze("--csv", str(LLAMA3_CSV), "--out", str(tmp_path), "--bootstrap", "400", "--predict", "1e24") == 0
    printed = capsys.readouterr().out
    assert printed.count("predicted at C=1e24: ") == 2  # what --predict asked for is on stdout, N* and D*
    law = tokens_law(tmp_path)
    assert law["exponent"] == pytest.approx(0.53, abs=0.02)
    assert law["exponent"] == pytest.approx(0.5368, abs=5e-4)
    assert law["coefficient"] == pytest.approx(0.2994, abs=5e-4)
    assert law["exponent_lo"] < 0.53 < law["exponent_hi"]
    assert law["n_budgets"] == 10
    optima = pd.read_csv(tmp_path / "optima.csv")
    assert (optima["status"] == "ok").all() and len(optima) == 10
    report = (tmp_path / "report.md").read_text()
    assert "params derived as budget / (6 * tokens)" in report
    predictions = pd.read_csv(tmp_path / "powerlaws.csv").query("row == 'prediction'")
    assert set(predictions["quantity"]) == {"params", "tokens"}


@needs_llama3
def test_llama3_every_interval_is_finite_and_inside_the_data(tmp_path: Path) -> None:
    """Per budget, N* and D* intervals lie within the sampled sizes; the exponents' within the slopes those allow."""
    assert analyze("--csv", str(LLAMA3_CSV), "--out", str(tmp_path), "--bootstrap", "400", "--predict", "1e24") == 0
    runs = pd.read_csv(tmp_path / "runs.csv")
    optima = pd.read_csv(tmp_path / "optima.csv")
    laws = pd.read_csv(tmp_path / "powerlaws.csv")
    assert (optima["interval"] == "ok").all() and (laws["interval"] == "ok").all()
    interval_columns = ["n_opt_lo", "n_opt_hi", "d_opt_lo", "d_opt_hi", "loss_opt_lo", "loss_opt_hi"]
    assert np.isfinite(optima[interval_columns].to_numpy()).all()
    corners = {"params": [], "tokens": []}
    for row in optima.itertuples():
        points = runs[runs["budget"] == row.budget]
        assert points["params"].min() <= row.n_opt_lo <= row.n_opt <= row.n_opt_hi <= points["params"].max()
        assert points["tokens"].min() <= row.d_opt_lo <= row.d_opt <= row.d_opt_hi <= points["tokens"].max()
        assert points["loss"].min() - 0.05 <= row.loss_opt_lo <= row.loss_opt_hi <= points["loss"].max()
        corners["params"].append(np.log10(points["params"].agg(["min", "max"]).to_numpy()))
        corners["tokens"].append(np.log10(points["tokens"].agg(["min", "max"]).to_numpy()))
    x = np.log10(optima["budget"].to_numpy())
    weights = (x - x.mean()) / np.sum((x - x.mean()) ** 2)
    for fit in laws[laws["row"] == "fit"].itertuples():
        ranges = np.array(corners[fit.quantity])  # (budgets, [min, max]); the slope is linear in the optima
        steepest = np.sum(np.where(weights > 0, weights * ranges[:, 1], weights * ranges[:, 0]))
        flattest = np.sum(np.where(weights > 0, weights * ranges[:, 0], weights * ranges[:, 1]))
        assert flattest <= fit.exponent_lo <= fit.exponent <= fit.exponent_hi <= steepest
        assert fit.replicates_usable >= 0.95 * fit.replicates
        assert np.isfinite([fit.coefficient_lo, fit.coefficient_hi]).all()
    predictions = laws[laws["row"] == "prediction"]
    assert np.isfinite(predictions[["predicted_lo", "predicted_hi"]].to_numpy()).all()
    report = (tmp_path / "report.md").read_text()
    assert "run director" not in report and "Excluded runs" not in report and "Rows analysed: 133" in report
    assert "unreliable" not in report.split("### Intervals")[1].split("## Power laws")[0].replace("marked unreliable", "")


@needs_llama3
def test_llama3_with_explicit_column_map(tmp_path: Path) -> None:
    assert analyze("--csv", str(LLAMA3_CSV), "--out", str(tmp_path), "--bootstrap", "0",
                   "--columns", "budget=compute_budget,tokens=training_tokens,loss=validation_loss") == 0
    assert tokens_law(tmp_path)["exponent"] == pytest.approx(0.537, abs=0.002)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_tokens_derived_and_method_defaults(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "runs.csv", "budget,params,loss,extra\n1e19,1e8,3.0,1\n1e19,2e8,2.9,2\n1e19,4e8,3.0,3\n")
    collection = load_csv(csv)
    assert list(collection.runs["method"].unique()) == ["all"]
    assert collection.runs["tokens"].iloc[0] == pytest.approx(1e19 / 6e8)
    assert "extra" in collection.runs.columns
    assert any("tokens derived" in note for note in collection.notes)


@pytest.mark.parametrize("text, message", [
    ("method,budget,params\ndense,1e19,1e8\n", "missing column"),
    ("method,budget,tokens,loss\ndense,1e19,1e9,3.0\ndense,abc,1e9,3.0\n", "line 3"),
    ("method,budget,params,loss\ndense,1e19,-5,3.0\n", "positive"),
    ("method,budget,params,loss\ndense,1e19,1e8,\n", "loss"),
    ("", "cannot be parsed"),
])
def test_bad_csv_is_one_line_user_error(tmp_path: Path, text: str, message: str) -> None:
    csv = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(UserError, match=message) as caught:
        analyze("--csv", str(csv), "--out", str(tmp_path / "out"))
    assert "\n" not in caught.value.message


def test_bad_arguments(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "ok.csv", "budget,params,loss\n1e19,1e8,3.0\n1e19,2e8,2.9\n1e19,4e8,3.0\n")
    with pytest.raises(UserError, match="exactly one"):
        analyze()
    with pytest.raises(UserError, match="no such file"):
        analyze("--csv", str(tmp_path / "absent.csv"))
    with pytest.raises(UserError, match="not a number"):
        analyze("--csv", str(csv), "--predict", "lots")
    with pytest.raises(UserError, match="CANONICAL=SOURCE"):
        analyze("--csv", str(csv), "--columns", "budget")
    with pytest.raises(UserError, match="no column"):
        analyze("--csv", str(csv), "--eval-dataset", "lambada")


def test_report_names_the_eval_dataset_column(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "runs.csv", "budget,params,loss,heldout_loss\n"
                    "1e19,1e8,3.0,3.2\n1e19,2e8,2.9,3.1\n1e19,4e8,3.0,3.2\n")
    assert analyze("--csv", str(csv), "--out", str(tmp_path / "named"), "--bootstrap", "0", "--eval-dataset", "heldout") == 0
    assert "- **Metric**: loss (heldout)" in (tmp_path / "named" / "report.md").read_text()
    assert analyze("--csv", str(csv), "--out", str(tmp_path / "default"), "--bootstrap", "0") == 0
    assert "- **Metric**: loss (CSV loss column)" in (tmp_path / "default" / "report.md").read_text()


def test_single_budget_gives_a_partial_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = write_csv(tmp_path / "one.csv", "method,budget,params,tokens,loss\n"
                    + "".join(f"dense,1e19,{n:g},{1e19 / (6 * n):g},{3.0 + 0.3 * (n / 2e8 - 1) ** 2}\n" for n in (5e7, 1e8, 2e8, 4e8, 8e8)))
    assert analyze("--csv", str(csv), "--out", str(tmp_path / "out"), "--bootstrap", "50") == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Partial report" in report and "No power law for **dense**" in report
    assert (tmp_path / "out" / "optima.csv").is_file()
    assert "partial report" in capsys.readouterr().out
    with pytest.raises(UserError, match="--predict needs a power law"):
        analyze("--csv", str(csv), "--out", str(tmp_path / "out2"), "--predict", "1e21")


def test_non_ok_fits_are_listed_without_optimum(tmp_path: Path) -> None:
    rows = ["method,budget,params,loss"]
    for budget, center in ((1e19, 8.0), (1e20, 8.5)):
        for log_params in (7.5, 7.75, 8.0, 8.25, 8.5, 8.75, 9.0):
            rows.append(f"dense,{budget:g},{10 ** log_params:g},{3.0 + 0.3 * (log_params - center) ** 2}")
            rows.append(f"broken,{budget:g},{10 ** log_params:g},{3.0 - 0.3 * (log_params - center) ** 2}")  # concave
    rows += [f"edge,1e19,{10 ** x:g},{3.0 + 0.3 * (x - 10.0) ** 2}" for x in (7.5, 8.0, 8.5)]  # vertex far right
    csv = write_csv(tmp_path / "mixed.csv", "\n".join(rows) + "\n")
    assert analyze("--csv", str(csv), "--out", str(tmp_path / "out"), "--bootstrap", "50") == 0
    optima = pd.read_csv(tmp_path / "out" / "optima.csv").set_index(["method", "budget"])
    assert (optima.loc["broken", "status"] == "concave").all()
    assert optima.loc["broken", "n_opt"].isna().all() and optima.loc["broken", "loss_opt"].isna().all()
    assert optima.loc[("edge", 1e19), "status"] == "vertex_outside_range"
    assert optima.loc[("edge", 1e19), "n_opt"] == pytest.approx(1e10, rel=1e-3)  # CSV keeps 6 digits
    assert (optima.loc["dense", "status"] == "ok").all()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "concave" in report and "vertex_outside_range" in report and "No power law for **broken**" in report
    assert "| loss vs log10(params) |" in report
    assert analyze("--csv", str(csv), "--out", str(tmp_path / "perplexity"), "--bootstrap", "0", "--metric", "perplexity",
                   "--loss-unit", "nats") == 0
    report = (tmp_path / "perplexity" / "report.md").read_text()
    assert "| perplexity vs log10(params) |" in report and "loss vs log10" not in report


def two_dataset_csv(path: Path, with_run_names: bool = True) -> Path:
    """Two datasets (c4, code) of one model in one file: their losses differ by a factor at every (budget, size)."""
    rows = []
    for dataset, scale, shift in (("c4", 1.0, 0.0), ("code", 0.5, -0.5)):
        for budget in (1e18, 1e19, 1e20, 1e21):
            center = np.log10(0.1 * (budget / 6.0) ** 0.5) + (0.2 if dataset == "code" else 0.0)
            for index, log_params in enumerate(np.linspace(center - 0.6, center + 0.6, 7)):
                params = 10.0 ** round(log_params - (0.2 if dataset == "code" else 0.0), 6)
                loss = scale * (3.0 - 0.1 * np.log10(budget / 1e18) + 0.3 * (np.log10(params) - center) ** 2) + shift
                rows.append({"dataset": dataset, "model": "llama", "run_name": f"{dataset}-{budget:.0e}-{index}",
                             "budget": budget, "params": params, "loss": loss})
    frame = pd.DataFrame(rows)
    if not with_run_names:
        frame = frame.drop(columns="run_name")
    frame.to_csv(path, index=False)
    return path


def test_two_datasets_in_one_file_are_two_groups(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = two_dataset_csv(tmp_path / "two.csv")
    assert analyze("--csv", str(csv), "--out", str(tmp_path / "out"), "--bootstrap", "200") == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    optima = pd.read_csv(tmp_path / "out" / "optima.csv")
    assert set(optima["method"]) == {"c4", "code"} and (optima.groupby("method").size() == 4).all()
    assert (optima["status"] == "ok").all()
    by_group = optima.set_index(["method", "budget"])["n_opt"]
    # code's optimum sits 0.2 decades higher in its curve (shifted sizes): the groups were fitted apart
    assert np.log10(by_group[("code", 1e20)]) - np.log10(by_group[("c4", 1e20)]) == pytest.approx(0.2, abs=0.01)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "groups by 'dataset'" in report and "Rows analysed: 56 (2 group(s), 4 budget(s))" in report
    laws = pd.read_csv(tmp_path / "out" / "powerlaws.csv").query("row == 'fit'")
    assert set(laws["method"]) == {"c4", "code"}


def test_pooled_experiments_are_a_warning_naming_the_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = two_dataset_csv(tmp_path / "two.csv")
    assert analyze("--csv", str(csv), "--out", str(tmp_path / "pooled"), "--bootstrap", "0", "--group-by", "model") == 0
    err = capsys.readouterr().err
    assert "hold several different losses" in err and "columns that tell them apart: dataset" in err
    assert "--group-by model,dataset" in err
    assert "**Warning**" in (tmp_path / "pooled" / "report.md").read_text()
    assert analyze("--csv", str(csv), "--out", str(tmp_path / "named"), "--bootstrap", "0",
                   "--group-by", "DATASET,model") == 0
    assert set(pd.read_csv(tmp_path / "named" / "optima.csv")["method"]) == {"dataset=c4, model=llama",
                                                                             "dataset=code, model=llama"}
    with pytest.raises(UserError, match="no such column"):
        analyze("--csv", str(csv), "--out", str(tmp_path / "bad"), "--group-by", "condition")


def test_unknown_loss_unit_is_never_exponentiated(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "runs.csv", "budget,params,loss\n" + "".join(
        f"{budget:g},{n:g},{3.0 + 0.3 * (np.log10(n) - center) ** 2}\n"
        for budget, center in ((1e19, 8.0), (1e20, 8.5)) for n in np.logspace(center - 0.6, center + 0.6, 6)))
    assert analyze("--csv", str(csv), "--out", str(tmp_path / "plain"), "--bootstrap", "0") == 0
    report = (tmp_path / "plain" / "report.md").read_text()
    assert not (tmp_path / "plain" / "table_perplexity.md").exists()
    table = (tmp_path / "plain" / "table_loss.md").read_text()
    assert table.startswith("| budget | group | run_id | params | loss | selection |") and "| 1e19 |" in table
    assert "Loss unit**: unknown" in report and "nats" not in report
    with pytest.raises(UserError, match="--loss-unit nats"):
        analyze("--csv", str(csv), "--out", str(tmp_path / "perplexity"), "--metric", "perplexity")
    assert analyze("--csv", str(csv), "--out", str(tmp_path / "nats"), "--bootstrap", "0", "--loss-unit", "nats/token") == 0
    perplexity = pd.read_csv(tmp_path / "nats" / "table_perplexity.csv")
    assert perplexity["perplexity"].iloc[0] == pytest.approx(np.exp(3.0), rel=0.01)
    assert "Loss unit**: nats/token" in (tmp_path / "nats" / "report.md").read_text()


def test_extrapolated_optimum_is_said_in_the_table(tmp_path: Path) -> None:
    rows = [f"edge,1e19,{10 ** x:g},{3.0 + 0.3 * (x - 10.0) ** 2}" for x in (7.5, 8.0, 8.5, 9.0)]
    csv = write_csv(tmp_path / "edge.csv", "method,budget,params,loss\n" + "\n".join(rows) + "\n")
    assert analyze("--csv", str(csv), "--out", str(tmp_path / "out"), "--bootstrap", "0") == 0
    table = pd.read_csv(tmp_path / "out" / "table_loss.csv")
    assert table["selection"].iloc[0].startswith("N* extrapolated past the sampled sizes")
    assert table["params"].iloc[0] == pytest.approx(10**9.0, rel=1e-3) and table["budget"].iloc[0] == 1e19
    assert "| 1e19 | edge |" in (tmp_path / "out" / "table_loss.md").read_text()
