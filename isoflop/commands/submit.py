"""``isoflop submit``: plan a study, write its sweep directory, submit every pending run.

Resubmitting the same study never duplicates a run that is completed
(``result.json``) or live in the scheduler (pending, running, preempted);
failed and cancelled runs are resubmitted only with ``--retry-failed``. With
cooldown branches, trunks are submitted like runs and a branch once its trunk
has handed it a checkpoint (:mod:`isoflop.forks`); a waiting branch is left
to its trunk. If
the study's settings changed since the sweep was created (where jobs run,
``cluster.*``, may change freely), submit refuses and shows the first
differences, unless ``--new`` (a fresh sweep beside it) or ``--name``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from isoflop.commands.common import add_study_arguments, human_count
from isoflop.errors import UserError

SHOWN_CHANGES = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_arguments(parser)
    parser.add_argument("--root", type=Path, required=True, metavar="DIR",
                        help="folder holding sweep directories; the sweep is DIR/<name>")
    parser.add_argument("--name", default=None, help="sweep directory name (default: the study's name)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and its cost estimate; write and submit nothing")
    parser.add_argument("--retry-failed", action="store_true",
                        help="also resubmit failed and cancelled runs (they resume from their checkpoints)")
    parser.add_argument("--new", action="store_true",
                        help="if the study changed since the sweep was created, create a new sweep "
                             "<name>-2, <name>-3, ... instead of refusing")


def cost_estimate(job_flops: tuple[float, ...], cluster: Any) -> str:
    """Device-hours from the training FLOPs of each job (the accounting's; trunks and
    cooldowns with cooldown branches), the assumed MFU and the accelerator's peak."""
    from isoflop.hardware import peak_flops

    peak = cluster.peak_flops or peak_flops(cluster.accelerator)
    flops = sum(job_flops)
    device_hours = flops / (peak * cluster.assumed_mfu) / 3600.0
    longest = max(job_flops, default=0.0) / (peak * cluster.assumed_mfu) / 3600.0
    devices = max(1, cluster.nodes * max(cluster.gpus_per_node, 1))
    return (f"cost estimate: {human_count(flops)}FLOPs in {len(job_flops)} jobs = {device_hours:.3g} "
            f"{cluster.accelerator}-hours at MFU {cluster.assumed_mfu:g} (peak {human_count(peak)}FLOP/s); "
            f"longest job {longest / devices * 60:.3g} min on {devices} device(s)")


def choose_sweep_path(root: Path, name: str, resolved_yaml: str, explicit_name: bool, new: bool) -> Path:
    """The sweep folder to use: ``root/name`` unless it holds a different study."""
    from isoflop.sweep_dir import SweepDir, study_changes

    candidate, suffix = root / name, 1
    while True:
        sweep = SweepDir(candidate)
        if not sweep.exists():
            return candidate
        changes = study_changes(sweep.study_yaml.read_text() if sweep.study_yaml.is_file() else "",
                                resolved_yaml)
        if not changes:
            return candidate
        if not new:
            shown = "; ".join(changes[:SHOWN_CHANGES])
            more = f" (and {len(changes) - SHOWN_CHANGES} more)" if len(changes) > SHOWN_CHANGES else ""
            fix = ("pass --new to create a new sweep beside it" if explicit_name else
                   "pass --new to create a new sweep beside it, or --name NAME")
            raise UserError(f"{candidate}: the study changed since this sweep was created: {shown}{more}; "
                            f"{fix}, or undo the change to continue the sweep")
        suffix += 1
        candidate = root / f"{name}-{suffix}"


def submittable(state: str, retry_failed: bool) -> bool:
    """Whether a run in ``state`` is (re)submitted: planned ones always, failed and
    cancelled ones with ``--retry-failed``."""
    return state == "planned" or (retry_failed and state in ("failed", "cancelled"))


def select_runs(sweep: Any, retry_failed: bool) -> tuple[list[Any], dict[str, int]]:
    """Run folders to submit now, and how many runs are in each state."""
    from isoflop.scheduler_state import sweep_status

    chosen, counts = [], {}
    for status in sweep_status(sweep):
        counts[status.state] = counts.get(status.state, 0) + 1
        if submittable(status.state, retry_failed):
            chosen.append(sweep.run(status.run_id))
    return chosen, counts


def submit_study(composed: Any, root: Path, name: str | None, retry_failed: bool, new: bool,
                 study_plan: Any = None) -> Any:
    """Write (or reuse) the sweep directory of ``composed`` under ``root`` and submit
    every pending run of ``study_plan`` (default: the study's plan); returns the
    :class:`~isoflop.sweep_dir.SweepDir`."""
    from isoflop.commands.plan import plan_rows
    from isoflop.forks import write_trunks
    from isoflop.planner import plan
    from isoflop.submission import package_version
    from isoflop.sweep_dir import SweepDir

    study, cluster = composed.study, composed.study.cluster
    study_plan = plan(study) if study_plan is None else study_plan
    rows = plan_rows(study_plan.runs)
    path = choose_sweep_path(root, name or study.name, composed.resolved_yaml, name is not None, new)
    sweep = SweepDir(path)
    sweep.create(composed.resolved_yaml, rows, {
        "sweep": composed.sweep, "study": study.name, "created_at": time.time(),
        "isoflop_version": package_version(), "runs": len(rows)}, plan_rows(study_plan.trunks))
    specs = {spec.run_id: spec for spec in (*study_plan.trunks, *study_plan.runs)}
    with sweep.submission_lock():  # one submitter per sweep at a time
        write_trunks(sweep, study_plan.trunks)
        for spec in study_plan.runs:
            run_dir = sweep.run(spec.run_id)
            if not run_dir.run_json.is_file():
                spec.write(run_dir.run_json)
        submissions, counts = submit_pending(sweep, cluster, specs, retry_failed)
    report_submission(submissions, len(specs), counts, cluster.executor, retry_failed)
    return sweep


def submit_pending(sweep: Any, cluster: Any, specs: dict[str, Any], retry_failed: bool
                   ) -> tuple[list[Any], dict[str, int]]:
    """Submit every run (and trunk, and ready branch) :func:`submittable` now; returns the
    submissions and the final count of runs per state.

    The ``debug`` executor trains each job before returning, so a trunk there hands
    its checkpoints to its branches on the way: those are submitted in turn, until
    nothing new is ready (no job is submitted twice in one call).
    """
    from isoflop.submission import submit_runs

    submissions: list[Any] = []
    submitted: set[str] = set()
    while True:
        to_submit, counts = select_runs(sweep, retry_failed)
        to_submit = [run_dir for run_dir in to_submit if run_dir.run_id not in submitted]
        submissions += submit_runs(cluster, sweep, [(run_dir, specs[run_dir.run_id].to_dict())
                                                    for run_dir in to_submit])
        submitted.update(run_dir.run_id for run_dir in to_submit)
        if not to_submit or cluster.executor != "debug":
            return submissions, counts


def report_submission(submissions: list[Any], planned: int, counts: dict[str, int], executor: str,
                      retry_failed: bool) -> None:
    """``submitted N of M runs ...`` and what was left alone, on stderr."""
    skipped = ", ".join(f"{count} {state}" for state, count in sorted(counts.items())
                        if not submittable(state, retry_failed))
    jobs = sorted({submission.job_id.split("_")[0] for submission in submissions})
    print(f"submitted {len(submissions)} of {planned} runs to {executor}"
          f"{' (jobs ' + ', '.join(jobs[:5]) + ')' if jobs else ''}"
          f"{'; left alone: ' + skipped if skipped else ''}", file=sys.stderr)
    if not retry_failed and counts.get("failed", 0) + counts.get("cancelled", 0):
        print("some runs failed or were cancelled: pass --retry-failed to resubmit them", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from isoflop.branch_planner import training_cost
    from isoflop.commands.plan import render
    from isoflop.compose import load_study
    from isoflop.planner import plan

    composed = load_study(args.sweep, args.overrides, args.budgets)
    if args.dry_run:
        study_plan = plan(composed.study)
        sys.stdout.write(render(study_plan, "table"))
        for note in study_plan.notes:
            print(f"note: {note}")
        trunks = f" and {len(study_plan.trunks)} trunks" if study_plan.trunks else ""
        print(f"would submit {len(study_plan.runs)} runs{trunks} with cluster.executor="
              f"{composed.study.cluster.executor} to {args.root / (args.name or composed.study.name)}")
        print(cost_estimate(training_cost(study_plan).job_flops, composed.study.cluster))
        return 0
    sweep = submit_study(composed, args.root, args.name, args.retry_failed, args.new)
    print(sweep.path)
    return 0
