"""Tiny RunSpecs and corpora for the training and data tests (CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

from isoflop.planner import build_model_config, build_run
from isoflop.run_spec import RunSpec
from isoflop.study_config import DataConfig, LadderConfig, ModelTemplate, StudyConfig, TrainConfig

PEER_TINY = {"family": "peer", "n_experts": 256, "n_heads": 2, "top_k": 4, "d_key": 16}


def write_corpus(path: Path, n_documents: int = 400, seed: int = 0) -> Path:
    """A small text corpus: paragraphs separated by blank lines (~40 kB)."""
    import random

    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "train", "loss", "token", "expert", "layer", "model"]
    paragraphs = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) for _ in range(n_documents)]
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path


def tiny_spec(*, steps: int = 12, method: str = "dense", ffw: dict | None = None, data: DataConfig | None = None,
              batch_size: int = 4, micro_batch_size: int | None = None, seq_len: int = 32,
              d_model: int = 32, logger: str = "none", **train_overrides) -> RunSpec:
    """A 2-layer model trained for ``steps`` steps on ``data`` (budget set to match)."""
    train_values = dict(batch_size=batch_size, seq_len=seq_len, micro_batch_size=micro_batch_size,
                        warmup_fraction=0.2, checkpoint_every_steps=1000, log_every_steps=1, eval_tokens=512,
                        lr_base=3e-3)
    train_values.update(train_overrides)
    study = StudyConfig(name="tiny", budgets=[1e9], methods={method: ffw or {"family": "dense"}},
                        model=ModelTemplate(n_layers=2, d_model=d_model, n_heads=2),
                        ladder=LadderConfig(shapes=[[2, d_model, 2]], min_steps=1),
                        train=TrainConfig(**train_values), data=data or DataConfig(), logger=logger)
    model = build_model_config(study, study.methods[method], (2, d_model, 2))
    probe = build_run(study, method, 1.0, model)
    budget = probe.costs["flops_per_token_train"] * batch_size * seq_len * steps
    return build_run(study, method, budget * (1 + 1e-9), model)


def write_run(run_dir: Path, spec: RunSpec) -> Path:
    """``run_dir`` with the run.json of ``spec`` (as `isoflop submit` writes it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(spec.to_dict()))
    return run_dir


def training_records(run_dir: Path) -> list[dict]:
    """The per-step training lines of ``run_dir``'s metrics.jsonl (no resume or evaluation records)."""
    from conftest import metrics

    return [record for record in metrics(run_dir) if "loss" in record and record.get("kind") is None]


def logged_losses(run_dir: Path) -> list[float]:
    """The training loss of every logged step, in log order."""
    return [record["loss"] for record in training_records(run_dir)]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a process group's rendezvous)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_in_processes(run_dir: Path, world_size: int, cwd: Path, timeout_s: float = 240) -> list[str]:
    """Run ``isoflop train run_dir`` as ``world_size`` gloo processes (one thread each);
    returns their stderr. Fails the test when one of them fails."""
    import os
    import subprocess
    import sys

    repository = Path(__file__).resolve().parents[1]
    port = free_port()
    processes = []
    for rank in range(world_size):
        environment = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
                       "PYTHONPATH": str(repository)}
        processes.append(subprocess.Popen(
            [sys.executable, "-c", "import sys; from isoflop.cli import main; sys.exit(main(sys.argv[1:]))",
             "train", str(run_dir)], env=environment, cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errors = []
    for process in processes:
        _, stderr = process.communicate(timeout=timeout_s)
        assert process.returncode == 0, stderr[-3000:]
        errors.append(stderr)
    return errors
