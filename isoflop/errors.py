"""The one exception type for mistakes a user can fix (see :mod:`models.errors`).

Defined in ``models.errors``, which both packages can import without a cycle
(``isoflop`` depends on ``models``); this module names the same class so the
``isoflop`` commands raise and catch one type.
"""

from __future__ import annotations

from models.errors import UserError

__all__ = ["UserError"]
