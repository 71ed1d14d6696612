"""``isoflop train RUN_DIR``: train (or resume) the run described by ``RUN_DIR/run.json``.

Writes ``metrics.jsonl``, ``checkpoints/`` and finally ``result.json`` into
RUN_DIR (see :mod:`isoflop.train`). A run whose ``result.json`` says
``completed`` is not trained again. Multi-GPU: launch it under torchrun or a
multi-task SLURM job; the processes find each other from the environment.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding run.json")


def run(args: argparse.Namespace) -> int:
    from isoflop.run_spec import RunSpec
    from isoflop.sweep_dir import RunDir

    run_dir = RunDir(Path(args.run_dir))
    spec = RunSpec.read(run_dir.run_json)
    from isoflop.train import run as train_run

    ended_before = run_dir.result() is not None
    result = train_run(spec, run_dir.path)
    validation = result.eval.get("validation")
    print(f"{spec.run_id}: {'already ' if ended_before else ''}{result.status} after {result.steps} steps"
          + (f", validation loss {validation.loss:.4f}" if validation and validation.loss is not None else "")
          + (f" (diverged at step {result.diverged_at_step})" if result.status == "diverged" else ""))
    return 0
