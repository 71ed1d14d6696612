"""What `isoflop status` and `isoflop submit` make of trunks and branches, from the sweep's
files alone: a branch waits for its trunk's fork step, is blocked when the trunk ended
without reaching it, and is submitted only once it holds its fork checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

from branch_support import ONE_SHAPE, branch_sweep
from conftest import isoflop, status_rows
from isoflop.commands.submit import select_runs
from isoflop.forks import ForkRecord
from isoflop.run_records import JobEvent
from isoflop.sweep_dir import study_changes


def test_branches_wait_for_their_trunk_and_are_submitted_once_forked(tmp_path: Path, capsys) -> None:
    sweep, study_plan = branch_sweep(tmp_path / "sweep", ONE_SHAPE["dense"])
    (trunk,) = study_plan.trunks
    rows = status_rows(sweep.path, capsys)
    assert [(row["run_id"], row["role"], row["state"]) for row in rows] == \
        [(trunk.run_id, "trunk", "planned")] + [(run.run_id, "branch", "waiting") for run in study_plan.runs]
    assert rows[1]["waits_for"] == f"trunk {trunk.run_id} to reach step {study_plan.runs[0].cooldown_start_step} " \
                                   "(at step 0, planned)"
    chosen, states, _ = select_runs(sweep, retry_failed=True)
    assert [run.run_id for run in chosen] == [trunk.run_id]
    assert sorted(states.values()) == ["planned", "waiting", "waiting"]
    assert chosen[0].path == sweep.trunks_dir / trunk.run_id

    # The trunk's job died: its branches cannot start until it is resubmitted.
    trunk_dir = sweep.run(trunk.run_id)
    trunk_dir.record_event(JobEvent.now("submitted", job_id="debug-1", executor="debug", code_hash="x"))
    trunk_dir.record_event(JobEvent.now("failed", job_id="debug-1", error="RuntimeError: lost"))
    assert [row["state"] for row in status_rows(sweep.path, capsys)] == ["failed", "blocked", "blocked"]
    assert [run.run_id for run in select_runs(sweep, retry_failed=True)[0]] == [trunk.run_id]
    assert select_runs(sweep, retry_failed=False)[0] == []

    # Handed its checkpoint, a branch is ready (planned) and is the one submitted.
    first = study_plan.runs[0]
    ForkRecord(trunk.run_id, first.cooldown_start_step, time.time()).write(sweep.run(first.run_id).fork_json)
    rows = status_rows(sweep.path, capsys)
    assert [(row["state"], row["waits_for"]) for row in rows[1:]] == [("planned", None), ("blocked", rows[2]["waits_for"])]
    assert [run.run_id for run in select_runs(sweep, retry_failed=False)[0]] == [first.run_id]

    capsys.readouterr()
    assert isoflop("status", sweep.path) == 0
    table = capsys.readouterr().out
    assert f"{trunk.run_id}" in table and " trunk " in table
    assert f"blocked: {study_plan.runs[1].run_id} waits for trunk {trunk.run_id}" in table
    assert "3 runs: 1 planned, 1 failed, 1 blocked" in table


def test_a_sweep_created_before_the_new_settings_is_not_a_changed_study() -> None:
    old = "name: tiny\ntrain:\n  batch_size: 16\n"
    new = ("name: tiny\nstrategy: independent\ntrain:\n  batch_size: 16\n  schedule: cosine\n"
           "  cooldown_fraction: 0.2\n  cooldown_shape: 1-sqrt\n  eval_every_tokens: 0\n")
    assert study_changes(old, new) == []
    assert study_changes(old, new.replace("schedule: cosine", "schedule: wsd")) == \
        ["train.schedule: '<unset>' -> 'wsd'"]
