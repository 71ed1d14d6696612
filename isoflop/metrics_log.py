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

:class:`Throughput` measures tokens/s and MFU over each logging interval.

Progress goes to stderr: step, loss, tokens/s, MFU and ETA. On a terminal it
is a progress bar (rich) redrawn at each log step; anywhere else (SLURM job
logs, pipes, pytest) it is one plain line per log step.

With ``logger == "wandb"`` the same numbers go to Weights & Biases, run files
under ``<run_dir>/wandb/``; ``WANDB_MODE=offline`` works without network.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from isoflop.atomic_files import finite_or_null


class MetricsLogger:
    """Writes metrics.jsonl, the progress line and (optionally) wandb. Only
    rank 0 should create one with ``enabled=True``."""

    def __init__(self, run_dir: Path, *, run_id: str, total_steps: int, logger: str = "none",
                 config: dict | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.total_steps = total_steps
        self.run_id = run_id
        self._file = open(Path(run_dir) / "metrics.jsonl", "a", buffering=1) if enabled else None
        self._bar = _ProgressBar(run_id, total_steps) if enabled and sys.stderr.isatty() else None
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
        """Progress after ``step`` steps: loss, tokens/s, MFU, ETA (from ``seconds_per_step``)."""
        if not self.enabled:
            return
        remaining = max(0, self.total_steps - step) * seconds_per_step
        mfu_text = f" mfu {100 * mfu:5.2f}%" if mfu is not None else ""
        numbers = f"loss {loss:.4f} {tokens_per_s:,.0f} tok/s{mfu_text} eta {_duration(remaining)}"
        if self._bar is not None:
            self._bar.show(step, numbers)
            return
        sys.stderr.write(f"{self.run_id} step {step}/{self.total_steps} "
                         f"({100 * step / max(1, self.total_steps):5.1f}%) {numbers}\n")
        sys.stderr.flush()

    def summary(self, values: dict[str, Any]) -> None:
        """Final numbers into the wandb run summary."""
        if self._wandb_run is not None:
            for key, value in values.items():
                if isinstance(value, (int, float, str)):
                    self._wandb_run.summary[key] = value

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None


class Throughput:
    """Training tokens per second since the last restart, and MFU: achieved training
    FLOP/s (the accounting's FLOPs per token x tokens/s) over the peak of all
    ``world_size`` devices."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float | None,
                 world_size: int) -> None:
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak_flops, self.world_size = peak_flops, world_size
        self.restart(0)

    def restart(self, step: int) -> None:
        self._start, self._first_step = time.perf_counter(), step

    def measure(self, step: int) -> tuple[float, float]:
        """(tokens/s, seconds per step) from the restart to ``step`` steps."""
        seconds = max(1e-9, time.perf_counter() - self._start)
        steps = step - self._first_step
        return steps * self.tokens_per_step / seconds, seconds / max(1, steps)

    def utilization(self, tokens_per_s: float) -> float | None:
        """MFU at ``tokens_per_s`` (None: unknown peak)."""
        return self.flops_per_token * tokens_per_s / (self.peak_flops * self.world_size) if self.peak_flops else None


class _ProgressBar:
    """A rich progress bar on the terminal (stderr), redrawn only when told (no refresh thread)."""

    def __init__(self, run_id: str, total_steps: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._progress = Progress(TextColumn(run_id), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[numbers]}"),
                                  console=Console(stderr=True, force_terminal=True), auto_refresh=False)
        self._task = self._progress.add_task(run_id, total=total_steps, numbers="")
        self._started = False

    def show(self, step: int, numbers: str) -> None:
        if not self._started:
            self._progress.start()
            self._started = True
        self._progress.update(self._task, completed=step, numbers=numbers, refresh=True)

    def close(self) -> None:
        if self._started:
            self._progress.stop()


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
