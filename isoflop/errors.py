"""The one exception type for mistakes a user can fix (see :mod:`models.errors`),
and how a failed file-system call becomes one.

``UserError`` is defined in ``models.errors``, which both packages can import
without a cycle (``isoflop`` depends on ``models``); this module names the
same class so the ``isoflop`` commands raise and catch one type.

:func:`file_system_error` turns an ``OSError`` that the user's machine caused
(a full disk, a read-only or unwritable folder, a file where a folder should
be) into a one-line :class:`UserError` that names the path and the fix; any
other ``OSError`` is an internal error and keeps its traceback.
:func:`listed` keeps a one-line message short when it names many things.
"""

from __future__ import annotations

import errno
import os

from models.errors import UserError

__all__ = ["USER_FILE_SYSTEM_ERRNOS", "UserError", "file_system_error", "is_user_file_system_error"]

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_IN_THE_WAY = (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY)
USER_FILE_SYSTEM_ERRNOS = frozenset((*_FULL, *_NOT_WRITABLE, *_IN_THE_WAY, errno.ENOLCK))
"""errno values that say something about the user's files or machine, not about isoflop."""


def is_user_file_system_error(error: BaseException) -> bool:
    """Whether ``error`` is an OSError with one of :data:`USER_FILE_SYSTEM_ERRNOS`."""
    return isinstance(error, OSError) and error.errno in USER_FILE_SYSTEM_ERRNOS


def file_system_error(error: OSError, doing: str) -> UserError:
    """The one-line error for ``error`` raised while trying to ``doing`` (``"write the run folder X"``).

    Re-raises ``error`` itself when its errno is not one a user can fix.
    """
    if not is_user_file_system_error(error):
        raise error
    where = f" ({error.filename})" if error.filename else ""
    reason = error.strerror or os.strerror(error.errno or 0)
    if error.errno in _FULL:
        fix = "free space (or raise the quota) on that file system, then run the same command again"
    elif error.errno in _NOT_WRITABLE:
        fix = "make the folder writable by this user, or work on a writable copy"
    elif error.errno == errno.ENOLCK:
        fix = "use a file system that supports file locks (mount NFS/Lustre with locking)"
    else:
        fix = "move the file or folder that is in the way aside"
    return UserError(f"cannot {doing}{where}: {reason}; {fix}")


def listed(items: list[str], shown: int) -> str:
    """``a, b, c and 4 more``: the first ``shown`` of ``items`` and how many are left out."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more
