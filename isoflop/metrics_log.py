"""What training reports while it runs: metrics.jsonl, a progress line, wandb.

``<run_dir>/metrics.jsonl`` is append-only, one JSON object per line, flushed
after each line. Training lines carry ``step`` (optimizer steps done),
``tokens`` and ``flops`` (training tokens / FLOPs so far, FLOPs from the
accounting's flops_per_token_train), ``loss`` (mean LM + auxiliary loss of the
step, nats/token), ``lr``, ``grad_norm`` (before clipping), ``tokens_per_s``
and ``mfu`` (over the last logging interval) and ``elapsed_s`` (training time
over all attempts). A line with ``"kind": "resume"`` marks a restart from a
checkpoint, after which steps past that checkpoint may be logged again — the
later line of a step wins.

The progress line goes to stderr: loss, tokens/s, MFU and ETA, rewritten in
place on a terminal, one line per log step otherwise (job logs).

With ``logger == "wandb"`` the same numbers go to Weights & Biases, run files
under ``<run_dir>/wandb/``; ``WANDB_MODE=offline`` works without network.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN/inf float replaced by None (JSON has no NaN),
    inside dicts, lists and tuples too."""
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """Writes metrics.jsonl, the progress line and (optionally) wandb. Only
    rank 0 should create one with ``enabled=True``."""

    def __init__(self, run_dir: Path, *, run_id: str, total_steps: int, logger: str = "none",
                 config: dict | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.total_steps = total_steps
        self.run_id = run_id
        self._file = open(Path(run_dir) / "metrics.jsonl", "a", buffering=1) if enabled else None
        self._interactive = sys.stderr.isatty()
        self._wandb_run = None
        if enabled and logger == "wandb":
            self._wandb_run = _start_wandb(Path(run_dir), run_id, config or {})

    def log(self, record: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl (and wandb)."""
        if not self.enabled:
            return
        line = finite_or_null(record)
        self._file.write(json.dumps(line) + "\n")  # line-buffered: flushed at the newline
        if self._wandb_run is not None:
            numbers = {key: value for key, value in line.items()
                       if isinstance(value, (int, float)) and key != "step"}
            self._wandb_run.log(numbers, step=int(record.get("step", 0)))

    def progress(self, step: int, loss: float, tokens_per_s: float, mfu: float | None,
                 seconds_per_step: float) -> None:
        """The progress line: step/total, loss, tokens/s, MFU, ETA."""
        if not self.enabled:
            return
        remaining = max(0, self.total_steps - step) * seconds_per_step
        mfu_text = f" mfu {100 * mfu:5.2f}%" if mfu is not None else ""
        text = (f"{self.run_id} step {step}/{self.total_steps} "
                f"({100 * step / max(1, self.total_steps):5.1f}%) loss {loss:.4f} "
                f"{tokens_per_s:,.0f} tok/s{mfu_text} eta {_duration(remaining)}")
        if self._interactive:
            sys.stderr.write("\r" + text + "\x1b[K")
            if step >= self.total_steps:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def summary(self, values: dict[str, Any]) -> None:
        """Final numbers into the wandb run summary."""
        if self._wandb_run is not None:
            for key, value in values.items():
                if isinstance(value, (int, float, str)):
                    self._wandb_run.summary[key] = value

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None


def _start_wandb(run_dir: Path, run_id: str, config: dict) -> Any:
    """A wandb run resumable by run_id, files under ``run_dir/wandb``."""
    import wandb

    return wandb.init(project=f"isoflop-{config.get('study', 'study')}", name=run_id, id=run_id,
                      resume="allow", dir=str(run_dir), config=config, reinit=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
