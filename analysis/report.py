"""Assemble ``report.md``: settings, exclusions, non-ok fits, optima, power laws, approach 3, figures, tables.

Every excluded run and every fit whose status is not ``ok`` is listed with its
reason, so nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.collect import Collection
from analysis.records import Approach3Fit, Optimum, PowerLawFit, PowerLawSkipped
from analysis.tables import to_markdown

STATUS_MEANING = {
    "too_few_points": "fewer than 3 distinct sizes: no parabola, no optimum",
    "concave": "the parabola opens downwards (no minimum): no optimum reported",
    "vertex_outside_range": "the minimum lies outside the sampled sizes: optimum is an extrapolation, left out of power laws",
}


@dataclass
class AnalysisResult:
    """Everything the report shows, as produced by :func:`analysis.command.run`."""

    collection: Collection
    settings: dict[str, str]
    optima: list[Optimum]
    optima_table: pd.DataFrame
    power_laws: list[PowerLawFit | PowerLawSkipped]
    approach3: list[Approach3Fit | str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    tables: dict[str, tuple[str, pd.DataFrame]] = field(default_factory=dict)  # stem → (caption, table)
    partial_notes: list[str] = field(default_factory=list)


def _excluded_section(result: AnalysisResult) -> list[str]:
    excluded = result.collection.excluded
    lines = ["## Excluded runs", ""]
    if not excluded:
        return lines + ["None: every run directory held a completed result.", ""]
    table = pd.DataFrame([{"run_id": run.run_id, "reason": run.reason} for run in excluded])
    return lines + [f"{len(excluded)} run(s) did not enter the fits:", "", to_markdown(table)]


def _non_ok_section(result: AnalysisResult) -> list[str]:
    rows = []
    for optimum, metric in zip(result.optima, result.optima_table["metric"]):
        for fit in (optimum.params_fit, optimum.tokens_fit):
            if fit.status != "ok":
                rows.append({"method": fit.group, "budget": f"{fit.budget:.3g}", "fit": f"{metric} vs log10({fit.axis})",
                             "status": fit.status, "n_points": fit.n_points, "meaning": STATUS_MEANING[fit.status]})
    lines = ["## Fits that are not ok", ""]
    if not rows:
        return lines + ["None: every parabola has its minimum inside the sampled sizes.", ""]
    return lines + [to_markdown(pd.DataFrame(rows))]


def _power_law_section(result: AnalysisResult) -> list[str]:
    lines = ["## Power laws across budgets (powerlaws.csv)", "",
             "N\\*(C) = G·C^a and D\\*(C) = H·C^b, least squares in log-log through the `ok` optima; "
             "intervals bootstrap the whole two-stage pipeline.", ""]
    fits = [p for p in result.power_laws if isinstance(p, PowerLawFit)]
    if fits:
        table = pd.DataFrame([{"method": p.group, "quantity": p.quantity, "coefficient": p.coefficient,
                               "exponent": p.exponent, "exponent_lo": p.exponent_lo, "exponent_hi": p.exponent_hi,
                               "n_budgets": p.n_budgets} for p in fits])
        for column in ("exponent", "exponent_lo", "exponent_hi"):
            table[column] = table[column].map(lambda value: f"{value:.4f}")
        lines += [to_markdown(table)]
        predictions = [{"method": p.group, "quantity": p.quantity, "budget": f"{q.budget:.3g}", "predicted": q.value,
                        "predicted_lo": q.value_lo, "predicted_hi": q.value_hi} for p in fits for q in p.predictions]
        if predictions:
            lines += ["Predictions:", "", to_markdown(pd.DataFrame(predictions))]
    for skipped in (p for p in result.power_laws if isinstance(p, PowerLawSkipped)):
        lines.append(f"- No power law for **{skipped.group}** ({skipped.quantity}): {skipped.reason}.")
    return lines + [""]


def _approach3_section(result: AnalysisResult) -> list[str]:
    if not result.approach3:
        return []
    lines = ["## Approach 3: parametric loss L(N, D) = E + A/N^α + B/D^β", "",
             "Hoffmann et al. 2022, App. D.2: Huber loss (δ = 1e-3) on log loss, L-BFGS from the best points of the "
             "initialisation grid. Implied allocation under C = 6ND: N\\* ∝ C^(β/(α+β)), D\\* ∝ C^(α/(α+β)).", ""]
    fits = [fit for fit in result.approach3 if isinstance(fit, Approach3Fit)]
    if fits:
        table = pd.DataFrame([{"method": f.group, "E": f.E, "A": f"{f.A:.4g}", "B": f"{f.B:.4g}", "alpha": f"{f.alpha:.4f}",
                               "beta": f"{f.beta:.4f}", "a (N*)": f"{f.params_exponent:.4f}",
                               "b (D*)": f"{f.tokens_exponent:.4f}", "n_points": f.n_points,
                               "converged": f.converged} for f in fits])
        lines.append(to_markdown(table))
    lines += [f"- Skipped: {text}" for text in result.approach3 if isinstance(text, str)]
    return lines + [""]


def render_report(result: AnalysisResult, out_dir: Path) -> Path:
    """Write ``report.md`` into ``out_dir`` and return its path."""
    runs = result.collection.runs
    lines = ["# IsoFLOP analysis", ""]
    lines += [f"- **{key}**: {value}" for key, value in result.settings.items()]
    lines += [f"- Runs analysed: {len(runs)} ({runs['method'].nunique()} method(s), {runs['budget'].nunique()} budget(s))"]
    lines += [f"- Note: {note}" for note in result.collection.notes]
    lines += [f"- **Partial report**: {note}" for note in result.partial_notes]
    lines.append("")
    lines += _excluded_section(result)
    lines += _non_ok_section(result)
    lines += ["## Compute-optimal allocation per budget (optima.csv)", "",
              "Vertices of the parabola of the metric in log10(params) (N\\*, loss\\*) and in log10(tokens) (D\\*), "
              "Hoffmann et al. 2022 approach 2; 95% percentile bootstrap intervals over runs.", ""]
    shown = result.optima_table[["method", "budget", "status", "n_opt", "n_opt_lo", "n_opt_hi", "d_opt", "d_opt_lo",
                                 "d_opt_hi", "loss_opt", "n_points"]].copy()
    shown["budget"] = shown["budget"].map(lambda value: f"{value:.3g}")
    lines.append(to_markdown(shown))
    lines += _power_law_section(result)
    lines += _approach3_section(result)
    if result.figures:
        lines += ["## Figures", ""]
        for figure in (path for path in result.figures if path.suffix == ".png"):
            lines += [f"![{figure.stem}]({figure.name})", f"*{figure.stem}* ([PDF]({figure.with_suffix('.pdf').name}))", ""]
    for name, (caption, table) in result.tables.items():
        lines += [f"## {caption} ({name})", "", to_markdown(table),
                  f"Also as [{name}.tex]({name}.tex) and [{name}.csv]({name}.csv).", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
