"""Bad command lines: exactly one stderr line naming the problem and the fix, exit 2, no
traceback, and every file already there byte-identical afterwards.

Covers the benchmarks (`isoflop bench kernels|layers|checkpoint`), `isoflop gpu-acceptance`,
an unknown flag on every command and bad flag values (intervals, counts).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from isoflop.cli import COMMANDS, main

CUDA_DEVICES = torch.cuda.device_count() if torch.cuda.is_available() else 0
needs_no_cuda = pytest.mark.skipif(CUDA_DEVICES > 0, reason="checks the message on a machine without CUDA")
REPOSITORY = Path(__file__).resolve().parents[1]

# (argv with {tmp} for the test's folder, text the one line must contain)
BENCH_KERNELS = [
    ("--nosuch", "unrecognized arguments: --nosuch"),
    ("--device tpu", "argument --device: 'tpu' is not a device"),
    ("--device cuda:x", "argument --device: 'cuda:x'"),
    ("--tokens -5", "argument --tokens: '-5' must be a positive integer"),
    ("--tokens many", "argument --tokens: 'many' is not an integer"),
    ("--dim 0", "argument --dim: '0' must be a positive integer"),
    ("--rows -1", "argument --rows"),
    ("--heads 0", "argument --heads"),
    ("--top-k 0", "argument --top-k"),
    ("--moe-tokens -3", "argument --moe-tokens"),
    ("--experts 8 0", "argument --experts: '0'"),
    ("--experts", "argument --experts: expected at least one argument"),
    ("--dtype float64", "argument --dtype: invalid choice: 'float64'"),
    ("--only everything", "argument --only: invalid choice"),
    ("--repeats 0", "argument --repeats: '0' must be a positive integer"),
    ("--repeats 1.5", "argument --repeats: '1.5' is not an integer"),
    ("--bandwidth-gbs -1", "argument --bandwidth-gbs: '-1' must be a positive number"),
    ("--bandwidth-gbs 0", "argument --bandwidth-gbs"),
    ("--bandwidth-gbs nan", "argument --bandwidth-gbs: 'nan'"),
    ("--bandwidth-gbs inf", "argument --bandwidth-gbs: 'inf'"),
    ("--json /proc/bench.json", "argument --json: cannot write /proc/bench.json"),
    ("--json {tmp}", "it is a directory"),
    ("--json {tmp}/missing/bench.json", "no such directory"),
    ("--json {tmp}/a-file/bench.json", "no such directory"),
    ("--json {tmp}/keep.json --tokens -5", "argument --tokens"),
]
BENCH_LAYERS = [
    ("--nosuch", "unrecognized arguments: --nosuch"),
    ("--device tpu", "argument --device: 'tpu'"),
    ("--d-model 0", "argument --d-model"),
    ("--n-experts -4", "argument --n-experts"),
    ("--heads -1", "argument --heads"),
    ("--top-k 0", "argument --top-k"),
    ("--d-key 0", "argument --d-key"),
    ("--tokens -5", "argument --tokens"),
    ("--repeats 0", "argument --repeats"),
    ("--large-tokens 0", "argument --large-tokens"),
    ("--json {tmp}", "argument --json: cannot write"),
    ("--json {tmp}/keep.json --repeats 0", "argument --repeats"),
    ("--n-experts 1000 --skip-large --json {tmp}/keep.json", "perfect-square"),
    ("--n-experts 256 --top-k 64 --skip-large", "top_k=64"),
    ("--d-key 7 --skip-large", "d_key=7"),
]
BENCH_CHECKPOINT = [
    ("--gb 0", "argument --gb: '0' must be a positive number"),
    ("--gb nan", "argument --gb: 'nan'"),
    ("--gb 1e-9", "argument --gb: '1e-9' GB is below the smallest state this benchmark builds (0.015 GB"),
    ("--gb 0.01", "pass --gb 0.015 or more"),
    ("--gb 1e6", "--gb 1e+06: the measurement needs about 2x the state in memory"),
    ("--gb 1e6 --json {tmp}/keep.json", "GB is available; pass --gb "),
    ("--dir {tmp}/missing", "--dir {tmp}/missing: no such folder"),
    ("--json {tmp}", "argument --json: cannot write"),
]
OTHER = [
    ("--nosuch", "isoflop: error: unrecognized arguments: --nosuch"),
    ("nosuch", "invalid choice: 'nosuch'"),
    ("bench", "name what to benchmark: checkpoint, kernels, layers"),
    ("bench gpus", "argument target: invalid choice: 'gpus'"),
    ("wait {tmp} --interval -1", "argument --interval: '-1' must be a positive number"),
    ("wait {tmp} --interval nan", "argument --interval: 'nan'"),
    ("wait {tmp} --interval inf", "argument --interval: 'inf' is not a finite number"),
    ("wait {tmp} --interval 1e10", "argument --interval: '1e10' is above the largest accepted, 1e+07"),
    ("wait {tmp} --timeout 1e300", "argument --timeout: '1e300' is above the largest accepted"),
    ("wait {tmp} --timeout -5", "argument --timeout"),
    ("status {tmp} --watch --interval 0", "argument --interval: '0'"),
    ("study --root {tmp} --interval -2", "argument --interval"),
    ("study --root {tmp} --bootstrap -1", "argument --bootstrap: '-1' must be zero or a positive integer"),
    ("gpu-acceptance", "the following arguments are required: --out"),
    ("gpu-acceptance --out {tmp}/new --time-limit -1", "argument --time-limit"),
    ("gpu-acceptance --out {tmp}/new --time-limit nan", "argument --time-limit"),
    ("gpu-acceptance --out {tmp}/non-empty --dry-run", "--out {tmp}/non-empty: is not empty"),
    ("gpu-acceptance --out {tmp}/a-file --dry-run", "is not a folder"),
    ("gpu-acceptance --out {tmp}/new --dry-run --only train_dense gpu_test", "--only gpu_test: no such step"),
]
# An unknown flag after each command's required arguments.
UNKNOWN_FLAG = {"submit": "--root {tmp}", "study": "--root {tmp}", "status": "{tmp}", "wait": "{tmp}",
                "cancel": "{tmp}", "train": "{tmp}", "analyze": "{tmp}", "bench": "kernels",
                "gpu-acceptance": "--out {tmp}/new"}
NO_CUDA = [
    ("bench kernels --device cuda", "--device cuda: no CUDA device is visible; use --device cpu"),
    ("bench kernels --device cuda:3 --json {tmp}/keep.json", "--device cuda:3"),
    ("bench layers --device cuda", "--device cuda: no CUDA device is visible"),
    ("gpu-acceptance --out {tmp}/new", "no CUDA device is visible"),
]

CASES = ([pytest.param(f"bench kernels {argv}", expected, id=f"bench-kernels {argv}")
          for argv, expected in BENCH_KERNELS]
         + [pytest.param(f"bench layers {argv}", expected, id=f"bench-layers {argv}")
            for argv, expected in BENCH_LAYERS]
         + [pytest.param(f"bench checkpoint {argv}", expected, id=f"bench-checkpoint {argv}")
            for argv, expected in BENCH_CHECKPOINT]
         + [pytest.param(argv, expected, id=argv) for argv, expected in OTHER]
         + [pytest.param(f"{name} {UNKNOWN_FLAG.get(name, '')} --nosuch", "unrecognized arguments: --nosuch",
                         id=f"{name} --nosuch") for name in COMMANDS]
         + [pytest.param(argv, expected, id=argv, marks=needs_no_cuda) for argv, expected in NO_CUDA])


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder``: file bytes, None for a folder."""
    return {str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
            for path in sorted(folder.rglob("*"))}


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding files a bad command must leave alone; also the working directory."""
    (tmp_path / "keep.json").write_text('{"kept": true}\n')
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "non-empty").mkdir()
    (tmp_path / "non-empty" / "earlier.json").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("command_line, expected", CASES)
def test_bad_command_line_is_one_line_and_changes_nothing(command_line: str, expected: str, workspace: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(workspace)
    try:
        status = main(command_line.format(tmp=workspace).split())
    except SystemExit as exit_:
        status = exit_.code
    error = capsys.readouterr().err
    lines = error.strip().splitlines()
    assert status == 2, error
    assert len(lines) == 1, error
    assert expected.format(tmp=workspace) in lines[0]
    assert "Traceback" not in error
    assert snapshot(workspace) == before


@pytest.mark.parametrize("free_gb, fix", [(0.1, "pass --gb 0.05 or less, or --dir on a larger disk"),
                                          (0.01, "pass --dir on a disk with more space")])
def test_bench_checkpoint_refuses_a_state_the_disk_cannot_hold(free_gb: float, fix: str, workspace: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from isoflop.bench import checkpoint

    monkeypatch.setattr(checkpoint.shutil, "disk_usage",
                        lambda folder: SimpleNamespace(total=10e9, used=10e9 - free_gb * 1e9, free=free_gb * 1e9))
    before = snapshot(workspace)
    status = main(f"bench checkpoint --gb 0.2 --dir {workspace}".split())
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1, lines
    assert f"the two checkpoints need about 0.4 GB on disk and {workspace} has {free_gb:.2f} GB free; {fix}" \
        in lines[0]
    assert snapshot(workspace) == before


def test_bench_help_descriptions_are_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    """The description is the docstring's first paragraph: reST ````quotes```` are not shown."""
    for target in ("kernels", "layers", "checkpoint"):
        with pytest.raises(SystemExit):
            main(["bench", target, "--help"])
        assert "``" not in capsys.readouterr().out, target


@pytest.mark.parametrize("argv", [["bench", "kernels", "--nosuch"], ["bench", "layers", "--tokens", "-5"],
                                  ["status", ".", "--interval", "nan"]])
def test_console_prints_one_line(argv: list[str], tmp_path: Path) -> None:
    completed = subprocess.run([sys.executable, "-m", "isoflop.cli", *argv], cwd=tmp_path, capture_output=True,
                               text=True, env={"PYTHONPATH": str(REPOSITORY), "PATH": "/usr/bin:/bin"})
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1 and "Traceback" not in completed.stderr
    assert f"see 'isoflop {argv[0]}" in completed.stderr


@pytest.mark.parametrize("argv", [[name, "--help"] for name in COMMANDS]
                         + [["bench", target, "--help"] for target in ("kernels", "layers", "checkpoint")]
                         + [["--help"]])
def test_every_help_text_prints(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` of every command and benchmark prints its usage and exits 0 (a bare ``%`` in a
    help string would make argparse raise instead)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    printed = capsys.readouterr()
    assert exit_.value.code == 0, printed.err
    assert "usage: isoflop" in printed.out
