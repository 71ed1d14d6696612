"""A smoke-scale sweep directory with cooldown branches, for the branch tests."""

from __future__ import annotations

from pathlib import Path

from isoflop.commands.plan import plan_rows
from isoflop.compose import load_study
from isoflop.forks import write_trunks
from isoflop.planner import plan
from isoflop.sweep_dir import SweepDir

ONE_SHAPE = {"dense": ["~methods.peer"], "peer-sparse": ["~methods.dense", "train.sparse_tables=true"]}


def branch_sweep(root: Path, methods: list[str], executor: str = "debug"):
    """A sweep directory of smoke_wsd with one method and one shape (a trunk, two branches), as
    `isoflop submit` writes it before submitting anything; returns (sweep, plan)."""
    composed = load_study("smoke_wsd", [*methods, "ladder.shapes=[[1,8,2]]", f"cluster={executor}"], [1e10, 2e10])
    study_plan = plan(composed.study)
    sweep = SweepDir(root)
    sweep.create(composed.resolved_yaml, plan_rows(study_plan.runs), {"sweep": "smoke_wsd"},
                 plan_rows(study_plan.trunks))
    write_trunks(sweep, study_plan.trunks)
    for spec in study_plan.runs:
        spec.write(sweep.run(spec.run_id).run_json)
    return sweep, study_plan
