"""Preemption signals wait for the step boundary, then reach the handler installed
before (submitit's), which can checkpoint the active run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from conftest import REPOSITORY
from isoflop.preemption import Preemption, checkpoint_active_run


@pytest.fixture
def recorded_usr2() -> list[int]:
    """Signals that reached a SIGUSR2 handler standing in for submitit's."""
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda number, frame: received.append(number))
    yield received
    signal.signal(signal.SIGUSR2, previous)


def test_a_signal_waits_for_the_step_boundary(recorded_usr2: list[int]) -> None:
    handler = signal.getsignal(signal.SIGUSR2)
    with Preemption() as preemption:
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert recorded_usr2 == []  # mid-step: held
        preemption.at_step_boundary()
        assert recorded_usr2 == [signal.SIGUSR2, signal.SIGUSR2]
        preemption.at_step_boundary()
        assert len(recorded_usr2) == 2  # delivered once
    assert signal.getsignal(signal.SIGUSR2) is handler


def test_release_delivers_what_is_held_and_stops_holding(recorded_usr2: list[int]) -> None:
    with Preemption() as preemption:
        os.kill(os.getpid(), signal.SIGUSR2)
        preemption.release()
        assert recorded_usr2 == [signal.SIGUSR2]
        os.kill(os.getpid(), signal.SIGUSR2)  # evaluation: handled at once
        assert recorded_usr2 == [signal.SIGUSR2] * 2


def test_a_signal_held_when_the_run_fails_is_dropped(recorded_usr2: list[int]) -> None:
    with pytest.raises(RuntimeError), Preemption():
        os.kill(os.getpid(), signal.SIGUSR2)
        raise RuntimeError("the step failed")
    assert recorded_usr2 == []


def test_checkpoint_active_run_saves_only_while_a_run_is_registered() -> None:
    saved: list[bool] = []
    assert checkpoint_active_run() is False
    with Preemption() as preemption:
        assert checkpoint_active_run() is False  # set-up not finished
        preemption.save_with(lambda: saved.append(True))
        assert checkpoint_active_run() is True and saved == [True]
    assert checkpoint_active_run() is False


@pytest.mark.parametrize("disposition, exit_status", [("SIG_DFL", -signal.SIGUSR1), ("SIG_IGN", 0)])
def test_default_and_ignore_dispositions_keep_their_meaning(disposition: str, exit_status: int) -> None:
    code = ("import os, signal, sys\n"
            "from isoflop.preemption import Preemption\n"
            f"signal.signal(signal.SIGUSR1, signal.{disposition})\n"
            "with Preemption() as preemption:\n"
            "    os.kill(os.getpid(), signal.SIGUSR1)\n"
            "    print('step finished', flush=True)\n"
            "    preemption.at_step_boundary()\n")
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPOSITORY)}, timeout=60)
    assert completed.returncode == exit_status, completed.stderr
    assert completed.stdout == "step finished\n"  # the default action waited for the boundary
