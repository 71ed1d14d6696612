"""What the kernel tests share: interpreter set-up, device, tolerance, comparison,
gradient collection and the bf16 cast.

Importing this module sets ``TRITON_INTERPRET=1`` on machines without CUDA, so
it must be imported before anything imports triton.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

if not torch.cuda.is_available():  # must precede the first triton import
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
# fp32 on the interpreter is exact up to summation order; on a GPU the tolerance covers TF32 (tl.dot).
TOLERANCE = 2e-2 if HAS_CUDA else 1e-4

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="triton not installed"))]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float, name: str) -> None:
    """Max abs error relative to the reference's scale (sparse tensors are densified)."""
    actual = actual.to_dense() if actual.is_sparse else actual
    expected = expected.to_dense() if expected.is_sparse else expected
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().clamp_min(1e-6)
    error = ((actual.float() - expected.float()).abs().max() / scale).item()
    assert error < tolerance, f"{name}: relative error {error:.2e} >= {tolerance:.0e}"


def grads_of(function: Callable[..., torch.Tensor], tensors: dict[str, torch.Tensor | None],
             **kwargs: object) -> dict[str, torch.Tensor]:
    """Output and input gradients of ``function(**tensors, **kwargs)``.

    Floating-point tensors become fresh leaves (index tensors and ``None``
    pass through); the output is backpropagated with a fixed random upstream
    gradient (seed 1). Returns ``"out"`` and ``"d_<name>"`` per floating input.
    """
    leaves = {k: v.detach().clone().requires_grad_(True) if v is not None and v.is_floating_point() else v
              for k, v in tensors.items()}
    out = function(**leaves, **kwargs)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out))
    return {"out": out.detach(),
            **{"d_" + k: v.grad for k, v in leaves.items() if v is not None and v.is_floating_point()}}


def to_bf16(tensors: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
    """Floating-point tensors cast to bfloat16; index tensors and ``None`` unchanged."""
    return {k: v.bfloat16() if v is not None and v.is_floating_point() else v for k, v in tensors.items()}
