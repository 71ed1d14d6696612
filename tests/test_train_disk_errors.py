"""A full disk or a read-only run folder during ``isoflop train``: one stderr line that names
the folder and the fix, exit status 2, no traceback; every file that was there before is
unchanged (the last good checkpoint is never replaced by one that could not be written),
and the run resumes from that checkpoint once there is room.

The full disk is real where this process may mount a small tmpfs in a private mount
namespace (``unshare -m``, root), and injected as ``OSError(ENOSPC)`` at the file
boundary everywhere; the read-only folder is real (a read-only bind mount as root, file
modes otherwise).
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPOSITORY
from isoflop import checkpoint, checkpoint_format
from isoflop.cli import main
from isoflop.run_lock import LOCK_FILE
from isoflop.study_config import DataConfig
from isoflop.train import run
from train_support import tiny_spec, write_corpus, write_run


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    """(spec, folder) of a run trained straight through, with checkpoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp("reference")
    corpus = write_corpus(root / "corpus.txt")
    spec = tiny_spec(steps=6, data=DataConfig(source="files", paths=[str(corpus)], validation_fraction=0.1),
                     checkpoint_every_steps=2)
    run(spec, root / "run")
    return spec, root / "run"


def run_with_good_checkpoint(spec: object, reference_dir: Path, folder: Path) -> Path:
    """A run folder holding run.json and the reference's checkpoint of step 2 (an earlier attempt)."""
    run_dir = write_run(folder, spec)
    shutil.copytree(reference_dir / "checkpoints" / "step_000002", run_dir / "checkpoints" / "step_000002")
    return run_dir


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != LOCK_FILE}


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("isoflop train: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def assert_nothing_written_lost(before: dict[str, bytes], run_dir: Path) -> None:
    """Files there before are byte-identical (metrics.jsonl, append-only, may only have grown)."""
    after = snapshot(run_dir)
    for name, content in before.items():
        if name == "metrics.jsonl":
            assert after[name].startswith(content)
        else:
            assert after.get(name) == content, name
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["step_000002"]  # no partial one


def test_full_disk_while_checkpointing_keeps_the_last_good_one(reference, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    spec, reference_dir = reference
    run_dir = run_with_good_checkpoint(spec, reference_dir, tmp_path / "run")
    before = snapshot(run_dir)
    write = checkpoint_format._HashingWriter.write
    written = {"bytes": 0}

    def write_until_full(self, data):  # the disk fills up 4 kB into the next checkpoint
        written["bytes"] += len(memoryview(data).cast("B"))
        if written["bytes"] > 4096:
            error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._errors.append(error)
            raise error
        return write(self, data)

    monkeypatch.setattr(checkpoint_format._HashingWriter, "write", write_until_full)
    assert main(["train", str(run_dir)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot write the run folder {run_dir}" in line and "No space left on device" in line
    assert "free space" in line
    assert_nothing_written_lost(before, run_dir)
    assert checkpoint.verify(run_dir / "checkpoints" / "step_000002", spec.run_id) is None

    monkeypatch.setattr(checkpoint_format._HashingWriter, "write", write)  # room again: resumes at step 2
    resumed = run(spec, run_dir)
    assert resumed.final_train_loss == run(spec, reference_dir).final_train_loss


def can_mount_privately() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, check=False)
    return probe.returncode == 0


def train_in_private_mount(mount_commands: str, run_dir: Path, copy_back: Path | None = None
                           ) -> subprocess.CompletedProcess:
    """``isoflop train run_dir`` in a new mount namespace after ``mount_commands``; the run
    folder is copied to ``copy_back`` before the namespace (and a tmpfs in it) goes away."""
    train = shlex.join([sys.executable, "-m", "isoflop.cli", "train", str(run_dir)])
    script = f"set -e; {mount_commands}; status=0; {train} || status=$?"
    if copy_back is not None:
        script += f"; cp -a {shlex.quote(str(run_dir))} {shlex.quote(str(copy_back))}"
    script += "; exit $status"
    return subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPOSITORY, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPOSITORY)}, timeout=300)


@pytest.mark.skipif(not can_mount_privately(), reason="needs root and unshare to mount a private tmpfs")
def test_a_real_full_disk_while_checkpointing(reference, tmp_path: Path) -> None:
    spec, reference_dir = reference
    prepared = run_with_good_checkpoint(spec, reference_dir, tmp_path / "prepared")
    before = snapshot(prepared)
    checkpoint_bytes = sum(path.stat().st_size for path in (prepared / "checkpoints").rglob("*") if path.is_file())
    # room for what is there, the lock and the metrics, but not for a second checkpoint
    size_kb = (sum(len(content) for content in before.values()) + checkpoint_bytes // 2) // 1024 + 64
    disk, run_dir = tmp_path / "disk", tmp_path / "disk" / "run"
    disk.mkdir()
    mount = (f"mount -t tmpfs -o size={size_kb}k tmpfs {shlex.quote(str(disk))}; "
             f"cp -a {shlex.quote(str(prepared))} {shlex.quote(str(run_dir))}")
    completed = train_in_private_mount(mount, run_dir, copy_back=tmp_path / "after")
    assert completed.returncode == 2, completed.stderr[-3000:]
    line = one_error_line(completed.stderr)
    assert "No space left on device" in line and str(run_dir) in line
    assert_nothing_written_lost(before, tmp_path / "after")


def test_a_read_only_run_folder_is_one_line_and_untouched(reference, tmp_path: Path) -> None:
    spec, reference_dir = reference
    run_dir = run_with_good_checkpoint(spec, reference_dir, tmp_path / "run")
    before = snapshot(run_dir)
    if os.geteuid() != 0:  # file modes bind everyone but root
        for path in [run_dir, *run_dir.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
        completed = subprocess.run([sys.executable, "-m", "isoflop.cli", "train", str(run_dir)], cwd=REPOSITORY,
                                   capture_output=True, text=True, timeout=300,
                                   env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    elif can_mount_privately():
        folder = shlex.quote(str(run_dir))
        completed = train_in_private_mount(f"mount --bind {folder} {folder}; mount -o remount,bind,ro {folder}",
                                           run_dir)
    else:
        pytest.skip("root without mount privileges cannot make a folder read-only to itself")
    assert completed.returncode == 2, completed.stderr[-3000:]
    line = one_error_line(completed.stderr)
    assert str(run_dir) in line and ("Read-only file system" in line or "Permission denied" in line)
    assert snapshot(run_dir) == before
