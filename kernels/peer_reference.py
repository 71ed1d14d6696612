"""PEER expert computation, naive reference (gather + einsum).

PEER ("Mixture of A Million Experts", He 2024, arXiv 2407.04153, Eq. 4-5): every
expert i is a singleton MLP with one "down" row u_i and one "up" row v_i,

    e_i(x) = act(u_i . x) v_i,          y = sum_{h,k} g[h,k] e_{I[h,k]}(x).

With GLU experts (a third table W) the hidden unit is act(u_i . x) * (w_i . x).

This module gathers the [T, h, k, d] rows and contracts them with einsum, which
is what the public reference implementations do. It is slow and memory hungry,
but it is the ground truth for the faster paths and the FLOP accounting:
`torch.utils.flop_counter.FlopCounterMode` counts exactly 2*d FLOPs per (t, h, k)
for the down product, 2*d for the up product and 2*d more for the GLU gate
(the activation, the score weighting and the gather are not counted). It runs on
the `meta` device.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

ActivationFn = Callable[[torch.Tensor], torch.Tensor]


def _gelu_grad(s: torch.Tensor) -> torch.Tensor:
    """d/ds of exact (erf) GELU: Phi(s) + s * phi(s)."""
    cdf = 0.5 * (1.0 + torch.erf(s * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * s * s) * (1.0 / math.sqrt(2.0 * math.pi))
    return cdf + s * pdf


def _silu_grad(s: torch.Tensor) -> torch.Tensor:
    sig = torch.sigmoid(s)
    return sig * (1.0 + s * (1.0 - sig))


# name -> (activation, derivative); the derivative takes the pre-activation.
ACTIVATIONS: dict[str, tuple[ActivationFn, ActivationFn]] = {
    "relu": (F.relu, lambda s: (s > 0).to(s.dtype)),
    "gelu": (F.gelu, _gelu_grad),
    "silu": (F.silu, _silu_grad),
}


def activation_pair(name: str) -> tuple[ActivationFn, ActivationFn]:
    """Return (act, act') for an activation name, or raise naming the valid ones."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is not supported; use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def peer_experts_reference(
    x: torch.Tensor,
    expert_index: torch.Tensor,
    scores: torch.Tensor,
    down_table: torch.Tensor,
    up_table: torch.Tensor,
    activation: str = "gelu",
    gate_table: torch.Tensor | None = None,
    sparse_grad: bool = False,
) -> torch.Tensor:
    """Naive PEER expert mixture; differentiable through ordinary autograd.

    Args:
        x: (T, d) token inputs.
        expert_index: (T, h, k) int64 expert ids in [0, N).
        scores: (T, h, k) router weights g.
        down_table: (N, d) rows u_i.  up_table: (N, d) rows v_i.
        gate_table: optional (N, d) rows w_i for GLU experts.
        sparse_grad: gather through `F.embedding(sparse=True)` so the table
            gradients come back as sparse COO tensors.
    Returns:
        (T, d) = sum_{h,k} scores * act(u . x) [* (w . x)] * v.
    """
    act, _ = activation_pair(activation)
    down_rows = F.embedding(expert_index, down_table, sparse=sparse_grad)  # (T, h, k, d)
    hidden = act(torch.einsum("thkd,td->thk", down_rows, x))  # (T, h, k)
    if gate_table is not None:
        gate_rows = F.embedding(expert_index, gate_table, sparse=sparse_grad)  # (T, h, k, d)
        hidden = hidden * torch.einsum("thkd,td->thk", gate_rows, x)  # (T, h, k)
    up_rows = F.embedding(expert_index, up_table, sparse=sparse_grad)  # (T, h, k, d)
    return torch.einsum("thk,thkd->td", hidden * scores, up_rows)  # (T, d)
