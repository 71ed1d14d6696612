"""Running the acceptance steps: each command in its own process group, under a time limit.

A step gets the smaller of its own limit and what is left of the overall one;
a command still running at the end is sent SIGTERM, then SIGKILL after
:data:`KILL_GRACE_S`, together with every process it started (its process
group: torch.distributed's workers, pytest's children). The step is then
``timed_out`` and the next one runs. A command that exits non-zero makes the
step ``failed`` with the last line of its output as the reason; the step's
figures are still read, so a partial result is kept.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
import traceback
from pathlib import Path
from typing import Callable, TextIO

from isoflop.acceptance.report import StepRecord
from isoflop.acceptance.steps import Step
from isoflop.errors import UserError

KILL_GRACE_S = 15.0
MIN_STEP_S = 20.0  # a step that would get less than this of the overall limit is skipped


def step_record(step: Step) -> StepRecord:
    """The record of a step that has not run (a dry run lists these)."""
    record = StepRecord(step.name, step.purpose, step.commands, step.time_limit_s, headline=step.plan)
    if step.skip_reason:
        record.status, record.reason = "skipped", step.skip_reason
    elif step.error:
        record.status, record.reason = "failed", step.error
    return record


def environment_changes(repository: Path, profile_environment: dict[str, str]) -> dict[str, str]:
    """What every command's environment changes: the working tree first on PYTHONPATH (so it is
    imported without an install), then the profile's variables."""
    entries = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep)
               if entry and entry != str(repository)]
    return {"PYTHONPATH": os.pathsep.join([str(repository), *entries]), **profile_environment}


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the command's process group, SIGKILL it if it is still there after KILL_GRACE_S."""
    for signal_number, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, signal_number)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_command(argv: list[str], log: TextIO, seconds: float, repository: Path,
                environment: dict[str, str]) -> int | None:
    """Exit status of ``argv`` run in ``repository`` with ``environment`` changes and output to ``log``;
    None if it ran out of ``seconds``."""
    log.write(f"$ {shlex.join(argv)}\n")
    log.flush()
    process = subprocess.Popen(argv, cwd=repository, env={**os.environ, **environment}, stdin=subprocess.DEVNULL,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return process.wait(timeout=max(seconds, 0.1))
    except subprocess.TimeoutExpired:
        _stop_group(process)
        return None
    except BaseException:  # Ctrl-C or an internal error: leave nothing running behind
        _stop_group(process)
        raise


def _last_line(log_path: Path) -> str:
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def run_step(step: Step, record: StepRecord, out: Path, repository: Path, environment: dict[str, str],
             deadline: float) -> None:
    """Run ``step`` (unless skipped or broken) with ``environment`` changes and fill ``record`` in place."""
    if record.status != "planned":
        return
    left = deadline - time.monotonic()
    if left < MIN_STEP_S:
        record.status, record.reason = "skipped", "the overall time limit was reached before this step"
        return
    limit = min(step.time_limit_s, left)
    log_path = out / "logs" / f"{step.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    record.log = str(log_path.relative_to(out))
    started = time.monotonic()
    with open(log_path, "a") as log:
        record.status, record.reason = _run_commands(step, log, log_path, repository, environment,
                                                     started + limit, limit)
        figures, problems = _evaluate(step.evaluate, log)
    record.wall_s = time.monotonic() - started
    record.figures, record.headline = figures, step.headline(figures) if figures else ""
    if record.status == "passed" and problems:
        record.status = "failed"
    record.reason = "; ".join(text for text in (record.reason, *problems) if text)[:400] or None


def _run_commands(step: Step, log: TextIO, log_path: Path, repository: Path, environment: dict[str, str],
                  step_deadline: float, limit: float) -> tuple[str, str | None]:
    """Status and reason after preparing the step and running its commands in order."""
    try:
        step.prepare()
    except (UserError, OSError) as error:
        return "failed", f"could not prepare the runs: {getattr(error, 'message', error)}"
    for argv in step.commands:
        status = run_command(argv, log, step_deadline - time.monotonic(), repository, environment)
        if status is None:
            log.write(f"\n[stopped: the step's {limit:.0f} s limit ran out]\n")
            return "timed_out", f"still running after the step's {limit:.0f} s limit"
        if status != 0:
            log.flush()
            return "failed", f"exit {status}: {_last_line(log_path)}"
    return "passed", None


def _evaluate(evaluate: Callable[[], tuple[dict, list[str]]], log: TextIO) -> tuple[dict, list[str]]:
    """The step's figures; an error while reading them fails this step only (traceback in its log)."""
    try:
        return evaluate()
    except Exception as error:  # noqa: BLE001 - one step's broken output must not stop the others
        log.write(traceback.format_exc())
        return {}, [f"could not read the figures ({type(error).__name__}: {error})"]
