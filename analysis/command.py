"""``isoflop analyze``: isoFLOP curves, compute-optimal allocations, power laws, figures, tables, report.

    isoflop analyze (SWEEP_DIR | --csv FILE) [--out DIR] [--predict FLOPS]... [--holdout-budget FLOPS]
                    [--bootstrap N] [--seed S]
                    [--ci 95|80] [--resample residuals|runs] [--metric loss|perplexity] [--eval-dataset NAME]
                    [--params KIND] [--group-by COLS] [--loss-unit UNIT] [--robust]
                    [--approach3 [--approach3-method vpnls|lbfgs]]

This module imports only the standard library at import time (``isoflop --help``
must stay fast); pandas, numpy, scipy and matplotlib are imported inside :func:`run`.

Defaults: ``--out`` is ``SWEEP_DIR/report`` for a sweep and ``./report`` (in the
current directory) for ``--csv``; the report replaces a previous one as a whole
(:mod:`analysis.output`). ``--params active`` counts the parameters a token
touches, which is what the C = 6·N·D isoFLOP accounting is about.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from analysis.options import (ABLATION_BOOTSTRAP_CAP, APPROACH3_METHODS, CONFIDENCE_LEVELS, DEFAULT_BOOTSTRAP,
                              DEFAULT_CONFIDENCE, DEFAULT_EVAL_DATASET, DEFAULT_PARAMS_KIND, METRICS, PARAMS_KINDS,
                              RESAMPLING_METHODS, SWEEP_LOSS_UNIT, CheckedOptions, check_options)
from isoflop.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``isoflop analyze`` options to ``parser``."""
    parser.add_argument("sweep_dir", nargs="?", type=Path, help="sweep directory holding runs/<run_id>/run.json and result.json")
    parser.add_argument("--csv", type=Path, metavar="FILE",
                        help="external results instead of a sweep: columns method, budget (FLOPs), params, tokens, loss "
                             "(method optional; one of params/tokens may be missing and is derived from C = 6ND)")
    parser.add_argument("--columns", metavar="MAP", help="CSV column mapping CANONICAL=SOURCE,..., e.g. "
                        "budget=compute_budget,tokens=training_tokens,loss=validation_loss (common aliases are automatic)")
    parser.add_argument("--group-by", metavar="COLS", default=None,
                        help="CSV columns whose values define the groups, e.g. dataset,model (default: the non-numeric "
                             "columns that split the rows into curves)")
    parser.add_argument("--loss-unit", metavar="UNIT", default=None,
                        help="unit of the CSV loss for labels, e.g. nats/token (perplexity = exp(loss) needs nats); "
                             "default: unknown")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output directory (default: SWEEP_DIR/report, or ./report with --csv)")
    parser.add_argument("--predict", action="append", default=[], metavar="FLOPS",
                        help="predict N* and D* at this budget in FLOPs (repeatable), e.g. --predict 1e21")
    parser.add_argument("--holdout-budget", metavar="FLOPS", default=None,
                        help="predict this budget's N*, D*, L* from every other budget and compare with its own fit "
                             "(report section, holdout.json, holdout.png), e.g. --holdout-budget 1e21")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, metavar="N",
                        help=f"bootstrap replicates for the intervals (default {DEFAULT_BOOTSTRAP}; 0 disables)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed of the bootstrap (default 0)")
    parser.add_argument("--ci", choices=tuple(CONFIDENCE_LEVELS), default=DEFAULT_CONFIDENCE,
                        help="interval level: 95 (percent), or 80 for the 10th-90th percentile interval Hoffmann et al. "
                             f"(2022) report (default {DEFAULT_CONFIDENCE})")
    parser.add_argument("--resample", choices=RESAMPLING_METHODS, default=RESAMPLING_METHODS[0],
                        help="bootstrap: resample the parabola's residuals at the fixed sampled sizes (default), or "
                             "whole runs (for points that are not a designed grid)")
    parser.add_argument("--metric", choices=METRICS, default="loss",
                        help="fit and plot the evaluation loss or its perplexity exp(loss) (default loss)")
    parser.add_argument("--eval-dataset", metavar="NAME", default=None,
                        help=f"evaluation set to fit (default {DEFAULT_EVAL_DATASET!r}, the held-out split of the training corpus; "
                             "with --csv: column NAME or NAME_loss)")
    parser.add_argument("--params", choices=PARAMS_KINDS, default=None,
                        help=f"parameter count on the x axis (default {DEFAULT_PARAMS_KIND}: the parameters a token "
                             "touches, which is what C = 6ND counts)")
    parser.add_argument("--robust", action="store_true", help="Huber fits instead of least squares for the parabolas")
    parser.add_argument("--approach3", action="store_true",
                        help="also fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, approach 3)")
    parser.add_argument("--approach3-method", choices=APPROACH3_METHODS, default=APPROACH3_METHODS[0],
                        help="approach 3 by variable projection + non-negative least squares (vpnls, default) or by "
                             "Huber L-BFGS over all five parameters (lbfgs)")
    parser.add_argument("--parquet", action="store_true", help="also write the collected runs as runs.parquet (needs pyarrow)")


def validate_args(args: argparse.Namespace) -> CheckedOptions:
    """Check everything that can be checked before any data is read (``isoflop study`` calls it before submitting)."""
    if (args.sweep_dir is None) == (args.csv is None):
        raise UserError("pass either a sweep directory or --csv FILE (exactly one)")
    if args.csv is None:
        for option, value in (("--columns", args.columns), ("--group-by", args.group_by), ("--loss-unit", args.loss_unit)):
            if value is not None:
                raise UserError(f"{option} applies to --csv input only; drop it or pass --csv FILE")
    return check_options(args.bootstrap, args.seed, args.predict, args.ci, args.holdout_budget)


def _collect(args: argparse.Namespace):
    """The runs to analyse, from a sweep directory or a CSV file."""
    from analysis.collect import collect_sweep
    from analysis.csv_input import load_csv, parse_column_map

    if args.csv is not None:
        params_column = f"params_{args.params}" if args.params else None
        return load_csv(args.csv, parse_column_map(args.columns), args.metric, args.eval_dataset, params_column,
                        args.group_by, args.loss_unit)
    return collect_sweep(args.sweep_dir, args.params or DEFAULT_PARAMS_KIND, args.eval_dataset or DEFAULT_EVAL_DATASET,
                         args.metric)


@dataclass(frozen=True)
class Labels:
    """Words for what is plotted: the fitted value (with its unit when known) and the parameter count."""

    value: str
    params: str
    params_kind: str
    """Short form for the scaling figure's axis, e.g. ``active`` or ``C/(6D)``; empty when plain."""


def axis_labels(args: argparse.Namespace, collection) -> Labels:
    """Axis labels for the figures and the report's settings."""
    if collection.kind == "csv":
        unit = f" ({collection.loss_unit})" if collection.loss_unit else ""
        if args.metric == "perplexity":
            value_label = f"Perplexity on {args.eval_dataset}" if args.eval_dataset else "Perplexity"
        else:
            value_label = (f"{args.eval_dataset} loss" if args.eval_dataset else "Loss") + unit
        if collection.params_derived:
            return Labels(value_label, "Parameters N = C / (6 D), derived", "C/(6D)")
        return Labels(value_label, f"Parameters N ({args.params})" if args.params else "Parameters N", args.params or "")
    dataset = args.eval_dataset or DEFAULT_EVAL_DATASET
    value_label = f"Perplexity on {dataset}" if args.metric == "perplexity" else f"Loss on {dataset} ({SWEEP_LOSS_UNIT})"
    kind = args.params or DEFAULT_PARAMS_KIND
    return Labels(value_label, f"Parameters N ({kind})", kind)


@dataclass
class Fits:
    """What the analysis fitted, before anything is drawn or written."""

    optima: list
    power_laws: list
    approach3: list = field(default_factory=list)
    ablations: list = field(default_factory=list)
    matched_params: object = None
    """The table of :mod:`analysis.matched_params` (a DataFrame), or None."""
    fixed_backbone: object = None
    """A :class:`analysis.fixed_backbone.FixedBackbone` when the study has one model per method and budget."""
    partial_notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    holdout: list = field(default_factory=list)


def _fit(args: argparse.Namespace, collection, options: CheckedOptions) -> Fits:
    from analysis.ablations import detect_ablations
    from analysis.approach3 import fit_all_approach3
    from analysis.matched_params import matched_parameter_table
    from analysis.diagnostics import off_centre_warnings
    from analysis.fits import fit_all_optima
    from analysis.fixed_backbone import detect_fixed_backbone
    from analysis.powerlaw import fit_all_power_laws
    from analysis.records import PowerLawFit

    runs = collection.runs
    holdout_budget = None
    if options.holdout_budget is not None:
        from analysis.holdout import held_out_budget

        holdout_budget = held_out_budget(runs["budget"].tolist(), options.holdout_budget)
    optima = fit_all_optima(runs, "metric", n_bootstrap=args.bootstrap, seed=args.seed, robust=args.robust,
                            confidence=options.confidence, resampling=args.resample)
    power_laws = fit_all_power_laws(optima, options.predict_budgets, options.confidence)
    if options.predict_budgets and not any(isinstance(law, PowerLawFit) for law in power_laws):
        raise UserError("--predict needs a power law, i.e. at least 2 budgets with an ok optimum for some method; "
                        "add budgets to the sweep or drop --predict")
    fits = Fits(optima=optima, power_laws=power_laws, warnings=[*collection.warnings, *off_centre_warnings(optima)],
                fixed_backbone=detect_fixed_backbone(runs, collection.layout))
    if holdout_budget is not None:
        from analysis.holdout import holdout_verdicts

        fits.holdout = holdout_verdicts(optima, holdout_budget, options.confidence)
        if all(verdict.prediction is None for verdict in fits.holdout):
            raise UserError(f"--holdout-budget: no group has 2 other budgets with an ok optimum to predict from "
                            f"({fits.holdout[0].note}); add budgets or drop --holdout-budget")
    if runs["budget"].nunique() < 2 and fits.fixed_backbone is None:  # a fixed backbone has no power law to miss
        fix = (f"{len(collection.excluded)} runs are excluded, e.g. still training: their budgets may come with them"
               if collection.excluded else "add a second budget")
        fits.partial_notes.append(f"a single budget: parabolas and optima only, no power law across budgets ({fix})")
    if args.approach3:
        fits.approach3 = fit_all_approach3(runs, "loss", method=args.approach3_method)
    fits.ablations = detect_ablations(runs, min(args.bootstrap, ABLATION_BOOTSTRAP_CAP), args.seed, args.robust,
                                      options.confidence, args.resample)
    fits.matched_params = matched_parameter_table(runs)
    return fits


def _write_figures(args: argparse.Namespace, collection, fits: Fits, options: CheckedOptions,
                   out_dir: Path) -> dict[str, str]:
    """The isoFLOP, scaling and ablation figures; returns PNG name → caption. A fixed backbone has no isoFLOP
    curves (one size per method and budget): no isoflop.png; its ablation figures are named in ``fits``."""
    from analysis.ablation_figures import plot_ablations
    from analysis.comparison_figure import plot_methods
    from analysis.figures import plot_isoflop
    from analysis.records import PowerLawFit
    from analysis.scaling_figure import plot_scaling

    labels = axis_labels(args, collection)
    figures = {}
    if fits.fixed_backbone is None:
        plot_isoflop(collection.runs, fits.optima, out_dir / "isoflop", "metric", labels.value, labels.params,
                     confidence=options.confidence)
        figures["isoflop.png"] = "IsoFLOP curves: the fitted metric against model size, one curve per budget"
    fitted_laws = [law for law in fits.power_laws if isinstance(law, PowerLawFit)]
    if fitted_laws or any(o.n_opt is not None for o in fits.optima):
        plot_scaling(fits.optima, fitted_laws, out_dir / "scaling", labels.params_kind, options.predict_budgets,
                     options.confidence)
        figures["scaling.png"] = "Compute-optimal parameters N*(C) and tokens D*(C), with the fitted power laws"
    if fits.matched_params is not None:  # the layers compared on shared backbones: every method in one panel
        figures.update(plot_methods(collection.runs, fits.optima, out_dir, labels.value, labels.params))
    dataset = args.eval_dataset or DEFAULT_EVAL_DATASET
    ablation_figures = plot_ablations(fits.ablations, out_dir, f"Perplexity on {dataset}", labels.params)
    figures.update(ablation_figures)
    if fits.fixed_backbone is not None:
        fits.fixed_backbone = replace(fits.fixed_backbone, see=tuple(ablation_figures))
    if args.sweep_dir is not None:
        from analysis.training_curves import plot_training_curves

        figures.update(plot_training_curves(args.sweep_dir, out_dir))
    return figures


def _write_tables(collection, fits: Fits, out_dir: Path) -> dict:
    """He 2024 Tables 1 and 2 (a loss table instead of perplexities when the loss unit is unknown), Table 2 in
    the paper's layout where runs vary N or the query norm, and the matched-parameter table. On a fixed backbone,
    Table 2's files join the ones ``fits.fixed_backbone`` names."""
    from analysis.tables import expert_usage_grid, optimal_run_table, perplexity_columns, usage_table, write_table

    runs = collection.runs
    tables = {}
    value_columns = perplexity_columns(runs)
    group_header = "group" if collection.kind == "csv" else "method"
    fixed = fits.fixed_backbone is not None
    which_run = (f"each {group_header}'s one run per budget, fixed backbone" if fixed else
                 f"the compute-optimal run per {group_header} and budget")
    if value_columns:
        tables["table_perplexity"] = (f"Perplexity of {which_run} (He 2024, Table 1)",
                                      optimal_run_table(runs, fits.optima, value_columns, group_header, fixed))
    else:
        tables["table_loss"] = (f"Loss of {which_run} (loss unit unknown: no perplexity)",
                                optimal_run_table(runs, fits.optima, {"loss": "loss"}, group_header, fixed))
    usage = usage_table(runs)
    if usage is not None:
        tables["table_usage"] = ("Expert usage (percent) and unevenness per configuration and budget (He 2024, Table 2)", usage)
    tidy_tables = {}
    for family, (grid, tidy) in expert_usage_grid(runs).items():
        tables[f"table2_{family}"] = (f"{family}: perplexity, expert usage and unevenness by number of experts and "
                                      "query normalisation (He 2024, Table 2 layout)", grid)
        tidy_tables[f"table2_{family}"] = tidy
    if fits.fixed_backbone is not None:  # Table 2 is the other place a fixed-backbone comparison is made
        fits.fixed_backbone = replace(fits.fixed_backbone, see=(*fits.fixed_backbone.see,
                                                                *(f"{stem}.md" for stem in tidy_tables)))
    if fits.matched_params is not None:
        tables["table_matched_params"] = ("Perplexity at equal total parameters and equal compute, one column per "
                                          "method (Csordas et al. 2023)", fits.matched_params)
    for stem, (caption, table) in tables.items():
        write_table(table, out_dir / stem, caption, tidy_tables.get(stem))
    return tables


def _settings(args: argparse.Namespace, collection, options: CheckedOptions) -> dict[str, str]:
    """The report's first lines: what was analysed and how."""
    resampled = "residuals at the fixed sampled sizes" if args.resample == "residuals" else "whole runs"
    source = args.eval_dataset or (DEFAULT_EVAL_DATASET if collection.kind == "sweep" else "CSV loss column")
    return {
        "Input": collection.source,
        "Metric": f"{args.metric} ({source})",
        "Loss unit": collection.loss_unit or "unknown (pass --loss-unit)",
        "Parameters": axis_labels(args, collection).params,
        "Fit": "Huber (robust) parabolas" if args.robust else "least-squares parabolas",
        "Bootstrap": (f"{args.bootstrap} replicates ({resampled} resampled), seed {args.seed}, "
                      f"{options.confidence:.0%} percentile intervals" if args.bootstrap else "off (no intervals)"),
    }


def _write(args: argparse.Namespace, collection, fits: Fits, options: CheckedOptions, out_dir: Path):
    """Every file of the report into ``out_dir``; returns the :class:`~analysis.report.AnalysisResult`."""
    from analysis.collect import to_parquet
    from analysis.fits import optima_table
    from analysis.powerlaw import power_law_table
    from analysis.report import AnalysisResult, render_report

    collection.runs.to_csv(out_dir / "runs.csv", index=False)
    if args.parquet:
        to_parquet(collection.runs, out_dir / "runs.parquet")
    from analysis.holdout_output import with_law_rows, with_optima_rows, write_holdout

    optima_frame = optima_table(fits.optima, args.metric)
    with_optima_rows(optima_frame, fits.holdout, args.metric).to_csv(out_dir / "optima.csv", index=False)
    with_law_rows(power_law_table(fits.power_laws), fits.holdout).to_csv(out_dir / "powerlaws.csv", index=False)
    figures = _write_figures(args, collection, fits, options, out_dir)
    labels = axis_labels(args, collection)
    figures.update(write_holdout(fits.optima, fits.holdout, out_dir, labels.value, labels.params_kind, args.metric,
                                 options.confidence))
    tables = _write_tables(collection, fits, out_dir)  # completes fits.fixed_backbone.see
    result = AnalysisResult(collection=collection, settings=_settings(args, collection, options), optima=fits.optima,
                            optima_table=optima_frame, power_laws=fits.power_laws, approach3=fits.approach3,
                            figures=figures, tables=tables,
                            partial_notes=fits.partial_notes, warnings=fits.warnings, holdout=fits.holdout,
                            fixed_backbone=fits.fixed_backbone, value_label=labels.value)
    render_report(result, out_dir)
    return result


def run(args: argparse.Namespace) -> int:
    """Run the analysis and write the report; returns the exit status (0). Raises UserError on bad input."""
    options = validate_args(args)
    out_dir = args.out or (args.sweep_dir / "report" if args.sweep_dir is not None else Path("report"))
    inputs = [args.csv] if args.csv is not None else [args.sweep_dir, args.sweep_dir / "runs"]
    from analysis.collect import check_sweep_directory
    from analysis.output import ReportDirectory

    if args.sweep_dir is not None:
        check_sweep_directory(args.sweep_dir)  # before the report folder it would hold
    ReportDirectory.check_destination(out_dir, inputs)
    collection = _collect(args)
    fits = _fit(args, collection, options)
    with ReportDirectory(out_dir, inputs) as report:
        result = _write(args, collection, fits, options, report.path)
        report_path = report.commit() / "report.md"
    for excluded in collection.excluded:
        print(f"warning: run {excluded.run_id} excluded: {excluded.reason}", file=sys.stderr)
    for warning in fits.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    _print_summary(report_path, result, args.metric)
    return 0


def _print_summary(report_path: Path, result, metric: str) -> None:
    """A few lines on stdout: where the report is, the optima and the exponents of the fitted ``metric``."""
    from analysis.formatting import budget_text, interval_text
    from analysis.records import PowerLawFit

    unit = "rows" if result.collection.kind == "csv" else "runs"
    print(f"isoflop analyze: {len(result.collection.runs)} {unit} analysed, {len(result.collection.excluded)} excluded; "
          f"report: {report_path}")
    if result.fixed_backbone is not None:
        print(f"  fixed backbone: one model per {'group' if unit == 'rows' else 'method'} and budget, no parabolas to fit")
        values = result.collection.runs.groupby(["method", "budget"])["metric"].mean()
        for group in result.fixed_backbone.methods:
            for budget, value in values[group].items():
                print(f"  {group:<16} C={budget_text(budget)}  {metric}={value:.4g}")
    for optimum in result.optima if result.fixed_backbone is None else []:
        budget = budget_text(optimum.budget)
        if optimum.n_opt is None:
            print(f"  {optimum.group:<16} C={budget}  {optimum.status}: no optimum")
            continue
        flag = "" if optimum.status == "ok" else f"  [{optimum.status}]"
        tokens = f"{optimum.d_opt:.3g}" if optimum.d_opt is not None else "n/a"
        interval = optimum.n_interval
        shown = f" {interval_text(interval.low, interval.high, marked=interval.status == 'unreliable')}" if interval.printable else ""
        print(f"  {optimum.group:<16} C={budget}  N*={optimum.n_opt:.3g}{shown}  D*={tokens}  "
              f"{metric}*={optimum.loss_opt:.4g}{flag}")
    for law in result.power_laws:
        if isinstance(law, PowerLawFit):
            interval = law.exponent_interval
            shown = (f" {interval_text(interval.low, interval.high, 4, interval.status == 'unreliable')}"
                     if interval.printable else " (line through 2 budgets, no interval)" if law.through_two_points else "")
            print(f"  {law.group:<16} {law.quantity}* = {law.coefficient:.3g} C^{law.exponent:.4f}{shown} "
                  f"over {law.n_budgets} budgets")
            for prediction in law.predictions:  # --predict
                band = prediction.interval
                shown = (f" {interval_text(band.low, band.high, marked=band.status == 'unreliable')}"
                         if band.printable else "")
                print(f"  {'':<16}   predicted at C={budget_text(prediction.budget)}: {prediction.value:.3g}{shown}")
    from analysis.holdout_output import summary_lines

    for line in summary_lines(result.holdout):
        print(line)
    for note in result.partial_notes:
        print(f"  partial report: {note}")
    for method, count in result.collection.methods_left_out().items():
        print(f"  {method:<16} no run entered the fits ({count} excluded; report.md says why)")
    if any(o.n_interval.status == "unreliable" for o in result.optima) or any(
            isinstance(law, PowerLawFit) and law.exponent_interval.status == "unreliable" for law in result.power_laws):
        print("  † interval marked unreliable; report.md says why")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``isoflop analyze`` arguments (``sys.argv[1:]`` when ``argv`` is None); argparse exits on bad usage."""
    parser = argparse.ArgumentParser(prog="isoflop analyze", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m analysis.command``) with the CLI's error convention."""
    try:
        return run(parse_args(argv))
    except UserError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return error.exit_status


if __name__ == "__main__":
    sys.exit(main())
