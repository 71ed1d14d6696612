"""Where ``isoflop submit`` and ``isoflop study`` put a sweep, and what ``submit`` says it did.

A sweep is one folder of ``--root``: a ``--name`` (or a study ``name``) that leads
elsewhere, and a folder there holding someone else's files, are refused in one
line with exit status 2 before anything is written; an existing sweep, one whose
creation began, and an empty folder are used. The advice for a changed study
names a flag the command has, and the submission summary does not contradict itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SWEEP, isoflop

from isoflop.commands.plan import plan_rows
from isoflop.commands.submit import report_submission
from isoflop.commands.sweep_choice import choose_sweep_path
from isoflop.compose import load_study
from isoflop.planner import plan
from isoflop.run_records import JobEvent
from isoflop.sweep_dir import SweepDir

ONE_RUN = ("--budget", "5e8", "ladder.shapes=[[1,32,2]]")
BAD_NAMES = ["..", ".", "", "/tmp/elsewhere", "a/b", "a\\b"]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder``: file bytes, None for a folder."""
    return {str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
            for path in sorted(folder.rglob("*"))}


def exit_status(*argv: object) -> int:
    """``isoflop`` in this process; a usage error (argparse's SystemExit) gives its status."""
    try:
        return isoflop(*argv)
    except SystemExit as exit_:
        return exit_.code  # type: ignore[return-value]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error, error
    return error


def create_sweep(root: Path, *overrides: str) -> SweepDir:
    """The sweep of ``SWEEP`` with ``overrides`` under ``root``, written without training anything."""
    composed = load_study(SWEEP, list(overrides), None)
    sweep = SweepDir(root / SWEEP)
    sweep.create(composed.resolved_yaml, plan_rows(plan(composed.study).runs), {"sweep": SWEEP})
    return sweep


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The parent of ``--root`` (``root``), holding files a bad command must leave alone."""
    (tmp_path / "keep.json").write_text('{"kept": true}\n')
    (tmp_path / "root").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("command", ["submit", "study"])
@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_that_leads_out_of_root_is_refused_before_anything_is_written(
        command: str, name: str, workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(workspace)
    assert exit_status(command, "--sweep", SWEEP, "--root", "root", "--name", name, *ONE_RUN, "cluster=debug") == 2
    error = one_line_error(capsys)
    assert f"argument --name: {name!r} must be one folder's name" in error and "--name my_sweep" in error
    assert snapshot(workspace) == before


def test_adaptive_study_refuses_a_bad_name(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(workspace)
    assert exit_status("study", "--adaptive", "--sweep", SWEEP, "--root", "root", "--name", "..",
                       "--budget", "5e8", "--budget", "7e8", "--budget", "9e8", "cluster=debug") == 2
    assert "argument --name: '..'" in one_line_error(capsys)
    assert snapshot(workspace) == before


@pytest.mark.parametrize("dry_run", [(), ("--dry-run",)])
def test_a_study_name_that_leads_out_of_root_is_refused(dry_run: tuple[str, ...], workspace: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(workspace)
    assert exit_status("submit", "--sweep", SWEEP, "--root", "root", *dry_run, *ONE_RUN, "cluster=debug",
                       "name=..") == 2
    error = one_line_error(capsys)
    assert "name='..': must be one folder's name" in error and "set name=my_study" in error
    assert snapshot(workspace) == before


@pytest.mark.parametrize("command", ["submit", "study"])
@pytest.mark.parametrize("name_flag", [(), ("--name", SWEEP)])
def test_a_folder_of_other_files_is_not_adopted(command: str, name_flag: tuple[str, ...], workspace: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (workspace / "root" / SWEEP).mkdir()
    (workspace / "root" / SWEEP / "notes.txt").write_text("my notes\n")
    before = snapshot(workspace)
    assert exit_status(command, "--sweep", SWEEP, "--root", "root", *name_flag, *ONE_RUN, "cluster=debug") == 2
    error = one_line_error(capsys)
    assert f"root/{SWEEP} is a folder of other files, not a sweep (no sweep.json)" in error
    assert "--name" in error and "--root" in error
    assert snapshot(workspace) == before


def test_a_file_where_the_sweep_belongs_is_refused(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workspace / "root" / SWEEP).write_text("a file\n")
    before = snapshot(workspace)
    assert exit_status("submit", "--sweep", SWEEP, "--root", "root", *ONE_RUN, "cluster=debug") == 2
    assert f"root/{SWEEP} is a file, where the sweep's folder belongs" in one_line_error(capsys)
    assert snapshot(workspace) == before


@pytest.mark.parametrize("begun", ["", ".submit.lock", "study.yaml", "ladders.jsonl"])
def test_an_empty_folder_or_a_sweep_whose_creation_began_is_used(begun: str, tmp_path: Path) -> None:
    """An interrupted first submit (or ``study --adaptive``, which writes ladders.jsonl first) is continued."""
    folder = tmp_path / SWEEP
    folder.mkdir()
    if begun:
        (folder / begun).write_text("")
    composed = load_study(SWEEP, list(ONE_RUN[2:]), None)
    assert choose_sweep_path(tmp_path, SWEEP, composed.resolved_yaml, False, False) == folder


@pytest.mark.parametrize("command, adaptive, advice", [
    ("submit", (), f"pass --new (a new sweep {SWEEP}-N beside it) or --name NAME"),
    ("study", (), "pass --name NAME for a new sweep beside it"),
    ("study", ("--adaptive", "--budget", "5e8", "--budget", "7e8", "--budget", "9e8"),
     "pass --name NAME for a new sweep beside it"),
])
def test_a_changed_study_is_refused_with_advice_the_command_takes(
        command: str, adaptive: tuple[str, ...], advice: str, workspace: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    create_sweep(workspace / "root", "ladder.shapes=[[1,32,2]]")
    before = snapshot(workspace)
    assert exit_status(command, "--sweep", SWEEP, "--root", "root", *adaptive, "ladder.shapes=[[1,32,2]]",
                       "train.lr_base=0.002", "cluster=debug") == 2
    error = one_line_error(capsys)
    assert "the study changed since this sweep was created" in error and advice in error
    assert command == "submit" or "--new" not in error
    assert snapshot(workspace) == before


def test_a_changed_study_with_a_name_points_at_another_name(workspace: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    create_sweep(workspace / "root", "ladder.shapes=[[1,32,2]]")
    assert exit_status("study", "--sweep", SWEEP, "--root", "root", "--name", SWEEP, "ladder.shapes=[[1,32,2]]",
                       "train.lr_base=0.002", "cluster=debug") == 2
    error = one_line_error(capsys)
    assert "pass another --name for a new sweep beside it" in error and "--new" not in error


def test_unreadable_study_yaml_advice_names_the_commands_flags(workspace: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    sweep = create_sweep(workspace / "root", "ladder.shapes=[[1,32,2]]")
    sweep.study_yaml.write_text("train: [unclosed\n")
    before = snapshot(workspace)
    assert exit_status("study", "--sweep", SWEEP, "--root", "root", *ONE_RUN, "cluster=debug") == 2
    error = one_line_error(capsys)
    assert "cannot read the study this sweep was created with" in error and "--new" not in error
    assert exit_status("submit", "--sweep", SWEEP, "--root", "root", *ONE_RUN, "cluster=debug") == 2
    assert "--new" in one_line_error(capsys)
    assert snapshot(workspace) == before


def test_submit_summary_lists_every_job_count_and_what_was_left_alone(capsys: pytest.CaptureFixture[str]) -> None:
    submissions = [JobEvent.now("submitted", job_id=f"debug-{index}", executor="debug") for index in range(7)]
    submitted = [f"run-{index}" for index in range(7)]
    states = {**{run_id: "completed" for run_id in submitted[:6]}, submitted[6]: "failed",
              "run-done": "completed", "run-waiting": "waiting"}
    report_submission(submissions, submitted, 9, states, "debug", retry_failed=False)
    first, advice = capsys.readouterr().err.strip().splitlines()
    assert first == ("submitted 7 of 9 runs to debug (jobs debug-0, debug-1, debug-2, debug-3, debug-4 and 2 more); "
                     "ended: 6 completed, 1 failed; left alone: 1 completed, 1 waiting")
    assert "--retry-failed" in advice

    array = [JobEvent.now("submitted", job_id=f"1234_{index}", executor="slurm") for index in range(3)]
    report_submission(array, submitted[:3], 3, dict.fromkeys(submitted[:3], "pending"), "slurm", retry_failed=False)
    assert capsys.readouterr().err.strip() == "submitted 3 of 3 runs to slurm (jobs 1234)"


def test_submitting_twice_says_what_happened_each_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The first submit (into an empty folder) trains its run: it is not also "left alone"; the second,
    which continues the sweep, submits nothing and says the run was left alone."""
    (tmp_path / SWEEP).mkdir()
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, *ONE_RUN, "cluster=debug") == 0
    summary = [line for line in capsys.readouterr().err.splitlines() if line.startswith("submitted")]
    assert len(summary) == 1 and summary[0].startswith("submitted 1 of 1 runs to debug (jobs debug-")
    assert summary[0].endswith("; ended: 1 completed") and "left alone" not in summary[0]
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, *ONE_RUN, "cluster=debug", "--retry-failed") == 0
    assert capsys.readouterr().err.strip() == "submitted 0 of 1 runs to debug; left alone: 1 completed"


def test_an_execution_setting_changed_is_still_the_same_sweep(tmp_path: Path, capsys) -> None:
    """train.parallelism says how a run is spread, not what it computes: resubmitting with it
    changed continues the sweep, and the run.json already there is accepted as the planned spec."""
    assert exit_status("submit", "--sweep", SWEEP, "--root", tmp_path, *ONE_RUN, "cluster=debug") == 0
    (run_json,) = (tmp_path / SWEEP / "runs").glob("*/run.json")
    before = run_json.read_bytes()
    capsys.readouterr()
    assert exit_status("submit", "--sweep", SWEEP, "--root", tmp_path, *ONE_RUN, "cluster=debug",
                       "train.parallelism=fsdp", "--retry-failed") == 0
    assert "submitted 0 of 1" in capsys.readouterr().err
    assert run_json.read_bytes() == before
