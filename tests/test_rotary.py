"""The rotary embedding is Su et al.'s pairwise rotation, bit for bit, in every precision."""

from __future__ import annotations

import pytest
import torch

from kernels.rotary import ROTARY_BASE, apply_rotary, rotary_tables


def pairwise_rotation(x: torch.Tensor) -> torch.Tensor:
    """Su et al. 2021, Eq. 34, literally: (x_2i cos - x_2i+1 sin, x_2i sin + x_2i+1 cos)."""
    positions, head_dim = x.shape[-2], x.shape[-1]
    theta = ROTARY_BASE ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.arange(positions, dtype=torch.float32).unsqueeze(-1) * theta  # (T, D/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("batch,heads,positions,head_dim", [(16, 3, 128, 16), (2, 2, 37, 8), (1, 1, 1, 2),
                                                           (4, 5, 64, 6), (3, 7, 128, 26)])
def test_rotation_is_the_pairwise_formula_forward_and_backward(batch, heads, positions, head_dim, dtype):
    generator = torch.Generator().manual_seed(positions + head_dim)
    # q and k as the attention makes them: parts of one projection, viewed per head (strided)
    qkv = (10 * torch.randn(batch, positions, 3 * heads * head_dim, generator=generator)).to(dtype)
    qkv.requires_grad_()
    query, key, _ = (part.view(batch, positions, heads, head_dim).transpose(1, 2)
                     for part in qkv.split(heads * head_dim, dim=-1))
    upstream = torch.randn(batch, heads, positions, head_dim, generator=generator).to(dtype)
    tables = rotary_tables(positions, head_dim, qkv.device)
    for x in (query, key):
        rotated, reference = apply_rotary(x, tables), pairwise_rotation(x)
        assert rotated.dtype == dtype and torch.equal(rotated, reference)
        assert torch.equal(apply_rotary(x), rotated)  # tables computed on the spot
        (grad,), (reference_grad,) = (torch.autograd.grad(y, qkv, upstream) for y in (rotated, reference))
        assert torch.equal(grad, reference_grad)
