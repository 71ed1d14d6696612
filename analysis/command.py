"""``isoflop analyze``: isoFLOP curves, compute-optimal allocations, power laws, figures, tables, report.

    isoflop analyze (SWEEP_DIR | --csv FILE) [--out DIR] [--predict FLOPS]... [--bootstrap N] [--seed S]
                    [--metric loss|perplexity] [--eval-dataset NAME] [--params KIND] [--robust] [--approach3]

This module imports only the standard library at import time (``isoflop --help``
must stay fast); pandas, numpy, scipy and matplotlib are imported inside :func:`run`.

Defaults: ``--out`` is ``SWEEP_DIR/report`` for a sweep and ``./report`` (in the
current directory) for ``--csv``. ``--params active`` counts the parameters a
token touches, which is what the C = 6·N·D isoFLOP accounting is about: a
sparse layer's idle experts cost memory, not per-token compute.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from isoflop.errors import UserError

PARAMS_KINDS = ("total", "active", "non_embedding", "active_non_embedding")
"""Parameter counts ``--params`` may put on the x axis (keys of a run's ``params``)."""
METRICS = ("loss", "perplexity")
"""What ``--metric`` may fit: the evaluation loss or its perplexity exp(loss)."""
DEFAULT_EVAL_DATASET = "validation"
"""Evaluation set fitted without ``--eval-dataset``: the held-out split of the training corpus."""
DEFAULT_BOOTSTRAP = 1000
ABLATION_BOOTSTRAP_CAP = 300


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``isoflop analyze`` options to ``parser``."""
    parser.add_argument("sweep_dir", nargs="?", type=Path, help="sweep directory holding runs/<run_id>/run.json and result.json")
    parser.add_argument("--csv", type=Path, metavar="FILE",
                        help="external results instead of a sweep: columns method, budget (FLOPs), params, tokens, loss "
                             "(method optional; one of params/tokens may be missing and is derived from C = 6ND)")
    parser.add_argument("--columns", metavar="MAP", help="CSV column mapping CANONICAL=SOURCE,..., e.g. "
                        "budget=compute_budget,tokens=training_tokens,loss=validation_loss (common aliases are automatic)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output directory (default: SWEEP_DIR/report, or ./report with --csv)")
    parser.add_argument("--predict", action="append", default=[], metavar="FLOPS",
                        help="predict N* and D* at this budget in FLOPs (repeatable), e.g. --predict 1e21")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, metavar="N",
                        help=f"bootstrap resamples for confidence intervals (default {DEFAULT_BOOTSTRAP}; 0 disables)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed of the bootstrap (default 0)")
    parser.add_argument("--metric", choices=METRICS, default="loss",
                        help="fit and plot the evaluation loss or its perplexity exp(loss) (default loss)")
    parser.add_argument("--eval-dataset", metavar="NAME", default=None,
                        help=f"evaluation set to fit (default {DEFAULT_EVAL_DATASET!r}, the held-out split of the training corpus; "
                             "with --csv: column NAME or NAME_loss)")
    parser.add_argument("--params", choices=PARAMS_KINDS, default=None,
                        help="parameter count on the x axis (default active: the parameters a token touches, "
                             "which is what C = 6ND counts)")
    parser.add_argument("--robust", action="store_true", help="Huber fits instead of least squares for the parabolas")
    parser.add_argument("--approach3", action="store_true",
                        help="also fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, approach 3)")
    parser.add_argument("--parquet", action="store_true", help="also write the collected runs as runs.parquet (needs pyarrow)")


def parse_budgets(texts: list[str]) -> tuple[float, ...]:
    """Parse ``--predict`` values as positive FLOP counts."""
    budgets = []
    for text in texts:
        try:
            budget = float(text)
        except ValueError:
            raise UserError(f"--predict {text!r} is not a number; pass FLOPs such as 1e21") from None
        if not math.isfinite(budget) or budget <= 0:
            raise UserError(f"--predict {text!r} must be a positive number of FLOPs, such as 1e21")
        budgets.append(budget)
    return tuple(budgets)


def _collect(args: argparse.Namespace):
    """The runs to analyse, from a sweep directory or a CSV file."""
    from analysis.collect import collect_sweep
    from analysis.csv_input import load_csv, parse_column_map

    if (args.sweep_dir is None) == (args.csv is None):
        raise UserError("pass either a sweep directory or --csv FILE (exactly one)")
    if args.csv is not None:
        params_column = f"params_{args.params}" if args.params else None
        return load_csv(args.csv, parse_column_map(args.columns), args.metric, args.eval_dataset, params_column)
    if args.columns:
        raise UserError("--columns applies to --csv input only; drop it or pass --csv FILE")
    return collect_sweep(args.sweep_dir, args.params or "active", args.eval_dataset or DEFAULT_EVAL_DATASET, args.metric)


def _labels(args: argparse.Namespace, collection) -> tuple[str, str]:
    """Axis labels: (metric label, params label)."""
    dataset = args.eval_dataset or (DEFAULT_EVAL_DATASET if args.csv is None else "")
    where = f", {dataset}" if dataset else ""
    value_label = f"Perplexity{where}" if args.metric == "perplexity" else f"Loss{where} (nats/token)"
    if args.csv is not None:
        return value_label, "C/6D, derived" if collection.params_derived else (args.params or "from CSV")
    return value_label, args.params or "active"


def run(args: argparse.Namespace) -> int:
    """Run the analysis and write the report; returns the exit status (0). Raises UserError on bad input."""
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap {args.bootstrap} must be 0 or more (0 disables intervals)")
    predict_budgets = parse_budgets(args.predict)
    collection = _collect(args)

    from analysis.ablations import detect_ablations, plot_ablations
    from analysis.approach3 import fit_all_approach3
    from analysis.collect import to_parquet
    from analysis.figures import plot_isoflop, plot_scaling
    from analysis.fits import fit_all_optima, optima_table
    from analysis.powerlaw import fit_all_power_laws, power_law_table
    from analysis.records import PowerLawFit
    from analysis.report import AnalysisResult, render_report
    from analysis.tables import perplexity_table, usage_table, write_table

    for excluded in collection.excluded:
        print(f"warning: run {excluded.run_id} excluded: {excluded.reason}", file=sys.stderr)
    runs = collection.runs
    optima = fit_all_optima(runs, "metric", n_bootstrap=args.bootstrap, seed=args.seed, robust=args.robust)
    power_laws = fit_all_power_laws(optima, predict_budgets)
    fitted_laws = [law for law in power_laws if isinstance(law, PowerLawFit)]
    partial_notes = []
    if runs["budget"].nunique() < 2:
        partial_notes.append("a single budget: parabolas and optima only, no power law across budgets (add a second budget)")
    if predict_budgets and not fitted_laws:
        raise UserError("--predict needs a power law, i.e. at least 2 budgets with an ok optimum for some method; "
                        "add budgets to the sweep or drop --predict")

    out_dir = args.out or (args.sweep_dir / "report" if args.sweep_dir is not None else Path("report"))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out_dir}: cannot create the directory ({error.strerror}); pass a writable --out DIR") from None
    runs.to_csv(out_dir / "runs.csv", index=False)
    if args.parquet:
        to_parquet(runs, out_dir / "runs.parquet")
    optima_frame = optima_table(optima, args.metric)
    optima_frame.to_csv(out_dir / "optima.csv", index=False)
    power_law_table(power_laws).to_csv(out_dir / "powerlaws.csv", index=False)

    value_label, params_label = _labels(args, collection)
    figures = plot_isoflop(runs, optima, out_dir / "isoflop", "metric", value_label, params_label,
                           title="IsoFLOP curves (He 2024, Fig. 1 style)")
    if fitted_laws or any(o.n_opt is not None for o in optima):
        figures += plot_scaling(optima, fitted_laws, out_dir / "scaling", params_label, predict_budgets)
    ablations = detect_ablations(runs, min(args.bootstrap, ABLATION_BOOTSTRAP_CAP), args.seed, args.robust)
    figures += plot_ablations(ablations, out_dir, value_label, params_label)

    tables = {"table_perplexity": ("Perplexity of the compute-optimal run per method and budget (He 2024, Table 1)",
                                   perplexity_table(runs, optima))}
    usage = usage_table(runs)
    if usage is not None:
        tables["table_usage"] = ("Expert usage (%) and unevenness per configuration (He 2024, Table 2)", usage)
    for stem, (caption, table) in tables.items():
        write_table(table, out_dir / stem, caption, group_column="budget")

    approach3 = fit_all_approach3(runs, "loss") if args.approach3 else []
    if args.csv is None:
        metric_source = args.eval_dataset or DEFAULT_EVAL_DATASET
    else:
        metric_source = args.eval_dataset or "CSV loss column"
    settings = {
        "Input": collection.source,
        "Metric": f"{args.metric} ({metric_source})",
        "Parameters": f"{params_label} (active = parameters a token touches, the N of C = 6ND)" if args.csv is None else params_label,
        "Fit": "Huber (robust) parabolas" if args.robust else "least-squares parabolas",
        "Bootstrap": f"{args.bootstrap} resamples of runs, seed {args.seed}, 95% percentile intervals",
    }
    result = AnalysisResult(collection=collection, settings=settings, optima=optima, optima_table=optima_frame,
                            power_laws=power_laws, approach3=approach3, figures=figures, tables=tables,
                            partial_notes=partial_notes)
    report_path = render_report(result, out_dir)
    _print_summary(report_path, result, args.metric)
    return 0


def _print_summary(report_path: Path, result, metric: str) -> None:
    """A few lines on stdout: where the report is, the optima and the exponents of the fitted ``metric``."""
    from analysis.records import PowerLawFit

    runs = result.collection.runs
    print(f"isoflop analyze: {len(runs)} runs analysed, {len(result.collection.excluded)} excluded; report: {report_path}")
    for optimum in result.optima:
        if optimum.n_opt is None:
            print(f"  {optimum.group:<16} C={optimum.budget:.3g}  {optimum.status}: no optimum")
            continue
        flag = "" if optimum.status == "ok" else f"  [{optimum.status}]"
        tokens = f"{optimum.d_opt:.3g}" if optimum.d_opt is not None else "n/a"
        interval = f" [{optimum.n_opt_lo:.3g}, {optimum.n_opt_hi:.3g}]" if optimum.n_opt_lo == optimum.n_opt_lo else ""
        print(f"  {optimum.group:<16} C={optimum.budget:.3g}  N*={optimum.n_opt:.3g}{interval}  D*={tokens}  "
              f"{metric}*={optimum.loss_opt:.4g}{flag}")
    for law in result.power_laws:
        if isinstance(law, PowerLawFit):
            interval = f" [{law.exponent_lo:.4f}, {law.exponent_hi:.4f}]" if law.exponent_lo == law.exponent_lo else ""
            print(f"  {law.group:<16} {law.quantity}* = {law.coefficient:.3g} C^{law.exponent:.4f}{interval} "
                  f"over {law.n_budgets} budgets")
    for note in result.partial_notes:
        print(f"  partial report: {note}")


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
