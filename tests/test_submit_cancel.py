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


def test_cancel_waits_for_a_submit_in_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A submit holds the sweep's submission lock while it submits: cancel waits for it to end
    (then cancels what it submitted) rather than cancel nothing while jobs are being submitted;
    after its wait it says so in one line, exit 2."""
    import threading

    from isoflop.commands import cancel
    from isoflop.sweep_dir import SweepDir

    assert isoflop("submit", "--sweep", SWEEP, "--root", tmp_path, "--budget", "5e8", "ladder.shapes=[[1,32,2]]",
                   "cluster=debug") == 0
    sweep = SweepDir(tmp_path / SWEEP)
    holding, release, order = threading.Event(), threading.Event(), []

    def submit_in_progress() -> None:
        with sweep.submission_lock():
            holding.set()
            release.wait(30)
            order.append("submit ended")

    holder = threading.Thread(target=submit_in_progress)
    holder.start()
    holding.wait(30)
    threading.Timer(0.5, release.set).start()
    assert isoflop("cancel", sweep.path) == 0
    order.append("cancel ended")
    holder.join()
    assert order == ["submit ended", "cancel ended"]

    monkeypatch.setattr(cancel, "SUBMIT_WAIT_S", 0.3)
    holding.clear()
    release.clear()
    holder = threading.Thread(target=submit_in_progress)
    holder.start()
    holding.wait(30)
    capsys.readouterr()
    try:
        assert isoflop("cancel", sweep.path) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and "a submit of" in error[0] and "is still in progress" in error[0]
    finally:
        release.set()
        holder.join()
