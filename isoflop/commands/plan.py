"""``isoflop plan``: print the runs of a study with their exact accounting.

Pure and fast (no torch) unless ``--verify-flops`` is given, which builds each
planned model on the meta device and measures its forward FLOPs with
``torch.utils.flop_counter.FlopCounterMode``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from isoflop.commands.common import add_study_arguments, human_count, write_output_file
from isoflop.errors import UserError
from isoflop.atomic_files import csv_text
from isoflop.run_records import PlanRow

FORMATS = ("table", "csv", "json")
VERIFY_TOLERANCE = 0.01


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_arguments(parser)
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.add_argument("--out", type=Path, default=None, metavar="PATH", help="write to PATH instead of stdout")
    parser.add_argument("--verify-flops", action="store_true",
                        help="measure every model's FLOPs with FlopCounterMode (imports torch); exit 1 "
                             f"if any differs from the accounting by more than {VERIFY_TOLERANCE:.0%}%")


def plan_rows(runs: Any) -> list[PlanRow]:
    """One row per planned run: the JSON/CSV schema of ``isoflop plan`` (and of plan.csv)."""
    return [PlanRow.from_run_spec(run) for run in runs]


RUN_HEADER = (f"{'run_id':<40} {'L':>3} {'d':>5} {'h':>3} {'params':>7} {'active':>7} {'F/tok':>7} "
              f"{'tokens':>7} {'steps':>7}")


def _run_columns(row: PlanRow) -> str:
    """The columns a run and a trunk share: id, shape, parameters, FLOPs per token, tokens, steps."""
    return (f"{row.run_id:<40} {row.n_layers:>3} {row.d_model:>5} {row.n_heads:>3} "
            f"{human_count(row.n_params_total):>7} {human_count(row.n_params_active):>7} "
            f"{human_count(row.flops_per_token_train):>7} {human_count(row.tokens):>7} {_short(row.steps, 7, 'd'):>7}")


def _short(value: float, width: int, spec: str) -> str:
    """``value`` formatted with ``spec`` (e.g. ``d``, ``.1f``), or with 3 significant digits
    when that would not fit ``width`` columns (the step count of a 1e30-FLOP budget)."""
    text = format(value, spec)
    return text if len(text) <= width else f"{value:.3g}"


def render_table(rows: list[PlanRow], trunks: Any = ()) -> str:
    """Rows grouped by budget and method, under 120 columns; with ``trunks`` (their
    RunSpecs, ``strategy: cooldown_branches``) the trunks of each method first and
    each branch's fork step in a last column."""
    header = f"{RUN_HEADER} {'D/N':>6} {'C/bud':>6}" + (f" {'fork':>6}" if trunks else "")
    lines: list[str] = _trunk_lines(trunks)
    group = None
    for row in rows:
        if (row.budget, row.method) != group:
            group = (row.budget, row.method)
            lines += ["", f"budget {row.budget:.3g} FLOPs · method {row.method} · {row.ffw}", header]
        lines.append(f"{_run_columns(row)} {_short(row.tokens_per_param, 6, '.1f'):>6} {row.realized_over_budget:>6.4f}"
                     + (f" {row.fork_step:>6}" if trunks else ""))
    if trunks:
        lines += ["", f"{len(rows)} runs, each a branch of one of {len(trunks)} trunks that starts from its trunk's "
                  "checkpoint at step `fork`.",
                  "params = total, active = per token, F/tok = training FLOPs per token, D/N = tokens per",
                  "active non-embedding parameter, C/bud = realized FLOPs / budget."]
    else:
        lines += ["", f"{len(rows)} runs. params = total, active = per token, F/tok = training FLOPs per token, "
                  "D/N = tokens per active non-embedding parameter, C/bud = realized FLOPs / budget."]
    return "\n".join(lines[1:]) + "\n"


def _trunk_lines(trunks: Any) -> list[str]:
    """The trunk tables, one per method (nothing without trunks)."""
    lines: list[str] = []
    method = None
    for trunk in trunks:
        if trunk.method != method:
            method = trunk.method
            lines += ["", f"trunks of method {method} · warm-up, then the peak learning rate to the last fork step",
                      f"{RUN_HEADER} {'warmup':>6}  forks at steps"]
        lines.append(f"{_run_columns(PlanRow.from_run_spec(trunk))} {trunk.warmup_steps:>6}  "
                     + ", ".join(map(str, trunk.fork_steps)))
    return lines


def cost_summary(study_plan: Any) -> str:
    """The study's training FLOPs beside the same runs trained independently (cooldown branches)."""
    from isoflop.branch_planner import training_cost

    cost = training_cost(study_plan)
    trunk_flops = sum(trunk.realized_flops for trunk in study_plan.trunks)
    return (f"training FLOPs: {cost.flops:.3g} = {len(study_plan.trunks)} trunks {trunk_flops:.3g} + "
            f"{len(study_plan.runs)} cooldowns {cost.flops - trunk_flops:.3g}\n"
            f"the same {len(study_plan.runs)} runs trained independently (cosine): {cost.independent_flops:.3g} FLOPs; "
            f"ratio {cost.ratio:.3f}\n")


def render(study_plan: Any, output_format: str, measured: dict[str, dict[str, float]] | None = None) -> str:
    """The plan as ``output_format``; ``measured`` (by run_id) adds the columns of ``--verify-flops``.

    With cooldown branches the table shows the trunks and ends with the FLOPs
    comparison, and the JSON is ``{"runs": [...], "trunks": [...], "training_flops": {...}}``;
    the CSV holds the runs (the branches) only, as ``plan.csv`` does.
    """
    rows = plan_rows(study_plan.runs)
    if output_format == "table":
        table = render_table(rows, study_plan.trunks)
        return table + cost_summary(study_plan) if study_plan.trunks else table
    columns = [{**row.to_dict(), **(measured or {}).get(row.run_id, {})} for row in rows]
    if output_format == "csv":
        return csv_text(columns)
    runs = _json_rows(columns, study_plan.runs)
    if not study_plan.trunks:
        return json.dumps(runs, indent=2) + "\n"
    from isoflop.branch_planner import training_cost

    trunk_rows = [{**row.to_dict(), "warmup_steps": trunk.warmup_steps, "fork_steps": list(trunk.fork_steps),
                   **(measured or {}).get(row.run_id, {})}
                  for row, trunk in zip(plan_rows(study_plan.trunks), study_plan.trunks)]
    cost = training_cost(study_plan)
    return json.dumps({"runs": runs, "trunks": _json_rows(trunk_rows, study_plan.trunks),
                       "training_flops": {"total": cost.flops, "independent": cost.independent_flops,
                                          "ratio": cost.ratio}}, indent=2) + "\n"


def _json_rows(columns: list[dict[str, Any]], runs: Any) -> list[dict[str, Any]]:
    """Rows of ``--format json``: the CSV columns, the full model and the per-component breakdowns."""
    return [{**row, "model": run.model.to_dict(), "forward_flops_by_component": run.forward_flops_by_component,
             "params_by_component": run.params_by_component} for row, run in zip(columns, runs)]


def verify_flops(runs: Any, world_size: int) -> dict[str, dict[str, float]]:
    """Measured training FLOPs per token and their ratio to the accounting, by run_id.

    Each model is measured at the micro-batch one of its ``world_size``
    training processes runs (:func:`isoflop.planner.per_rank_micro_batch_size`).
    """
    try:
        from models.verify import measure_forward_flops_per_token
    except ImportError as error:
        raise UserError(f"--verify-flops needs the model zoo, which is not available ({error}); "
                        "run without --verify-flops") from None
    from isoflop.flops import TRAINING_FLOPS_PER_FORWARD_FLOP, model_costs
    from isoflop.planner import per_rank_micro_batch_size

    measured_by_model: dict[str, tuple[float, float]] = {}  # forward FLOPs/token, ratio
    measured_by_run = {}
    for run in runs:
        micro_batch = per_rank_micro_batch_size(run.batch_size, run.micro_batch_size, world_size)
        key = json.dumps(run.model.to_dict(), sort_keys=True) + str(micro_batch)
        if key not in measured_by_model:
            measured = measure_forward_flops_per_token(run.model, run.seq_len, micro_batch)
            expected = model_costs(run.model, run.seq_len).flops_per_token_forward_measurable
            measured_by_model[key] = (measured, measured / expected)
        measured, ratio = measured_by_model[key]
        measured_by_run[run.run_id] = {"measured_flops_per_token_train": TRAINING_FLOPS_PER_FORWARD_FLOP * measured,
                                       "measured_over_accounted": ratio}
    return measured_by_run


def within_tolerance(measured: dict[str, dict[str, float]]) -> bool:
    """Whether every measured/accounted ratio is within :data:`VERIFY_TOLERANCE` of 1."""
    return all(abs(values["measured_over_accounted"] - 1.0) <= VERIFY_TOLERANCE for values in measured.values())


def write_output(text: str, out: Path | None) -> None:
    """Print, or write ``out`` atomically (:func:`isoflop.commands.common.write_output_file`)."""
    if out is None:
        sys.stdout.write(text)
        return
    write_output_file(out, text, "--out")


def run(args: argparse.Namespace) -> int:
    from isoflop.compose import load_study
    from isoflop.planner import plan, processes_per_run

    composed = load_study(args.sweep, args.overrides, args.budgets)
    study_plan = plan(composed.study)
    measured = (verify_flops([*study_plan.trunks, *study_plan.runs], processes_per_run(composed.study.cluster))
                if args.verify_flops else {})
    if args.verify_flops and args.format == "table":
        for run_id, values in measured.items():
            print(f"{run_id:<40} measured/accounted FLOPs = {values['measured_over_accounted']:.4f}",
                  file=sys.stderr)
    write_output(render(study_plan, args.format, measured), args.out)
    for dropped in study_plan.dropped:
        print(f"note: dropped {dropped.method} L{dropped.n_layers} d{dropped.d_model} at "
              f"{dropped.budget_flops:.3g} FLOPs: {dropped.reason}", file=sys.stderr)
    for note in study_plan.notes:
        print(f"note: {note}", file=sys.stderr)
    if not within_tolerance(measured):
        print("isoflop plan: FLOP verification failed: a measured/accounted ratio is outside "
              f"[{1 - VERIFY_TOLERANCE}, {1 + VERIFY_TOLERANCE}]", file=sys.stderr)
        return 1
    return 0
