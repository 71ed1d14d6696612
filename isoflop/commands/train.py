"""``isoflop train RUN_DIR``: train (or resume) the run described by ``RUN_DIR/run.json``.

Writes ``metrics.jsonl``, ``checkpoints/`` and finally ``result.json`` into
RUN_DIR (see :mod:`isoflop.train`). A run whose ``result.json`` says
``completed`` is not trained again. Multi-GPU: launch it under torchrun or a
multi-task SLURM job; the processes find each other from the environment.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from isoflop.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding run.json")


def load_run_spec(run_dir: Path) -> "RunSpec":  # noqa: F821 - imported lazily
    """The RunSpec of ``run_dir/run.json``; a missing or malformed file is a UserError."""
    from isoflop.run_spec import RunSpec

    path = run_dir / "run.json"
    if not path.is_file():
        raise UserError(f"{path}: no such file; pass a run directory written by 'isoflop submit'")
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"{path} is not readable JSON ({str(error).splitlines()[0]}); "
                        "restore it or re-create the sweep with 'isoflop submit'") from None
    try:
        if not isinstance(values, dict):
            raise TypeError("the top level is not an object")
        return RunSpec.from_dict(values)
    except UserError as error:
        raise UserError(f"{path}: {error.message}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UserError(f"{path} is not a valid run spec ({type(error).__name__}: {error}); "
                        "re-create it with 'isoflop submit'") from None


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    spec = load_run_spec(run_dir)
    from isoflop.train import run as train_run

    result = train_run(spec, run_dir)
    validation = result.get("eval", {}).get("validation", {})
    print(f"{spec.run_id}: {result['status']} after {result['steps']} steps"
          + (f", validation loss {validation['loss']:.4f}" if validation.get("loss") is not None else "")
          + (f" (diverged at step {result['diverged_at_step']})" if result["status"] == "diverged" else ""),
          file=sys.stdout)
    return 0
