"""Bad input: one clear line on stderr and exit status 2, through ``isoflop.cli.main``."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SWEEP, isoflop
from isoflop.compose import load_study
from isoflop.commands.plan import plan_rows
from isoflop.planner import plan
from isoflop.sweep_dir import SweepDir, study_changes


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    return error


def test_slurm_without_sbatch_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, "cluster=slurm") == 2
    assert "sbatch" in one_line_error(capsys)


def test_unwritable_root_is_one_line(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert isoflop("submit", "--sweep", SWEEP, "--root", blocker / "sweeps", "cluster=debug") == 2
    assert "--root" in one_line_error(capsys)


@pytest.mark.parametrize("command", ["status", "wait", "cancel"])
def test_a_folder_that_is_not_a_sweep_is_one_line(tmp_path: Path, capsys, command: str) -> None:
    assert isoflop(command, tmp_path) == 2
    assert "not a sweep directory" in one_line_error(capsys)


def test_changed_study_is_refused_with_the_differences_unless_new(tmp_path: Path, capsys) -> None:
    composed = load_study(SWEEP, ["ladder.shapes=[[1,32,2]]"], None)
    SweepDir(tmp_path / SWEEP).create(composed.resolved_yaml, plan_rows(plan(composed.study).runs), {"sweep": SWEEP})
    changed = ("ladder.shapes=[[1,32,2]]", "train.lr_base=0.002")
    assert isoflop("submit", "--sweep", SWEEP, "--dry-run", "--root", tmp_path, *changed) == 0
    capsys.readouterr()
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, "cluster=slurm", *changed) == 2
    error = one_line_error(capsys)
    assert "train.lr_base: 0.001 -> 0.002" in error and "--new" in error
    assert isoflop("submit", "--sweep", SWEEP, "--new", "--root", tmp_path, "--budget", "5e8",
                   "cluster=debug", *changed) == 0
    assert capsys.readouterr().out.strip().endswith(f"{SWEEP}-2")


def test_study_changes_ignore_where_jobs_run() -> None:
    old = "train:\n  lr_base: 0.001\ncluster:\n  executor: local\n"
    new = "train:\n  lr_base: 0.002\ncluster:\n  executor: slurm\n"
    assert study_changes(old, new) == ["train.lr_base: 0.001 -> 0.002"]


def test_dry_run_prints_plan_and_cost_and_writes_nothing(tmp_path: Path, capsys) -> None:
    assert isoflop("submit", "--sweep", SWEEP, "--dry-run", "--root", tmp_path, "cluster=slurm",
                   "cluster.accelerator=H100", "cluster.assumed_mfu=0.5") == 0
    out = capsys.readouterr().out
    assert "cost estimate" in out and "H100-hours" in out and "MFU 0.5" in out
    assert not any(tmp_path.iterdir())
