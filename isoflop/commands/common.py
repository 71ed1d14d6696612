"""What the commands share: the one-line argument parser, argument types that
reject bad values while parsing, device checks, output files, study arguments.

Every parser of an ``isoflop`` command (the subcommands and the benchmarks
under ``isoflop bench``) is a :class:`OneLineArgumentParser`, so an unknown
flag or a bad flag value is one line on stderr that names the flag and points
at ``--help``, with exit status 2. This module imports no torch at import time.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from isoflop.errors import UserError


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line naming the fix."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}; see '{self.prog} --help'\n")


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``, letting KEY=VALUE overrides follow any flag (``submit --dry-run cluster=slurm``).

    argparse's intermixed parsing allows that, but not REMAINDER arguments, so
    a parser with one parses plainly.
    """
    takes_remainder = any(action.nargs == argparse.REMAINDER for action in parser._actions)
    return parser.parse_args(argv) if takes_remainder else parser.parse_intermixed_args(argv)


# ---- argument types: each raises ArgumentTypeError, which argparse reports with the flag's name ----

def positive_number(convert: Callable[[str], float], example: str, *, zero_allowed: bool = False,
                    maximum: float | None = None) -> Callable[[str], float]:
    """argparse type: a finite number > 0 (or >= 0 with ``zero_allowed``), at most ``maximum``,
    parsed by ``convert`` (int or float); ``example`` completes the fix, e.g. ``"a count such as 2048"``."""
    noun = "integer" if convert is int else "number"
    rule = f"zero or a positive {noun}" if zero_allowed else f"a positive {noun}"

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an' if convert is int else 'a'} {noun}; "
                                             f"pass {example}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite {noun}; pass {example}")
        if value < 0 or (value == 0 and not zero_allowed):
            raise argparse.ArgumentTypeError(f"{text!r} must be {rule}; pass {example}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{text!r} is above the largest accepted, {maximum:g}; pass {example}")
        return value

    return parse


def budget_flops(text: str, flag: str = "--budget") -> float:
    """argparse type of ``--budget``: FLOPs that pass :func:`isoflop.study_config.budget_problem`
    (finite, > 0, at most the maximum), the rule of every way a budget arrives; ``flag`` is the
    option the fix names."""
    from isoflop.study_config import BUDGET_EXAMPLE, budget_problem

    try:
        budget = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; pass FLOPs such as {BUDGET_EXAMPLE}") from None
    problem = budget_problem(budget, flag)
    if problem is not None:
        rule, fix = problem
        raise argparse.ArgumentTypeError(f"{text!r} {rule}; {fix}")
    return budget


positive_count = positive_number(int, "a count such as 16")
MAX_SECONDS = 1e7  # about 116 days: longer than any wait, and within what time.sleep accepts
positive_seconds = positive_number(float, "seconds such as 5", maximum=MAX_SECONDS)
count_or_zero = positive_number(int, "a count such as 1000 (0 disables)", zero_allowed=True)

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def device_choice(text: str) -> str:
    """argparse type for ``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device this benchmark runs on; "
                                         "pass cpu, cuda, cuda:N or auto")
    return text


def require_device(choice: str, flag: str = "--device") -> str:
    """The torch device name for ``choice`` (``auto``: cuda when one is visible, else cpu).

    Raises:
        UserError: CUDA was asked for and no (or no such) CUDA device is visible.
    """
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if choice == "auto":
        return "cuda" if visible else "cpu"
    if choice.startswith("cuda"):
        index = int(choice.partition(":")[2] or 0)
        if index >= visible:
            seen = "no CUDA device is visible" if not visible else f"only {visible} CUDA device(s) are visible"
            raise UserError(f"{flag} {choice}: {seen}; use {flag} cpu"
                            + (f" or an index below {visible}" if visible else ""))
    return choice


def writable_file(text: str) -> Path:
    """argparse type for an output file (``--json``, ``--out``): checked before any work is done.

    The file itself is not touched: writability of a file that is replaced is
    probed with a temporary file beside it (beside the file a symbolic link
    points to), removed at once; a FIFO or device is checked for write
    permission. So a path that cannot be written fails now rather than after
    a long benchmark.
    """
    path = Path(text)
    problem = _output_problem(path)
    if problem:
        raise argparse.ArgumentTypeError(f"cannot write {text} ({problem}); choose a writable file path")
    return path


class _CannotWrite(Exception):
    """Why an output path cannot be written (the text in parentheses of the one-line error)."""


_REPLACE, _IN_PLACE = "replace", "in place"


def _output_route(path: Path) -> tuple[str, Path]:
    """How ``path`` is written: ``(_REPLACE, file)`` to replace ``file`` atomically (``path``
    itself, or the file a symbolic link points to, so the link stays a link), or
    ``(_IN_PLACE, path)`` to open what is there and write into it (a FIFO, a character or
    block device, a socket: replacing one would destroy it).

    Raises:
        _CannotWrite: a directory, a missing folder, a symbolic-link loop.
    """
    try:
        found = path.stat()  # follows symbolic links
    except (FileNotFoundError, NotADirectoryError):
        found = None
    except OSError as error:  # a link loop, a folder on the way that cannot be searched
        raise _CannotWrite(error.strerror or type(error).__name__) from None
    if found is None:  # nothing there, or a dangling symbolic link: write the file it names
        target = Path(os.path.realpath(path)) if path.is_symlink() else path
        if not target.parent.is_dir():
            where = f"it links to {target} and there is " if target != path else ""
            raise _CannotWrite(f"{where}no such directory {target.parent}")
        return _REPLACE, target
    if stat.S_ISDIR(found.st_mode):
        raise _CannotWrite("it is a directory")
    if not stat.S_ISREG(found.st_mode):
        return _IN_PLACE, path
    target = Path(os.path.realpath(path))
    try:
        same = target.samefile(path)
    except OSError:
        same = False
    # a regular file the link's text does not lead to (a /proc/PID/fd link) is written where it is
    return (_REPLACE, target) if same else (_IN_PLACE, path)


def _output_problem(path: Path) -> str | None:
    """Why ``path`` cannot be written as a file, or None."""
    try:
        how, target = _output_route(path)
    except _CannotWrite as problem:
        return str(problem)
    if how == _IN_PLACE:
        return None if os.access(target, os.W_OK) else os.strerror(errno.EACCES)
    try:
        descriptor, probe = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as error:
        return error.strerror or type(error).__name__
    os.close(descriptor)
    os.unlink(probe)
    return None


def _write_in_place(path: Path, text: str) -> None:
    """Open the existing ``path`` (a FIFO, a device) for writing and write ``text`` into it;
    a FIFO waits for a reader, as the shell's ``>`` does."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_TRUNC), "w") as handle:
        handle.write(text)


def write_output_file(path: Path, text: str, flag: str) -> None:
    """Write ``text`` to ``path``; a path that cannot be written is a :class:`UserError` naming ``flag``.

    A regular file (new or existing) is written atomically: a temporary file beside
    it, renamed over it when complete, so a failed write leaves the old file. A
    symbolic link is followed: the file it points to is written that way and the
    link stays. A FIFO, device or socket is opened and written in place, never
    replaced (``--out /dev/stdout``, ``--json >(gzip > x.gz)``).
    """
    from isoflop.atomic_files import write_atomic

    try:
        how, target = _output_route(path)
        if how == _REPLACE:
            write_atomic(target, text)
        else:
            _write_in_place(target, text)
        return
    except _CannotWrite as cannot:
        problem = str(cannot)
    except OSError as error:
        problem = error.strerror or type(error).__name__
    raise UserError(f"{flag} {path}: cannot write ({problem}); choose a writable file path")


# ---- the study arguments of plan, submit and study ----

def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """``--sweep``, ``--budget`` and trailing Hydra ``KEY=VALUE`` overrides."""
    parser.add_argument("--sweep", default=None, metavar="NAME",
                        help="study in sweeps/ (default: peer_paper) or a path to a sweep YAML")
    parser.add_argument("--budget", dest="budgets", action="append", type=budget_flops, metavar="FLOPS",
                        help="training FLOPs per run; repeat for several budgets (default: the sweep's)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="Hydra overrides, e.g. train.batch_size=64 cluster=slurm methods.peer.top_k=8")


def human_count(value: float) -> str:
    """1234567 -> '1.23M' (SI suffixes up to E, 3 significant digits); 1e21 and above: '2.5e+25'."""
    rounded = float(f"{value:.3g}")  # 999.6 -> 1000: the suffix of what is printed
    if abs(rounded) >= 1e21:
        return f"{value:.3g}"
    for threshold, suffix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(rounded) >= threshold:
            return f"{rounded / threshold:.3g}{suffix}"
    return f"{value:.3g}"
