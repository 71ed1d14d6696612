"""CVMM (conditional vector-matrix multiply), naive reference.

sigma-MoE ("Approximating Two-Layer Feedforward Networks for Efficient
Transformers", Csordas, Irie & Schmidhuber 2023, App. B.1): for rows X[n] and a
selection S[n] of one of E matrices, out[n] = X[n] @ M[S[n]].

The reference gathers one (d_in, d_out) matrix per row and calls `torch.bmm`, so
`FlopCounterMode` sees exactly 2 * d_in * d_out FLOPs per row. The gate
weighting and the sum over the K selected experts of the weighted-reduce variant
are elementwise ops, which the counter does not see. Memory is R * d_in * d_out,
so this is for tests, FLOP verification and the `meta` device only.
"""

from __future__ import annotations

import torch


def cvmm_reference(x_rows: torch.Tensor, expert_index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """out[r] = x_rows[r] @ weights[expert_index[r]].

    Args:
        x_rows: (R, d_in).  expert_index: (R,) int64 in [0, E).  weights: (E, d_in, d_out).
    Returns:
        (R, d_out).
    """
    selected = weights[expert_index]  # (R, d_in, d_out)
    return torch.bmm(x_rows.unsqueeze(1), selected).squeeze(1)  # (R, d_out)


def cvmm_weighted_reduce_reference(
    h_rows: torch.Tensor, expert_index: torch.Tensor, gates: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """out[t] = sum_j gates[t, j] * h_rows[t*K + j] @ weights[expert_index[t*K + j]].

    Args:
        h_rows: (T*K, d_in) token-major.  expert_index: (T*K,).  gates: (T, K).
        weights: (E, d_in, d_out).
    Returns:
        (T, d_out).
    """
    tokens, top_k = gates.shape
    rows = cvmm_reference(h_rows, expert_index, weights)  # (T*K, d_out)
    weighted = rows.view(tokens, top_k, -1) * gates.unsqueeze(-1)  # (T, K, d_out)
    return weighted.sum(dim=1)  # (T, d_out)
