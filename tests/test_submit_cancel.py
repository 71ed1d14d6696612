"""`isoflop cancel` stops a live local job; `submit --retry-failed` then completes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SWEEP, events, isoflop, metrics, status_rows, wait_until

# One run of 5770 steps: long enough (seconds, even on a fast machine) to be cancelled mid-run.
CANCELLABLE_RUN = ("--budget", "1e11", "ladder.shapes=[[1,32,2]]")


@pytest.mark.slow
def test_cancel_a_live_local_run_and_retry_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, *CANCELLABLE_RUN, "cluster=local") == 0
    sweep = tmp_path / SWEEP
    (run_dir,) = (sweep / "runs").iterdir()
    wait_until(lambda: any(m.get("step", 0) >= 5 for m in metrics(run_dir)), 120, "training to start")
    capsys.readouterr()
    assert isoflop("cancel", sweep) == 0
    assert "cancelled 1 run(s)" in capsys.readouterr().err
    wait_until(lambda: status_rows(sweep, capsys)[0]["state"] == "cancelled", 60, "the run to show cancelled")
    assert not (run_dir / "result.json").exists()
    # the job's own record of the interruption is not a failure: submitted, started, cancelled
    assert [event["event"] for event in events(run_dir)] == ["submitted", "started", "cancelled"]
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, *CANCELLABLE_RUN, "cluster=local",
                   "--retry-failed") == 0
    assert isoflop("wait", sweep, "--interval", "0.5", "--timeout", "240") == 0
    assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"


def test_cancel_an_unknown_run_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, "cluster=debug", "--dry-run") == 0
    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, "cluster=debug") == 0
    capsys.readouterr()
    assert isoflop("cancel", tmp_path / SWEEP, "--run", "nosuch") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such run" in err[0]
