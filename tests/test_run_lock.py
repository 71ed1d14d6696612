"""One live writer per run folder: a second ``isoflop train`` on a folder that a live
trainer holds names the holder and exits 2 without touching anything; the lock of a
trainer killed with SIGKILL is taken over by the next one, which resumes the run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPOSITORY, metrics, wait_until
from isoflop.errors import UserError
from isoflop.run_lock import LOCK_FILE, RunLock
from isoflop.study_config import DataConfig
from train_support import tiny_spec, write_corpus, write_run

# `isoflop train RUN_DIR` whose every batch takes 0.1 s longer: a trainer that stays alive
# for seconds without doing more work.
SLOW_TRAINER = """
import sys, time
from isoflop.cli import main
from isoflop.data import PackedCorpus

next_batch = PackedCorpus.next_batch
def slow_next_batch(self, *args, **kwargs):
    time.sleep(0.1)
    return next_batch(self, *args, **kwargs)
PackedCorpus.next_batch = slow_next_batch
sys.exit(main(["train", sys.argv[1]]))
"""
ENVIRONMENT = {**os.environ, "PYTHONPATH": str(REPOSITORY)}


def train_process(run_dir: Path, slow: bool) -> subprocess.Popen:
    code = SLOW_TRAINER if slow else "import sys; from isoflop.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [run_dir] if slow else ["train", run_dir]
    return subprocess.Popen([sys.executable, "-c", code, *map(str, argv)], cwd=REPOSITORY, env=ENVIRONMENT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


@pytest.mark.slow
def test_a_second_trainer_is_refused_and_a_killed_ones_lock_is_taken_over(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    spec = tiny_spec(steps=60, data=DataConfig(source="files", paths=[str(corpus)], validation_fraction=0.1),
                     checkpoint_every_steps=5)
    run_dir = write_run(tmp_path / "run", spec)

    first = train_process(run_dir, slow=True)
    try:
        wait_until(lambda: any(record.get("step", 0) >= 6 for record in metrics(run_dir)), 120,
                   "the first trainer to pass its first checkpoint")
        holder = json.loads((run_dir / LOCK_FILE).read_text())
        assert (holder["pid"], holder["host"]) == (first.pid, socket.gethostname())

        first.send_signal(signal.SIGSTOP)  # nothing changes in the folder while the second one runs
        before = snapshot(run_dir)
        second = subprocess.run([sys.executable, "-m", "isoflop.cli", "train", str(run_dir)], cwd=REPOSITORY,
                                env=ENVIRONMENT, capture_output=True, text=True, timeout=120)
        assert snapshot(run_dir) == before
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert f"is being trained by pid {first.pid} on host {socket.gethostname()}" in lines[0]
        assert "isoflop cancel" in lines[0]
    finally:
        first.send_signal(signal.SIGKILL)  # a dead holder: its flock goes with it
        first.wait(timeout=60)

    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == first.pid  # the stale record stays...
    third = train_process(run_dir, slow=False)
    _, stderr = third.communicate(timeout=300)
    assert third.returncode == 0, stderr[-3000:]
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == third.pid  # ...until it is taken over
    resumed_at = [record["step"] for record in metrics(run_dir) if record.get("kind") == "resume"]
    assert len(resumed_at) == 1 and resumed_at[0] >= 5
    assert json.loads((run_dir / "result.json").read_text())["steps"] == spec.steps


def test_the_lock_is_exclusive_between_holders_and_free_after_release(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        with pytest.raises(UserError, match=f"is being trained by pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # released: taken again
        pass
