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

Which folder that is: :mod:`isoflop.commands.sweep_choice`.
"""

from __future__ import annotations

import argparse
import fcntl
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from isoflop.commands.common import add_study_arguments, human_count
from isoflop.commands.sweep_choice import add_name_argument, choose_sweep_path
from isoflop.errors import (
    UserError,
    file_system_error,
    is_user_file_system_error,
    listed,
)

SHOWN_JOBS = 5
CHECKPOINT_BYTES_PER_PARAMETER = 12
"""fp32 parameter + AdamW's (or SparseAdam's) two fp32 moments (:mod:`isoflop.optimization`)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_study_arguments(parser)
    parser.add_argument("--root", type=Path, required=True, metavar="DIR",
                        help="folder holding sweep directories; the sweep is DIR/<name>")
    add_name_argument(parser)
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


def checkpoint_bytes(spec: Any) -> int:
    """Bytes of a run's checkpoint: ``n_params_total`` x :data:`CHECKPOINT_BYTES_PER_PARAMETER`
    (the rest of the state, RNG states and the data position, is a few kB)."""
    return int(spec.costs["n_params_total"]) * CHECKPOINT_BYTES_PER_PARAMETER


def checkpoint_estimate(runs: Any, cluster: Any) -> tuple[list[str], str | None]:
    """Each run's checkpoint size and save time (size / ``cluster.checkpoint_write_gbps``), and
    a warning when some would not be saved within the time-limit signal's lead time."""
    from isoflop.submission import SIGNAL_DELAY_S

    bandwidth = cluster.checkpoint_write_gbps * 1e9
    lines = [(f"checkpoints (parameters + Adam moments, fp32; saved at cluster.checkpoint_write_gbps="
              f"{cluster.checkpoint_write_gbps:g} GB/s):")]
    too_slow: list[tuple[float, str]] = []
    for spec in runs:
        size = checkpoint_bytes(spec)
        seconds = size / bandwidth
        if seconds > SIGNAL_DELAY_S:
            too_slow.append((seconds, spec.run_id))
        lines.append(f"  {spec.run_id}  {size / 1e9:.3g} GB  {seconds:.3g} s"
                     + ("  (longer than the signal's lead time)" if seconds > SIGNAL_DELAY_S else ""))
    if not too_slow:
        return lines, None
    seconds, run_id = max(too_slow)
    return lines, (f"isoflop submit: warning: {len(too_slow)} run(s) take longer to checkpoint than the "
                   f"{SIGNAL_DELAY_S} s between the time-limit signal and the kill (longest: {run_id}, "
                   f"{seconds:.0f} s), so at a time limit they lose the steps since their last periodic "
                   f"checkpoint; raise cluster.timeout_min so they end before it, or set "
                   f"cluster.checkpoint_write_gbps to the file system's measured speed (isoflop bench checkpoint)")


def check_ladder_kind(path: Path, adaptive: bool) -> None:
    """Refuse to continue a sweep whose ladders were placed the other way: submitting the fixed
    plan into an ``--adaptive`` sweep would replace its plan.csv and train the fixed ladder
    beside the placed one (and ``--adaptive`` on a fixed sweep would mix them the other way)."""
    from isoflop.adaptive_ladder import ladders_path
    from isoflop.sweep_dir import SweepDir

    if not SweepDir(path).exists() or ladders_path(path).is_file() == adaptive:
        return
    if adaptive:
        raise UserError(f"{path} was planned without --adaptive; continue it without --adaptive, or pass "
                        "--name NAME for an adaptive study beside it")
    raise UserError(f"{path} is an --adaptive study (its ladders are in {ladders_path(path).name}); continue it "
                    "with `isoflop study ... --adaptive`, or pass --name NAME for a sweep of the fixed ladder")


def submittable(state: str, retry_failed: bool) -> bool:
    """Whether a run in ``state`` is (re)submitted: planned ones always, failed and
    cancelled ones with ``--retry-failed``."""
    return state == "planned" or (retry_failed and state in ("failed", "cancelled"))


def select_runs(sweep: Any, retry_failed: bool) -> tuple[list[Any], dict[str, str], tuple[str, ...]]:
    """Run folders to submit now, every run's (and trunk's) state by id in plan order, and why
    the scheduler could not be asked (runs it would tell about are ``unknown``: left alone)."""
    from isoflop.scheduler_state import sweep_status

    status = sweep_status(sweep)
    states = {row.run_id: row.state for row in status.runs}
    chosen = [sweep.run(run_id) for run_id, state in states.items() if submittable(state, retry_failed)]
    return chosen, states, status.problems


def submission_in_progress(sweep: Any) -> bool:
    """Whether an ``isoflop submit`` of ``sweep`` holds its submit lock now."""
    try:
        handle = open(sweep.submit_lock)  # noqa: SIM115 - closed below
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def write_run_specs(sweep: Any, specs: dict[str, Any]) -> None:
    """``runs/<run_id>/run.json`` of every planned run that has none yet; one already
    there must be the planned spec (a damaged or hand-edited one is a UserError naming it,
    before any run.json is written)."""
    from isoflop.record_format import NewerVersionError
    from isoflop.run_spec import RunSpec

    for run_id, spec in specs.items():
        run_dir = sweep.run(run_id)
        if run_dir.path.exists() and not run_dir.path.is_dir():
            raise UserError(f"{run_dir.path} is a file, where the run's folder belongs; move it aside")
        if run_dir.run_json.exists():
            fix = "delete it, and this `isoflop submit` writes it again from the plan"
            if not run_dir.run_json.is_file():
                raise UserError(f"{run_dir.run_json} is not a file; move it aside, and this `isoflop submit` "
                                "writes it again from the plan")
            try:
                written = RunSpec.read(run_dir.run_json)
            except NewerVersionError:  # written by a later isoflop: not damaged
                raise
            except UserError as error:
                raise UserError(f"{error.message.split(';')[0]}; {fix}") from None
            # what the run computes; execution settings (train.parallelism) may change freely
            if (written.run_id, written.content_hash()) != (spec.run_id, spec.content_hash()):
                raise UserError(f"{run_dir.run_json} is not the run's planned spec (edited or damaged); {fix}")
    for run_id, spec in specs.items():
        run_json = sweep.run(run_id).run_json
        if not run_json.exists():
            spec.write(run_json)


def submit_study(composed: Any, root: Path, name: str | None, retry_failed: bool, new: bool,
                 study_plan: Any = None, *, takes_new: bool = False) -> Any:
    """Write (or reuse) the sweep directory of ``composed`` under ``root`` and submit
    every pending run of ``study_plan`` (default: the study's plan); returns the
    :class:`~isoflop.sweep_dir.SweepDir`. ``takes_new``: the command has ``--new``
    (:func:`choose_sweep_path`)."""
    from isoflop.commands.plan import plan_rows
    from isoflop.forks import write_trunks
    from isoflop.planner import plan
    from isoflop.scheduler_state import sweep_status
    from isoflop.submission import package_version
    from isoflop.sweep_dir import SweepDir

    study, cluster = composed.study, composed.study.cluster
    fixed_ladder = study_plan is None
    study_plan = plan(study) if fixed_ladder else study_plan
    rows = plan_rows(study_plan.runs)
    path = choose_sweep_path(root, name or study.name, composed.resolved_yaml, name is not None, new,
                             takes_new=takes_new)
    if fixed_ladder:  # an adaptive study checks its sweep itself (adaptive_ladder.run_adaptive)
        check_ladder_kind(path, adaptive=False)
    sweep, existed = SweepDir(path), SweepDir(path).exists()
    specs = {spec.run_id: spec for spec in (*study_plan.trunks, *study_plan.runs)}
    sweep.make_writable_folder()
    try:
        with sweep.submission_lock():  # one submitter per sweep at a time
            if existed:  # a damaged record stops the submit before it writes anything
                sweep_status(sweep, ask_scheduler=False)
            sweep.create(composed.resolved_yaml, rows, {
                "sweep": composed.sweep, "study": study.name, "created_at": time.time(),
                "isoflop_version": package_version(), "runs": len(rows)}, plan_rows(study_plan.trunks))
            write_trunks(sweep, study_plan.trunks)
            write_run_specs(sweep, {spec.run_id: spec for spec in study_plan.runs})
            submissions, submitted, states, problems = submit_pending(sweep, cluster, specs, retry_failed)
    except OSError as error:
        if not is_user_file_system_error(error):
            raise
        raise file_system_error(error, f"write the sweep directory {sweep.path}") from None
    report_submission(submissions, submitted, len(specs), states, cluster.executor, retry_failed, problems)
    return sweep


def submit_pending(sweep: Any, cluster: Any, specs: dict[str, Any], retry_failed: bool
                   ) -> tuple[list[Any], list[str], dict[str, str], tuple[str, ...]]:
    """Submit every run (and trunk, and ready branch) :func:`submittable` now; returns the
    submissions (``submitted`` JobEvents), the ids of the runs submitted, every run's state
    by id as last read (before this submission; with ``debug``, after its jobs ended) and
    why the scheduler could not be asked.

    The ``debug`` executor trains each job before returning, so a trunk there hands
    its checkpoints to its branches on the way: those are submitted in turn, until
    nothing new is ready (no job is submitted twice in one call).
    """
    from isoflop.submission import submit_runs

    submissions: list[Any] = []
    submitted: list[str] = []
    while True:
        chosen, states, problems = select_runs(sweep, retry_failed)
        to_submit = [run_dir for run_dir in chosen if run_dir.run_id not in submitted]
        submissions += submit_runs(cluster, sweep, [(run_dir, specs[run_dir.run_id].to_dict())
                                                    for run_dir in to_submit])
        submitted += [run_dir.run_id for run_dir in to_submit]
        if not to_submit or cluster.executor != "debug":
            return submissions, submitted, states, problems


def report_submission(submissions: list[Any], submitted: list[str], planned: int, states: dict[str, str],
                      executor: str, retry_failed: bool, problems: tuple[str, ...] = ()) -> None:
    """On stderr: ``submitted N of M runs to EXECUTOR (jobs ...)``; with ``debug``, which
    trains them before returning, how they ended (``ended: ...``); the states of the runs
    not submitted (``left alone``); and why the scheduler could not be asked.

    ``submitted``: the ids of the runs submitted; ``states``: every run's state as
    :func:`submit_pending` last read it.
    """
    from isoflop.commands.status import scheduler_warning

    def summary(counts: dict[str, int]) -> str:
        return ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))

    jobs = list(dict.fromkeys(submission.job_id.split("_")[0] for submission in submissions))
    ended = summary(Counter(state for run_id, state in states.items() if run_id in submitted))
    left_alone = summary(Counter(state for run_id, state in states.items() if run_id not in submitted))
    print(f"submitted {len(submitted)} of {planned} runs to {executor}"
          f"{' (jobs ' + listed(jobs, SHOWN_JOBS) + ')' if jobs else ''}"
          f"{'; ended: ' + ended if ended and executor == 'debug' else ''}"
          f"{'; left alone: ' + left_alone if left_alone else ''}", file=sys.stderr)
    counts = Counter(states.values())
    if not retry_failed and counts.get("failed", 0) + counts.get("cancelled", 0):
        print("some runs failed or were cancelled: pass --retry-failed to resubmit them", file=sys.stderr)
    warning = scheduler_warning(problems)
    if warning:
        print(warning, file=sys.stderr)


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
        checkpoint_lines, checkpoint_warning = checkpoint_estimate(study_plan.runs, composed.study.cluster)
        print("\n".join(checkpoint_lines))
        if checkpoint_warning:
            print(checkpoint_warning, file=sys.stderr)
        return 0
    sweep = submit_study(composed, args.root, args.name, args.retry_failed, args.new, takes_new=True)
    print(sweep.path)
    return 0
