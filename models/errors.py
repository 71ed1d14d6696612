"""The one exception type for mistakes a user can fix, and the checks that raise it.

It lives in ``models`` (the lowest package: ``isoflop`` and ``analysis``
import ``models``, never the reverse) so the model configs can raise it
without an import cycle; ``isoflop.errors`` re-exports the same class.

Every command catches :class:`UserError` at the CLI boundary and prints its
message as a single line on stderr, then exits with status 2 and no
traceback. Anything else that escapes is an internal error and keeps its
traceback.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


class UserError(Exception):
    """A problem in the user's input, with the fix in the message.

    The message must fit on one line and say what is wrong and how to fix it,
    e.g. ``"--budget: 'abc' is not a number; pass FLOPs such as 6e18"``.
    """

    exit_status: int = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
        self.message = " ".join(message.split())


def setting_error(where: str, value: object, rule: str, fix: str) -> UserError:
    """The one-line error for a bad setting: ``where=value: rule; fix``."""
    return UserError(f"{where}={value!r}: {rule}; {fix}")


def require(condition: bool, where: str, value: object, rule: str, fix: str) -> None:
    """Raise :func:`setting_error` unless ``condition`` holds."""
    if not condition:
        raise setting_error(where, value, rule, fix)


def is_real(value: object) -> bool:
    """A finite int or float (a bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require_positive(prefix: str, **values: float | int | None) -> None:
    """Each value that is set (not None) must be a finite number > 0; ``where`` is ``prefix.name``."""
    for name, value in values.items():
        require(value is None or (is_real(value) and value > 0), f"{prefix}.{name}", value,
                "must be a finite number > 0", "set a positive value")


def require_non_negative(prefix: str, fix: str, **values: float | int) -> None:
    """Each value must be a finite number >= 0; ``fix`` says what to set instead."""
    for name, value in values.items():
        require(is_real(value) and value >= 0, f"{prefix}.{name}", value, "must be a finite number >= 0", fix)


def require_fraction(where: str, value: float, fix: str, *, include_zero: bool = True,
                     include_one: bool = False) -> None:
    """``value`` must lie in [0, 1) (bounds chosen by ``include_zero`` / ``include_one``)."""
    inside = is_real(value) and (value >= 0 if include_zero else value > 0) and \
        (value <= 1 if include_one else value < 1)
    interval = f"{'[' if include_zero else '('}0, 1{']' if include_one else ')'}"
    require(inside, where, value, f"must be in {interval}", fix)


def require_choice(where: str, value: object, choices: Iterable[str]) -> None:
    """``value`` must be one of ``choices``."""
    choices = tuple(choices)
    require(value in choices, where, value, f"must be one of {', '.join(choices)}", "pick one of those")
