"""Rotary position embedding (Su et al. 2021, "RoFormer"), the PyTorch formula.

Every block's attention rotates its queries and keys by :func:`apply_rotary` with the tables of
:func:`rotary_tables`, computed once per model forward (``models/transformer.py``). On the CPU in
float32 the C attention (``kernels/causal_attention.py``) applies the same formula, bit for bit,
as it reads the queries and keys; this module is its reference and its fallback.
"""

from __future__ import annotations

import torch

ROTARY_BASE = 10000.0


def rotary_tables(positions: int, head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The angles t·θ_i, θ_i = base^(-2i/D), as float32 tables (T, D) for :func:`apply_rotary`:
    (cos, cos) and (-sin, sin) for each pair (2i, 2i+1) of a head's features.

    Computed once per model forward and shared by every block's attention (:func:`apply_rotary`,
    or the C attention that applies the same formula as it reads the queries and keys).
    """
    inverse_frequency = ROTARY_BASE ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)
                                        / head_dim)  # (D/2,)
    angles = torch.arange(positions, device=device, dtype=torch.float32).unsqueeze(-1) * inverse_frequency
    cos, sin = angles.cos(), angles.sin()  # (T, D/2) each
    return torch.stack((cos, cos), dim=-1).flatten(-2), torch.stack((-sin, sin), dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) by angle t·θ_i, θ_i = base^(-2i/D) (Su et al. 2021, Eq. 34):
    (x[2i]·cos - x[2i+1]·sin, x[2i+1]·cos + x[2i]·sin).

    Computed as x·(cos, cos) + swap(x)·(-sin, sin), swap exchanging each pair: whole,
    contiguous tensors instead of eight strided half-tensor products, each element still
    two rounded products and one rounded sum (a + (-b) is a - b exactly, and sums commute),
    so the formula's result bit for bit. Elementwise only (no matmul), so FlopCounterMode
    counts 0, as the accounting does.

    Args:
        x: (B, H, T, D) queries or keys, D even.
        tables: float32 (cos, sin) of :func:`rotary_tables` for (T, D); computed here when None.
    """
    if tables is None:
        tables = rotary_tables(x.shape[-2], x.shape[-1], x.device)
    cos, signed_sin = tables[0].to(x.dtype), tables[1].to(x.dtype)  # (T, D) each
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (B, H, T, D): x[2i+1], x[2i], ...
    return x * cos + swapped * signed_sin
