"""Exact resume after ``kill -9``, for every FFW family: a trainer process is
SIGKILLed at two points and resumed in new processes; every logged step, the
result and the last checkpoints' tensors and random states equal the
uninterrupted run bit for bit (CPU, fp32).

New processes matter: anything that runs between the restore and the first
step and draws from a global random generator (once, a peak-FLOP/s
measurement, cached per process) shifts the random streams of a resumed run
only in a fresh process, which an in-process resume never sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPOSITORY, metrics
from isoflop import checkpoint
from isoflop.atomic_files import read_json
from isoflop.run_spec import RunSpec
from isoflop.study_config import DataConfig
from isoflop.train import run
from train_support import PEER_TINY, tiny_spec, write_corpus, write_run

TINY_MOE = {"family": "token_choice_moe", "n_experts": 4, "init": "default"}
FAMILIES = {  # method -> FFW config, one per family and token-choice router
    "dense": {"family": "dense"},
    "topk_activation": {"family": "topk_activation", "k": 16},
    "softmax_moe": {**TINY_MOE, "router": "softmax", "top_k": 2},
    "switch": {**TINY_MOE, "router": "softmax", "top_k": 1, "load_balance_weight": 0.01, "capacity_factor": 1.25},
    "sigma_moe": {**TINY_MOE, "router": "sigmoid", "top_k": 2, "entropy_weight": 0.001, "expert_dropout": 0.2,
                  "init": "sigma_moe"},  # expert dropout: random numbers drawn at every training step
    "sbase": {**TINY_MOE, "router": "sinkhorn", "top_k": 1},
    "expert_choice": {"family": "expert_choice_moe", "n_experts": 4, "routing_group": 2},  # one micro-batch
    "pkm": {"family": "pkm", "n_experts": 256, "n_heads": 2, "top_k": 4, "d_key": 16},
    "peer": PEER_TINY,
}
STEPS, CHECKPOINT_EVERY = 8, 2
# The trainer process SIGKILLs itself when it asks for its N-th batch (mid-step: the
# step's work so far is lost). First process: during step 4, after the checkpoint of
# step 2. Second (resumed at 2): during step 6, after the checkpoint of step 4.
KILL_AT_BATCH = (4, 4)
TIMING = {"tokens_per_s", "mfu", "elapsed_s", "wall_time_s"}  # differ between any two runs

# A driver process imports what a trainer imports, then forks one trainer process per
# attempt, each a new process that has run nothing yet (as if started from scratch,
# without paying for the imports each time). A trainer SIGKILLs itself when it asks
# for its N-th batch (0: never). Arguments: a JSON list of [run_dir, [N, ...]]; prints
# the exit statuses of each run's trainers as JSON.
TRAIN_IN_NEW_PROCESSES = """
import json, os, signal, sys
import datasets, torch._dynamo  # imported by the data sources and by AdamW: once, here
from isoflop.cli import main
from isoflop.data import PackedCorpus

def train(run_dir, kill_at):
    next_batch, calls = PackedCorpus.next_batch, [0]
    def next_batch_or_die(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return next_batch(self, *args, **kwargs)
    PackedCorpus.next_batch = next_batch_or_die
    return main(["train", run_dir])

def exit_status(run_dir, kill_at):
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = train(run_dir, kill_at)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

runs = json.loads(sys.argv[1])
print(json.dumps([[exit_status(run_dir, kill_at) for kill_at in kill_ats] for run_dir, kill_ats in runs]))
"""


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[RunSpec, Path, list[int]]]:
    """method -> (spec, run folder, trainer exit statuses): every family's run trained by
    trainer processes SIGKILLed at :data:`KILL_AT_BATCH`, then resumed to the end."""
    root = tmp_path_factory.mktemp("killed")
    data = DataConfig(source="files", paths=[str(write_corpus(root / "corpus.txt"))], validation_fraction=0.1)
    runs = {}
    for method, ffw in FAMILIES.items():
        spec = tiny_spec(steps=STEPS, method=method, ffw=ffw, micro_batch_size=2,
                         checkpoint_every_steps=CHECKPOINT_EVERY, data=data)
        runs[method] = (spec, write_run(root / method, spec))
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    arguments = json.dumps([[str(run_dir), [*KILL_AT_BATCH, 0]] for _, run_dir in runs.values()])
    completed = subprocess.run([sys.executable, "-c", TRAIN_IN_NEW_PROCESSES, arguments], cwd=REPOSITORY,
                               env=environment, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    statuses = json.loads(completed.stdout.strip().splitlines()[-1])
    return {method: (spec, run_dir, status) for (method, (spec, run_dir)), status in zip(runs.items(), statuses)}


def logged_steps(run_dir: Path) -> dict[int, dict]:
    """step -> its metrics.jsonl line without timings; after a resume the later line wins."""
    return {record["step"]: {key: value for key, value in record.items() if key not in TIMING}
            for record in metrics(run_dir) if record.get("kind") is None}


def assert_bitwise_equal(resumed: object, reference: object, where: str) -> None:
    """Tensors, arrays and plain values equal bit for bit, recursively (timings excepted)."""
    if isinstance(reference, dict):
        assert set(resumed) == set(reference), where
        for key in reference:
            if key not in TIMING:
                assert_bitwise_equal(resumed[key], reference[key], f"{where}.{key}")
    elif isinstance(reference, (list, tuple)):
        assert len(resumed) == len(reference), where
        for index, (left, right) in enumerate(zip(resumed, reference)):
            assert_bitwise_equal(left, right, f"{where}[{index}]")
    elif isinstance(reference, torch.Tensor):
        assert resumed.dtype == reference.dtype and torch.equal(resumed, reference), where
    elif isinstance(reference, np.ndarray):
        assert resumed.dtype == reference.dtype and np.array_equal(resumed, reference), where
    else:
        assert resumed == reference, where


@pytest.mark.slow
@pytest.mark.parametrize("method", list(FAMILIES))
def test_run_killed_twice_resumes_bitwise_in_new_processes(tmp_path: Path, killed_runs, method: str) -> None:
    spec, killed, statuses = killed_runs[method]
    assert statuses == [-9, -9, 0]  # SIGKILLed twice, then finished
    assert [record["step"] for record in metrics(killed) if record.get("kind") == "resume"] == [2, 4]
    reference = tmp_path / "reference"
    run(spec, reference)  # uninterrupted, in this process

    assert logged_steps(killed) == logged_steps(reference) and len(logged_steps(reference)) == STEPS
    assert_bitwise_equal(read_json(killed / "result.json"), read_json(reference / "result.json"), "result")
    kept = sorted(path.name for path in (reference / "checkpoints").iterdir())
    assert kept == sorted(path.name for path in (killed / "checkpoints").iterdir()) == ["step_000004",
                                                                                         "step_000006"]
    for name in kept:
        assert_bitwise_equal(checkpoint.load(killed / "checkpoints" / name),
                             checkpoint.load(reference / "checkpoints" / name), name)
