"""The acceptance report: one JSON file with every step and figure, and its summary.

``acceptance.json`` (schema version :data:`SCHEMA_VERSION`) holds
:class:`AcceptanceReport` as written by :meth:`AcceptanceReport.to_json`: the
mode (``gpu`` or ``cpu-rehearsal``), whether it was a dry run, the machine
(:func:`describe_environment`) and one :class:`StepRecord` per step with its
exact commands, time limit, status, reason, wall time and figures. It is
rewritten after every step, so a run stopped from outside keeps what it
measured (``finished`` is then false).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
# planned: dry run; passed / failed / timed_out: ran; skipped: not run, with the reason.
STATUSES = ("planned", "passed", "failed", "timed_out", "skipped")


@dataclass
class StepRecord:
    """One step of the acceptance run, as the JSON file holds it."""

    name: str
    purpose: str
    commands: list[list[str]]  # exact argv of each command, run in order
    time_limit_s: float  # the step's own limit (the overall limit may cut it shorter)
    status: str = "planned"
    reason: str | None = None  # why it failed, timed out or was skipped
    wall_s: float | None = None  # seconds the step took
    figures: dict[str, Any] = field(default_factory=dict)  # what it measured (per step: see steps.py)
    headline: str = ""  # the figures in one line, for the summary
    log: str | None = None  # the commands' output, relative to the report's folder


@dataclass
class AcceptanceReport:
    """Everything one ``isoflop gpu-acceptance`` run found."""

    mode: str  # gpu | cpu-rehearsal
    dry_run: bool
    started_at: float  # Unix time, seconds
    time_limit_s: float  # for all steps together
    environment: dict[str, Any]
    steps: list[StepRecord]
    working_directory: str  # where every command runs (the repository root)
    environment_changes: dict[str, str]  # set for every command (PYTHONPATH: the working tree first)
    finished: bool = False
    wall_s: float = 0.0
    schema_version: int = SCHEMA_VERSION

    def counts(self) -> dict[str, int]:
        """Steps per status."""
        return {status: sum(step.status == status for step in self.steps) for status in STATUSES
                if any(step.status == status for step in self.steps)}

    def passed(self) -> bool:
        """No step failed or timed out."""
        return not any(step.status in ("failed", "timed_out") for step in self.steps)

    def to_json(self) -> str:
        from isoflop.atomic_files import finite_or_null

        return json.dumps(finite_or_null(dataclasses.asdict(self)), indent=2, allow_nan=False) + "\n"

    def summary(self, json_path: Path) -> str:
        """The run on one screen: the machine, then one line per step."""
        environment = self.environment
        devices = environment.get("cuda_devices") or []
        counts = ", ".join(f"{count} {status}" for status, count in self.counts().items())
        lines = [f"isoflop gpu-acceptance ({self.mode}{', dry run' if self.dry_run else ''}): "
                 f"{f'{devices[0]} x{len(devices)}' if devices else 'no CUDA device'}, "
                 f"torch {environment.get('torch')}, triton {environment.get('triton')}; "
                 f"{counts}" + ("" if self.dry_run else f" in {self.wall_s:.0f} s")]
        for step in self.steps:
            wall = f"{step.wall_s:5.0f} s" if step.wall_s is not None else f"<={step.time_limit_s:4.0f} s"
            detail = step.headline if step.status in ("passed", "planned") and not step.reason else \
                "; ".join(text for text in (step.reason, step.headline) if text)
            lines.append(f"  {step.status:<9} {step.name:<18} {wall}  {detail}"[:220])
        lines.append(f"every figure: {json_path}" + ("" if self.dry_run else f"; logs: {json_path.parent / 'logs'}"))
        return "\n".join(lines)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def describe_environment(repository: Path) -> dict[str, Any]:
    """The machine and software the checks ran on (torch imported here)."""
    import torch

    cuda = torch.cuda.is_available()
    commit = subprocess.run(["git", "-C", str(repository), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=False) if (repository / ".git").exists() and shutil.which("git") else None
    return {
        "hostname": platform.node(), "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "triton": _version("triton") or _version("pytorch-triton"), "pytest": _version("pytest"),
        "cuda_devices": [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
        if cuda else [],
        "repository_commit": commit.stdout.strip() if commit is not None and commit.returncode == 0 else None,
    }
