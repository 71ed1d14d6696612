"""Bad input to ``isoflop analyze`` (and the analysis options of ``isoflop study``): one line, exit 2, nothing changed.

Every case runs the real command line (``isoflop.cli.main``) in a folder prepared with a CSV, a fake sweep
and an earlier report, and asserts: exit status 2, exactly one line on stderr naming the problem, no
traceback, no warning printed, and every file that existed before byte-identical afterwards (with no
file added: a half-written report or a leftover temporary folder would show).

Permission cases use the file mode bits. A root process ignores them, so under root ``os.access`` is
made to honour them the way it does for every other user (the analysis asks ``os.access`` before it
reads or writes).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import stat
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import REPOSITORY
from isoflop.cli import main
from test_analysis_sweep import build_sweep

GOOD_CSV = "budget,params,loss\n" + "".join(
    f"{budget:g},{n:g},{3.0 - 0.1 * np.log10(budget / 1e19) + 0.3 * (np.log10(n) - center) ** 2}\n"
    for budget, center in ((1e19, 8.0), (1e20, 8.5), (1e21, 9.0)) for n in np.logspace(center - 0.6, center + 0.6, 6))


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (contents) and folder (None) under ``root``."""
    entries: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        entries[str(path.relative_to(root))] = None if path.is_dir() else path.read_bytes()
    return entries


@dataclass
class Case:
    """One bad input: how to prepare it, the arguments, and a piece of the expected message."""

    argv: list[str]
    message: str
    prepare: Callable[[Path], None] = lambda root: None
    read_only: list[str] = field(default_factory=list)  # paths (relative to the work folder) to chmod a-w
    unreadable: list[str] = field(default_factory=list)  # paths to chmod 000
    cwd: str = "."


def _write_huge_losses(root: Path) -> None:
    (root / "huge.csv").write_text("budget,params,loss\n" + "".join(f"1e19,{n:g},{1e5 + n / 1e8}\n" for n in (1e8, 2e8, 4e8)))


def _write_extreme_sizes(root: Path) -> None:
    (root / "extreme.csv").write_text("budget,params,loss\n1e19,1e-300,3.0\n1e19,1e300,3.1\n1e19,1e8,2.9\n")


def _write_foreign_out(root: Path) -> None:
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("my notes\n")


def _sweep_with_huge_perplexity(root: Path) -> None:
    """Every run's losses become 1e6 nats, whose perplexity overflows a float."""
    for result in (root / "sweep" / "runs").glob("*/result.json"):
        try:
            content = json.loads(result.read_text())
        except ValueError:
            continue  # the sweep's deliberately corrupt run
        for scores in content.get("eval", {}).values():
            scores["loss"] = 1e6
            scores.pop("perplexity", None)
        result.write_text(json.dumps(content))


CASES: dict[str, Case] = {
    "csv input inside the default --out": Case(["analyze", "--csv", "report/runs.csv"], "holds the input", cwd="sweep"),
    "--out is the sweep itself": Case(["analyze", "sweep", "--out", "sweep"], "holds the input"),
    "--out is a file": Case(["analyze", "--csv", "good.csv", "--out", "good.csv"], "holds the input"),
    "--out is another file": Case(["analyze", "--csv", "good.csv", "--out", "sweep/runs.txt"], "is not a directory",
                                  prepare=lambda root: (root / "sweep" / "runs.txt").write_text("x\n")),
    "--out holds someone's files": Case(["analyze", "--csv", "good.csv", "--out", "mine"], "notes.txt",
                                        prepare=_write_foreign_out),
    "--seed=-1": Case(["analyze", "--csv", "good.csv", "--out", "new", "--seed=-1"], "--seed -1 must be 0 or more"),
    "--bootstrap -1": Case(["analyze", "--csv", "good.csv", "--out", "new", "--bootstrap", "-1"], "--bootstrap -1"),
    "--bootstrap too many": Case(["analyze", "--csv", "good.csv", "--out", "new", "--bootstrap", "1000000000"],
                                 "more than 100000"),
    "--ci 90": Case(["analyze", "--csv", "good.csv", "--out", "new", "--ci", "90"], "invalid choice"),
    "--predict inf": Case(["analyze", "--csv", "good.csv", "--out", "new", "--predict", "inf"], "positive number"),
    "--predict nan": Case(["analyze", "--csv", "good.csv", "--out", "new", "--predict", "nan"], "positive number"),
    "--predict above the planner's": Case(["analyze", "--csv", "good.csv", "--out", "new", "--predict", "1e31"],
                                          "is above the largest budget planned, 1e+30"),
    "--bootstrap 1": Case(["analyze", "--csv", "good.csv", "--out", "new", "--bootstrap", "1"],
                          "must be 0 (no intervals) or at least 2"),
    "--holdout-budget not a budget": Case(["analyze", "--csv", "good.csv", "--out", "new", "--holdout-budget", "5e19"],
                                          "is not a budget of the data (1e19, 1e20, 1e21)"),
    "--holdout-budget leaves 2 budgets": Case(["analyze", "--csv", "good.csv", "--out", "new", "--holdout-budget",
                                               "1e21"], "leaves 2 other budget(s)"),
    "--holdout-budget with --bootstrap 0": Case(["analyze", "--csv", "good.csv", "--out", "new", "--bootstrap", "0",
                                                 "--holdout-budget", "1e21"], "drop --bootstrap 0"),
    "--holdout-budget abc": Case(["analyze", "--csv", "good.csv", "--out", "new", "--holdout-budget", "abc"],
                                 "--holdout-budget 'abc' is not a number"),
    "--group-by unknown": Case(["analyze", "--csv", "good.csv", "--out", "new", "--group-by", "dataset"], "no such column"),
    "--loss-unit on a sweep": Case(["analyze", "sweep", "--out", "new", "--loss-unit", "nats"], "--csv input only"),
    "--csv is a directory": Case(["analyze", "--csv", "sweep", "--out", "new"], "is not a file"),
    "--csv unreadable": Case(["analyze", "--csv", "good.csv", "--out", "new"], "cannot be read", unreadable=["good.csv"]),
    "unwritable existing --out": Case(["analyze", "--csv", "good.csv", "--out", "sweep/report"], "not writable",
                                      read_only=["sweep/report"]),
    "read-only sweep with a report": Case(["analyze", "sweep"], "cannot write in", read_only=["sweep"]),
    "unreadable runs folder": Case(["analyze", "sweep", "--out", "new"], "cannot list the runs",
                                   unreadable=["sweep/runs"]),
    "sizes from 1e-300 to 1e300": Case(["analyze", "--csv", "extreme.csv", "--out", "new"], "at least 1 and at most 1e40",
                                       prepare=_write_extreme_sizes),
    "losses of 1e300": Case(["analyze", "--csv", "bigloss.csv", "--out", "new"], "between -1e15 and 1e15",
                            prepare=lambda root: (root / "bigloss.csv").write_text(
                                "budget,params,loss\n1e19,1e8,1e300\n1e19,2e8,1e299\n1e19,4e8,3e300\n")),
    "--out below a file": Case(["analyze", "--csv", "good.csv", "--out", "good.csv/report"], "cannot write in"),
    "perplexity of huge losses (CSV)": Case(["analyze", "--csv", "huge.csv", "--out", "new", "--metric", "perplexity",
                                             "--loss-unit", "nats"], "perplexity overflows", prepare=_write_huge_losses),
    "perplexity of huge losses (sweep)": Case(["analyze", "sweep", "--out", "new", "--metric", "perplexity"],
                                              "no completed runs", prepare=_sweep_with_huge_perplexity),
    "study --bootstrap -1": Case(["study", "--sweep", "smoke", "--root", "studies", "--bootstrap", "-1"],
                                 "argument --bootstrap: '-1'"),
    "study --bootstrap too many": Case(["study", "--sweep", "smoke", "--root", "studies", "--bootstrap", "10000000"],
                                       "--bootstrap 10000000 is more than"),
}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """good.csv and its report, and a fake sweep that already has a report (from earlier analyses)."""
    root = tmp_path_factory.mktemp("template")
    (root / "good.csv").write_text(GOOD_CSV)
    sweep = build_sweep(root / "sweep")
    assert main(["analyze", str(sweep), "--bootstrap", "0"]) == 0
    assert main(["analyze", "--csv", str(root / "good.csv"), "--out", str(root / "csv_report"), "--bootstrap", "0"]) == 0
    return root


@pytest.fixture
def workspace(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the template for one case."""
    shutil.copytree(template, tmp_path / "work")
    return tmp_path / "work"


def honour_mode_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under root, make os.access answer from the owner's mode bits, as the kernel does for other users."""
    if os.geteuid() != 0:
        return
    real_access = os.access

    def access(path, mode, *args, **kwargs) -> bool:
        try:
            bits = os.stat(path).st_mode
        except OSError:
            return real_access(path, mode, *args, **kwargs)
        needed = [(os.R_OK, stat.S_IRUSR), (os.W_OK, stat.S_IWUSR), (os.X_OK, stat.S_IXUSR)]
        return all(bits & bit for flag, bit in needed if mode & flag)

    monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_changes_nothing(name: str, workspace: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    case.prepare(workspace)
    honour_mode_bits(monkeypatch)
    protected = [(workspace / path, 0o555) for path in case.read_only] + [(workspace / path, 0o000) for path in case.unreadable]
    modes = {path: path.stat().st_mode for path, _ in protected}
    before = snapshot(workspace)
    monkeypatch.chdir(workspace / case.cwd)
    capsys.readouterr()
    try:
        for path, mode in protected:
            path.chmod(mode)
        with warnings.catch_warnings(record=True) as caught, np.errstate(all="warn"):
            warnings.simplefilter("always")
            try:
                status = main(case.argv)
            except SystemExit as exit_:  # argparse's usage errors exit
                status = exit_.code
    finally:
        for path, _ in protected:
            path.chmod(modes[path])
    err = capsys.readouterr().err
    assert status == 2, (name, err)
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert case.message in err and "Traceback" not in err, err
    assert not [str(warning.message) for warning in caught], name
    assert snapshot(workspace) == before, f"{name}: files changed"


def test_a_full_disk_is_one_line_and_keeps_the_previous_report(workspace: Path) -> None:
    """A file-size limit makes every large write fail with an OSError (EFBIG), as a full disk does (ENOSPC)."""
    before = snapshot(workspace)

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (32_000, 32_000))

    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run([sys.executable, "-m", "isoflop.cli", "analyze", "--csv", "good.csv", "--out", "csv_report",
                                "--bootstrap", "0"],
                               cwd=workspace, env=environment, capture_output=True, text=True, preexec_fn=limit_file_size,
                               check=False)
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert completed.stderr.count("\n") == 1 and "cannot write the report" in completed.stderr, completed.stderr
    assert "free disk space" in completed.stderr
    assert snapshot(workspace) == before
