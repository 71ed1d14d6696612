"""Trunks hand their fork checkpoints to their branches; ready branches get submitted.

The orchestration of ``strategy: cooldown_branches`` (the plan is
:mod:`isoflop.branch_planner`'s). A trunk lives in ``<sweep>/trunks/<trunk_id>/``
and trains like any run; a branch is a run of ``runs/`` whose RunSpec names its
trunk and fork step.

How a branch starts:

1. At each of its ``fork_steps`` the trunk's trainer saves a checkpoint and calls
   :func:`hand_off`: every branch that forks there gets that checkpoint as its own
   (:func:`isoflop.checkpoint.adopt`: hard links, manifest renamed), then its
   ``fork.json``. A branch with a ``fork.json`` is *ready*: it resumes from that
   checkpoint exactly as a preempted run resumes, so no trunk step is trained
   twice. A trunk resumed at a fork step hands it off again (it may have stopped
   between the checkpoint and the hand-off); branches already given one are skipped.
2. The trunk's job then submits every ready branch of the sweep that is neither
   live nor finished, through :func:`isoflop.submission.submit_runs` (the same
   ``submitted`` records as ``isoflop submit``), under the sweep's submission lock
   with the states read inside it: a cluster user who logged out still gets every
   branch, and no branch is submitted twice.
3. ``isoflop submit`` and ``isoflop study`` submit ready branches too (a trunk whose
   submission failed, a sweep resubmitted after a crash), under the same lock. In
   one process (``cluster=debug``, ``isoflop train``) a trunk only hands off; the
   submitter then runs the ready branches.

Why not SLURM job dependencies: a dependency waits for a job to end, not for a
step in the middle of it; cutting each trunk into dependent segments at its fork
steps would add a job start (data and model set-up, a checkpoint load) per
segment, a requeue of a segment would release nothing, and the local executor
has no dependencies at all. A trunk that submits its own branches works the same
on both executors.

Fork checkpoints: the trunk's own ``checkpoints/`` keeps its last two, as every
run does; each branch holds its fork checkpoint (hard links, no extra disk while
the trunk still holds it) until its own later checkpoints replace it, i.e. it is
kept until the branch has started and moved on. With
``cluster.keep_fork_checkpoints`` the trunk also keeps every fork checkpoint in
``trunks/<trunk_id>/forks/``.

``isoflop status``: a branch without its checkpoint is ``waiting`` for its trunk
(the step it waits for and the trunk's progress), or ``blocked`` when the trunk
ended without reaching it (failed, cancelled or diverged; ``--retry-failed``
resubmits the trunk). This module imports torch only inside :func:`hand_off`
(the trainer's process), so status and submit stay torch-free.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

from isoflop.atomic_files import write_atomic
from isoflop.errors import UserError
from isoflop.record_format import RecordError, check_version, record_from_mapping
from isoflop.run_records import PlanRow
from isoflop.study_config import ClusterConfig
from isoflop.sweep_dir import RunDir, SweepDir

if TYPE_CHECKING:
    from isoflop.run_spec import RunSpec
    from isoflop.scheduler_state import RunStatus


@dataclass(frozen=True)
class ForkRecord:
    """``fork.json`` of a branch: the trunk checkpoint it was given (its presence = ready).

    Attributes:
        trunk_id: the trunk.
        step: the trunk's step, the branch's first cooldown step.
        time: UNIX time of the hand-off (seconds).
    """

    VERSION: ClassVar[int] = 1
    KIND: ClassVar[str] = "fork record"

    trunk_id: str
    step: int
    time: float
    version: int = VERSION

    def write(self, path: Path) -> None:
        """``fork.json`` atomically."""
        write_atomic(path, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> ForkRecord | None:
        """The record, or None while the branch has none. Raises RecordError for a damaged one."""
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise RecordError(f"{path}: not a valid {cls.KIND} ({error}); delete it to let the trunk hand "
                              "its checkpoint over again") from None
        if isinstance(values, dict):
            check_version(values, cls.KIND, cls.VERSION, str(path))
        return record_from_mapping(cls, values, cls.KIND, str(path), fix="delete it to let the trunk hand its "
                                   "checkpoint over again")


def write_trunks(sweep: SweepDir, trunks: tuple[RunSpec, ...]) -> None:
    """``trunks/<trunk_id>/run.json`` of every trunk that has none yet (``isoflop submit``)."""
    for trunk in trunks:
        folder = sweep.trunk(trunk.run_id)
        if not folder.run_json.is_file():
            trunk.write(folder.run_json)


def sweep_of(run_dir: Path) -> SweepDir | None:
    """The sweep holding the trunk folder ``run_dir`` (``<sweep>/trunks/<id>``), or None."""
    sweep = SweepDir(Path(run_dir).resolve().parent.parent)
    return sweep if sweep.exists() and Path(run_dir).resolve().parent == sweep.trunks_dir.resolve() else None


def study_cluster(sweep: SweepDir) -> ClusterConfig:
    """The cluster settings of the sweep's latest submission (``study.yaml``)."""
    import yaml

    try:
        values = (yaml.safe_load(sweep.study_yaml.read_text()) or {}).get("cluster", {})
        return ClusterConfig(**values)
    except (OSError, yaml.YAMLError, TypeError, AttributeError) as error:
        raise UserError(f"{sweep.study_yaml}: no readable cluster settings ({error}); re-run `isoflop submit` "
                        "on this sweep") from None


def hand_off(trunk: RunSpec, trunk_dir: Path, step: int) -> None:
    """Give the checkpoint the trunk ``trunk`` just saved after ``step`` steps to every
    branch forking there, then submit the ready branches (module docstring).

    Called by the trainer on rank 0. A trunk outside a sweep (``isoflop train`` on a
    copied folder) has no branches to give it to. A failed submission is reported and
    left to the next ``isoflop submit``; the trunk trains on.
    """
    from isoflop import checkpoint

    sweep = sweep_of(trunk_dir)
    if sweep is None:
        print(f"isoflop train: trunk {trunk.run_id} at step {step}: not in a sweep's trunks/ folder, so no "
              "branch is given this checkpoint", file=sys.stderr)
        return
    source = checkpoint.step_folder(trunk_dir, step)
    given = [row.run_id for row in sweep.plan_rows().values()
             if row.trunk_id == trunk.run_id and row.fork_step == step
             and seed_branch(sweep.run(row.run_id), source, trunk.run_id, step)]
    cluster = study_cluster(sweep)
    if cluster.keep_fork_checkpoints and not (trunk_dir / "forks" / source.name).exists():
        (trunk_dir / "forks").mkdir(exist_ok=True)
        checkpoint.link_tree(source, trunk_dir / "forks" / source.name)
    submitted = [] if cluster.executor == "debug" else submit_ready_branches(sweep, cluster)
    print(f"isoflop train: trunk {trunk.run_id} at step {step}: checkpoint given to {len(given)} branch(es); "
          f"{len(submitted)} ready branch(es) submitted", file=sys.stderr)


def seed_branch(branch: RunDir, source: Path, trunk_id: str, step: int) -> bool:
    """Give ``branch`` the trunk checkpoint folder ``source`` (of ``step``) and write its
    ``fork.json``; False (nothing done) when it already has one or has finished."""
    from isoflop import checkpoint

    if ForkRecord.read(branch.fork_json) is not None or branch.result() is not None:
        return False
    checkpoint.adopt(source, trunk_id, branch.path, branch.run_id)
    ForkRecord(trunk_id=trunk_id, step=step, time=time.time()).write(branch.fork_json)
    return True


@contextlib.contextmanager
def without_array_task_environment() -> Iterator[None]:
    """Hide the ``SLURM_ARRAY_*`` variables of the SLURM array task this process runs in (a trunk)
    while it submits: ``sbatch`` passes the submitter's environment on, SLURM sets them again only
    for array jobs, and submitit takes its job id from them, so a branch submitted as a single job
    would otherwise load the trunk's pickle and train the trunk instead."""
    hidden = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith("SLURM_ARRAY_")}
    try:
        yield
    finally:
        os.environ.update(hidden)


def submit_ready_branches(sweep: SweepDir, cluster: ClusterConfig) -> list[str]:
    """Submit every ready branch that is neither live nor finished; returns their run ids.

    The states are read inside the sweep's submission lock, so a submitter and a
    trunk that both see a branch ready submit it once. A scheduler that refuses the
    jobs is reported on stderr (the branches stay ready for the next submit).
    """
    from isoflop.run_spec import RunSpec
    from isoflop.scheduler_state import sweep_status
    from isoflop.submission import submit_runs

    with sweep.submission_lock():
        ready = [sweep.run(row.run_id) for row in sweep_status(sweep).runs
                 if row.role == "branch" and row.state == "planned"]
        try:
            with without_array_task_environment():
                submit_runs(cluster, sweep, [(run, RunSpec.read(run.run_json).to_dict()) for run in ready])
        except UserError as error:
            print(f"isoflop: warning: ready branches not submitted ({error.message}); `isoflop submit` on "
                  f"{sweep.path} submits them", file=sys.stderr)
            return []
    return [run.run_id for run in ready]


def with_branch_states(sweep: SweepDir, rows: list[RunStatus], plan: dict[str, PlanRow],
                       trunks: dict[str, PlanRow]) -> list[RunStatus]:
    """``rows`` with each trunk's and branch's role, and the state and what it waits for
    of each branch that has no checkpoint yet (``waiting``, or ``blocked`` when its trunk
    has ended without reaching the fork step)."""
    from isoflop.scheduler_state import TERMINAL

    if not trunks:
        return rows
    by_id = {row.run_id: row for row in rows}
    annotated = []
    for row in rows:
        planned = plan.get(row.run_id)
        if row.run_id in trunks:
            annotated.append(dataclasses.replace(row, role="trunk"))
        elif planned is None or planned.trunk_id is None:
            annotated.append(row)
        elif row.state != "planned" or ForkRecord.read(sweep.run(row.run_id).fork_json) is not None:
            annotated.append(dataclasses.replace(row, role="branch"))
        else:
            trunk = by_id.get(planned.trunk_id)
            trunk_state = trunk.state if trunk is not None else "planned"
            progress = f" (at step {trunk.step}, {trunk_state})" if trunk is not None else ""
            annotated.append(dataclasses.replace(
                row, role="branch", state="blocked" if trunk_state in TERMINAL else "waiting",
                waits_for=f"trunk {planned.trunk_id} to reach step {planned.fork_step}{progress}"))
    return annotated


def training_jobs(plan: Any) -> list[Any]:
    """The RunSpecs ``isoflop submit`` writes and may submit: trunks first, then the runs."""
    return [*plan.trunks, *plan.runs]
