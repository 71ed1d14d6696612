"""Transformer backbone, feed-forward layer families, and their configs.

Importing ``models`` or ``models.config`` does not import torch: the configs
and their FLOP/parameter formulas are torch-free so that planning stays fast.
The torch modules are imported on first use of :func:`build_model` or
:func:`build_ffw`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_model", "build_ffw"]


def __getattr__(name: str) -> Any:
    if name in ("build_model", "build_ffw"):
        from models import builder

        return getattr(builder, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
