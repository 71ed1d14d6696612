"""The one exception type for mistakes a user can fix.

Every command catches :class:`UserError` at the CLI boundary and prints its
message as a single line on stderr, then exits with status 2 and no
traceback. Anything else that escapes is an internal error and keeps its
traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input, with the fix in the message.

    The message must fit on one line and say what is wrong and how to fix it,
    e.g. ``"--budget: 'abc' is not a number; pass FLOPs such as 6e18"``.
    """

    exit_status: int = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
        self.message = " ".join(message.split())
