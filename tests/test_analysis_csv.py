"""``isoflop analyze --csv``: the published Llama-3 isoFLOP points, column handling and bad input."""

from __future__ import annotations

from pathlib import Path

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
def test_llama3_tokens_exponent_matches_the_paper(tmp_path: Path) -> None:
    """Llama 3 (arXiv 2407.21783) publishes D*(C) = 0.29 C^0.53; plain least squares gives 0.30 C^0.537."""
    assert analyze("--csv", str(LLAMA3_CSV), "--out", str(tmp_path), "--bootstrap", "300", "--predict", "1e24") == 0
    law = tokens_law(tmp_path)
    assert law["exponent"] == pytest.approx(0.53, abs=0.02)
    assert law["exponent"] == pytest.approx(0.537, abs=0.002)
    assert law["coefficient"] == pytest.approx(0.29, rel=0.1)
    assert law["exponent_lo"] < 0.53 < law["exponent_hi"]
    assert law["n_budgets"] == 10
    optima = pd.read_csv(tmp_path / "optima.csv")
    assert (optima["status"] == "ok").all() and len(optima) == 10
    report = (tmp_path / "report.md").read_text()
    assert "params derived as budget / (6 * tokens)" in report
    predictions = pd.read_csv(tmp_path / "powerlaws.csv").query("row == 'prediction'")
    assert set(predictions["quantity"]) == {"params", "tokens"}


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
    assert analyze("--csv", str(csv), "--out", str(tmp_path / "perplexity"), "--bootstrap", "0", "--metric", "perplexity") == 0
    report = (tmp_path / "perplexity" / "report.md").read_text()
    assert "| perplexity vs log10(params) |" in report and "loss vs log10" not in report
