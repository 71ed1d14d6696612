"""Assemble ``report.md``: settings, exclusions, non-ok fits, optima, intervals, power laws, approach 3, figures, tables.

Every excluded run, every fit whose status is not ``ok`` and every interval
that is not reliable is listed with its reason, so nothing is dropped
silently. For CSV input the report speaks of rows and groups, not of run
directories. A study on one fixed backbone (:mod:`analysis.fixed_backbone`)
has no parabolas to fit: the report says so once, in the header, and shows
each run's metric by method and budget in place of the fits, optima and
power laws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.collect import Collection
from analysis.fixed_backbone import FixedBackbone, value_table
from analysis.formatting import budget_text, interval_text
from analysis.holdout_output import holdout_section
from analysis.intervals import MIN_SIZES_FOR_INTERVAL, MIN_SIZES_FOR_RELIABLE_INTERVAL, MIN_TAIL_REPLICATES
from analysis.records import Approach3Fit, Interval, Optimum, PowerLawFit, PowerLawSkipped
from analysis.tables import to_markdown

STATUS_MEANING = {
    "too_few_points": "fewer than 3 distinct sizes: no parabola, no optimum",
    "concave": "the parabola opens downwards (no minimum): no optimum reported",
    "vertex_outside_range": "the minimum lies outside the sampled sizes: optimum is an extrapolation, left out of power laws",
}
INTERVAL_RULE = (
    "Intervals are percentile bootstrap intervals with one rule for estimates and intervals: an optimum counts only "
    "when its parabola has a minimum inside the sampled sizes, and so does a bootstrap replicate. A replicate that "
    "finds no interior minimum is kept as censored (beyond the edge it points to, or unknown); an interval end that "
    "falls on such a replicate is printed at the edge of what the data allow and marked unreliable (†). Also marked: "
    f"fewer than {MIN_SIZES_FOR_RELIABLE_INTERVAL} distinct sizes, or fewer than {MIN_TAIL_REPLICATES} usable "
    f"replicates beyond each end; no interval below {MIN_SIZES_FOR_INTERVAL} sizes or through two budgets. "
    "`usable` counts the replicates that located the optimum (at every budget, for a power law).")


@dataclass
class AnalysisResult:
    """Everything the report shows, as produced by :func:`analysis.command.run`."""

    collection: Collection
    settings: dict[str, str]
    optima: list[Optimum]
    optima_table: pd.DataFrame
    power_laws: list[PowerLawFit | PowerLawSkipped]
    approach3: list[Approach3Fit | str] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)  # PNG file name → caption
    tables: dict[str, tuple[str, pd.DataFrame]] = field(default_factory=dict)  # stem → (caption, table)
    partial_notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    holdout: list = field(default_factory=list)  # analysis.holdout.HoldoutVerdict per group, with --holdout-budget
    fixed_backbone: FixedBackbone | None = None
    value_label: str = "Metric"  # what the ``metric`` column holds, with its unit when known


def _interval_cell(interval: Interval) -> str:
    return interval_text(interval.low, interval.high, marked=interval.status == "unreliable")


def _header(result: AnalysisResult) -> list[str]:
    runs, collection = result.collection.runs, result.collection
    lines = ["# IsoFLOP analysis", ""]
    lines += [f"- **{key}**: {value}" for key, value in result.settings.items()]
    if collection.kind == "csv":
        groups = f"{runs['method'].nunique()} group(s)"
        lines.append(f"- Rows analysed: {len(runs)} ({groups}, {runs['budget'].nunique()} budget(s))")
    else:
        lines.append(f"- Runs analysed: {len(runs)} ({runs['method'].nunique()} method(s), {runs['budget'].nunique()} budget(s))")
    lines += [f"- Note: {note}" for note in collection.notes]
    if result.fixed_backbone is not None:
        lines.append(f"- **Fixed backbone**: {result.fixed_backbone.sentence(_group_word(result))}.")
    lines += [f"- **Warning**: {warning}" for warning in result.warnings]
    lines += [f"- **Partial report**: {note}" for note in result.partial_notes]
    return lines + [""]


def _excluded_section(result: AnalysisResult) -> list[str]:
    excluded = result.collection.excluded
    if result.collection.kind == "csv":
        return []
    lines = ["## Excluded runs", ""]
    if not excluded:
        return lines + ["None: every run directory held a completed result.", ""]
    left_out = [f"**{method}** ({count} run(s), every one excluded)"
                for method, count in result.collection.methods_left_out().items()]
    if left_out:  # a method that always diverges must not vanish from the comparison unsaid
        lines += [f"No run of {', '.join(left_out)} entered the fits: it is absent from every table and "
                  "figure of this report.", ""]
    table = pd.DataFrame([{"run_id": run.run_id, "method": run.method or "?", "reason": run.reason}
                          for run in excluded])
    return lines + [f"{len(excluded)} run(s) did not enter the fits:", "", to_markdown(table)]


def _group_word(result: AnalysisResult) -> str:
    return "group" if result.collection.kind == "csv" else "method"


def _fixed_backbone_section(result: AnalysisResult) -> list[str]:
    """Each run's fitted metric by method and budget: the numbers a fixed-backbone study is read for."""
    word = _group_word(result)
    table = value_table(result.collection.runs, result.fixed_backbone, "metric", word)
    order = "in the study's order" if result.fixed_backbone.pinned else "sorted by name"
    return [f"## {result.value_label} by {word} and budget (fixed backbone)", "",
            f"One model per {word} ({order}): each cell is its run at that budget (the mean of repeated runs).", "",
            to_markdown(table)]


def _non_ok_section(result: AnalysisResult) -> list[str]:
    rows = []
    for optimum, metric in zip(result.optima, result.optima_table["metric"]):
        for fit in (optimum.params_fit, optimum.tokens_fit):
            if fit.status != "ok":
                rows.append({"group": fit.group, "budget": fit.budget, "fit": f"{metric} vs log10({fit.axis})",
                             "status": fit.status, "n_points": fit.n_points, "meaning": STATUS_MEANING[fit.status]})
    lines = ["## Fits that are not ok", ""]
    if not rows:
        return lines + ["None: every parabola has its minimum inside the sampled sizes.", ""]
    return lines + [to_markdown(pd.DataFrame(rows))]


def _optima_section(result: AnalysisResult) -> list[str]:
    level = result.optima[0].n_interval.confidence if result.optima else 0.95
    rows = [{"group": o.group, "budget": o.budget, "status": o.status, "N*": o.n_opt,
             f"N* {level:.0%} CI": _interval_cell(o.n_interval), "D*": o.d_opt,
             f"D* {level:.0%} CI": _interval_cell(o.d_interval), "metric*": o.loss_opt,
             "points": o.n_points, "sizes": o.n_sizes,
             "usable": f"{o.n_interval.usable}/{o.n_interval.replicates}" if o.n_interval.printable else "–",
             "N* position": o.params_fit.vertex_position} for o in result.optima]
    lines = ["## Compute-optimal allocation per budget (optima.csv)", "",
             "Vertices of the parabola of the metric in log10(params) (N\\*, metric\\*) and in log10(tokens) (D\\*), "
             "Hoffmann et al. 2022 approach 2. `N* position`: where N\\* sits in the sampled log-size range "
             "(0 smallest size, 1 largest; 0.5 is a centred grid).", "", to_markdown(pd.DataFrame(rows)),
             "### Intervals", "", INTERVAL_RULE, ""]
    marked = [(o, quantity, interval) for o in result.optima
              for quantity, interval in (("N*", o.n_interval), ("D*", o.d_interval)) if interval.status == "unreliable"]
    lines += [f"- † {o.group} at C={budget_text(o.budget)}, {quantity}: {interval.note}." for o, quantity, interval in marked]
    missing = [o for o in result.optima if o.params_fit.status == "ok" and not o.n_interval.printable]
    lines += [f"- No interval for {o.group} at C={budget_text(o.budget)}: {o.n_interval.note}." for o in missing]
    return lines + ([""] if marked or missing else [])


def _law_row(law: PowerLawFit) -> dict[str, object]:
    interval = law.exponent_interval
    return {"group": law.group, "quantity": law.quantity, "law": f"{law.coefficient:.3g}·C^{law.exponent:.4f}",
            f"exponent {interval.confidence:.0%} CI": _interval_cell(interval) if interval.printable else "none",
            "n_budgets": law.n_budgets,
            "usable": f"{interval.usable}/{interval.replicates}" if interval.replicates and interval.printable else "–",
            "scatter ratio": law.scatter_ratio, "interval": interval.status}


def _power_law_section(result: AnalysisResult) -> list[str]:
    lines = ["## Power laws across budgets (powerlaws.csv)", "",
             "N\\*(C) = G·C^a and D\\*(C) = H·C^b, least squares in log-log through the `ok` optima; intervals "
             "bootstrap the whole two-stage pipeline (same replicates as the optima). `scatter ratio`: how much more "
             "the optima scatter around the line than their own bootstrap variance explains; above 1 the replicate "
             "lines are widened by its square root (Birge ratio).", ""]
    fits = [p for p in result.power_laws if isinstance(p, PowerLawFit)]
    if fits:
        lines += [to_markdown(pd.DataFrame([_law_row(law) for law in fits]))]
        for law in fits:
            if law.through_two_points:
                lines.append(f"- **{law.group}** ({law.quantity}): a line through two points (budgets "
                             f"{', '.join(budget_text(b) for b in law.budgets)}); its exponent has no interval. Add a "
                             "budget for an exponent with an uncertainty.")
            elif law.exponent_interval.status == "unreliable":
                lines.append(f"- † **{law.group}** ({law.quantity}): {law.exponent_interval.note}.")
            if law.left_out:
                lines.append(f"- **{law.group}** ({law.quantity}) leaves out: {', '.join(law.left_out)}.")
        predictions = [{"group": p.group, "quantity": p.quantity, "budget": q.budget, "predicted": q.value,
                        "interval": _interval_cell(q.interval) if q.interval.printable else "none"}
                       for p in fits for q in p.predictions]
        if predictions:
            lines += ["", "Predictions:", "", to_markdown(pd.DataFrame(predictions))]
    for skipped in (p for p in result.power_laws if isinstance(p, PowerLawSkipped)):
        lines.append(f"- No power law for **{skipped.group}** ({skipped.quantity}): {skipped.reason}.")
    return lines + [""]


def _approach3_section(result: AnalysisResult) -> list[str]:
    if not result.approach3:
        return []
    fits = [fit for fit in result.approach3 if isinstance(fit, Approach3Fit)]
    method = fits[0].method if fits else "vpnls"
    how = ("variable projection: exact non-negative least squares for (E, A, B) at each (α, β), grid then L-BFGS-B "
           "over (α, β); least squares on the loss" if method == "vpnls" else
           "Hoffmann et al. 2022 App. D.2: Huber loss (δ = 1e-3) on log loss, L-BFGS from the best points of a grid")
    lines = ["## Approach 3: parametric loss L(N, D) = E + A/N^α + B/D^β", "",
             f"Fitted by {how}. Implied allocation under C = 6ND: N\\* ∝ C^(β/(α+β)), D\\* ∝ C^(α/(α+β)).", ""]
    if fits:
        table = pd.DataFrame([{"group": f.group, "method": f.method, "E": f.E, "A": f"{f.A:.4g}", "B": f"{f.B:.4g}",
                               "alpha": f"{f.alpha:.4f}", "beta": f"{f.beta:.4f}", "a (N*)": f"{f.params_exponent:.4f}",
                               "b (D*)": f"{f.tokens_exponent:.4f}", "n_points": f.n_points,
                               "converged": f.converged} for f in fits])
        lines.append(to_markdown(table))
    lines += [f"- Skipped: {text}" for text in result.approach3 if isinstance(text, str)]
    return lines + [""]


def render_report(result: AnalysisResult, out_dir: Path) -> Path:
    """Write ``report.md`` into ``out_dir`` and return its path."""
    lines = _header(result) + _excluded_section(result)
    if result.fixed_backbone is not None:
        lines += _fixed_backbone_section(result)
    else:
        lines += _non_ok_section(result) + _optima_section(result) + _power_law_section(result)
    lines += holdout_section(result.holdout) + _approach3_section(result)
    if result.figures:
        lines += ["## Figures", ""]
        for name, caption in result.figures.items():
            lines += [f"![{Path(name).stem}]({name})", f"*{caption}* ([PDF]({Path(name).with_suffix('.pdf').name}))", ""]
    for name, (caption, table) in result.tables.items():
        lines += [f"## {caption} ({name})", "", to_markdown(table),
                  f"Also as [{name}.tex]({name}.tex) and [{name}.csv]({name}.csv).", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
