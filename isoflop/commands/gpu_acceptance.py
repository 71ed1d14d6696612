"""``isoflop gpu-acceptance --out DIR``: check a CUDA machine in one command, in minutes.

Runs the GPU tests, trains a small dense, expert-choice MoE and PEER model in
bf16 (tokens/s, MFU), benchmarks the PEER and CVMM kernels at the papers'
sizes, and with 2+ GPUs checks multi-process training against one process
(see :mod:`isoflop.acceptance.steps`). Writes DIR/acceptance.json with every
figure (rewritten after each step), DIR/logs/<step>.log, the benchmark JSONs
and the run directories, then prints a one-screen summary.

Exit status: 0 when no step failed (skipped steps say why), 1 when one did,
2 for a usage problem, including a machine without CUDA (``--dry-run`` and
``--cpu-rehearsal`` work anywhere). Needs no install and no network: run it
as ``PYTHONPATH=. python -m isoflop.cli gpu-acceptance --out DIR`` from the
repository root.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from isoflop.commands.common import positive_seconds, write_output_file
from isoflop.errors import UserError

REPORT_NAME = "acceptance.json"
DEFAULT_TIME_LIMIT_S = 540.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="a new (or empty) folder for acceptance.json, logs/, runs/ and benchmark JSONs")
    parser.add_argument("--dry-run", action="store_true",
                        help="list every step, its exact commands and time limit; run nothing (works without CUDA)")
    parser.add_argument("--cpu-rehearsal", action="store_true",
                        help="run every step on the CPU at toy sizes with the same flags (checks the steps, "
                             "not the GPU)")
    parser.add_argument("--only", nargs="+", metavar="STEP",
                        help="run only these steps, e.g. a rerun of one that failed (--dry-run lists the names)")
    parser.add_argument("--time-limit", type=positive_seconds, default=DEFAULT_TIME_LIMIT_S, metavar="SECONDS",
                        help=f"for all steps together (default {DEFAULT_TIME_LIMIT_S:.0f}); each step also has "
                             "its own")


def _check_out(out: Path) -> None:
    """``--out`` must be new or empty, so nothing already there is changed."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: {'is not a folder' if not out.is_dir() else 'is not empty'}; "
                        "pass a new folder (nothing already written is changed)")


def _create_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out}: cannot create it ({error.strerror}); choose a writable folder") from None


def _chosen(planned: list["Step"], names: list[str] | None) -> list["Step"]:  # noqa: F821 - imported in run
    """The steps named by --only (all without it), in their usual order."""
    known = [step.name for step in planned]
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise UserError(f"--only {' '.join(unknown)}: no such step; choose from {', '.join(known)}")
    return [step for step in planned if names is None or step.name in names]


def _visible_cuda_devices(required: bool) -> int:
    """How many CUDA devices this process sees; none when ``required`` is a UserError."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if required and not count:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        raise UserError(f"no CUDA device is visible (torch {torch.__version__}, {build}); run it on a GPU "
                        "machine, or use --dry-run or --cpu-rehearsal here")
    return count


def _save(report: "AcceptanceReport", json_path: Path) -> None:  # noqa: F821 - imported in run
    report.wall_s = time.time() - report.started_at
    write_output_file(json_path, report.to_json(), "--out")


def run(args: argparse.Namespace) -> int:
    from isoflop.acceptance import runner, steps
    from isoflop.acceptance.report import AcceptanceReport, describe_environment

    cuda_devices = _visible_cuda_devices(required=not (args.dry_run or args.cpu_rehearsal))
    _check_out(args.out)
    out = args.out.resolve()
    profile = steps.CPU_REHEARSAL if args.cpu_rehearsal else steps.GPU
    planned = _chosen(steps.build_steps(profile, out, cuda_devices), args.only)
    _create_out(out)
    environment = runner.environment_changes(steps.REPOSITORY, dict(profile.environment))
    report = AcceptanceReport(
        mode=profile.name, dry_run=args.dry_run, started_at=time.time(), time_limit_s=args.time_limit,
        environment=describe_environment(steps.REPOSITORY), steps=[runner.step_record(step) for step in planned],
        working_directory=str(steps.REPOSITORY), environment_changes=environment)
    json_path = out / REPORT_NAME
    if args.dry_run:
        _print_plan(report)
    else:
        _save(report, json_path)
        deadline = time.monotonic() + args.time_limit
        for index, (step, record) in enumerate(zip(planned, report.steps), start=1):
            print(f"[{index}/{len(planned)}] {step.name}: {step.purpose}", file=sys.stderr, flush=True)
            runner.run_step(step, record, out, steps.REPOSITORY, environment, deadline)
            _save(report, json_path)
    report.finished = True
    _save(report, json_path)
    print(report.summary(json_path))
    return 0 if report.passed() else 1


def _print_plan(report: "AcceptanceReport") -> None:  # noqa: F821 - imported in run
    variables = " ".join(f"{name}={shlex.quote(value)}" for name, value in report.environment_changes.items())
    print(f"# every command runs in {report.working_directory} with {variables}")
    for record in report.steps:
        state = f"{record.status}: {record.reason}" if record.reason else f"limit {record.time_limit_s:.0f} s"
        print(f"## {record.name} ({state}) - {record.purpose}")
        for argv in record.commands:
            print(shlex.join(argv))
