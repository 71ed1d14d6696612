"""CVMM, best pure-PyTorch path (CPU default): sort rows by expert, one matmul per expert.

sigma-MoE (Csordas et al. 2023, App. B.1): rows are sorted by their selected
matrix so that each expert's rows form one contiguous segment; each segment is
one dense (rows_e, d_in) @ (d_in, d_out) matmul. Experts with no rows cost
nothing. No (R, d_in, d_out) gather is ever built, unlike the reference.
"""

from __future__ import annotations

import torch


def sort_by_expert(expert_index: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (order (R,), counts (E,)): order sorts the rows by expert (stable)."""
    order = torch.argsort(expert_index, stable=True)  # (R,)
    counts = torch.bincount(expert_index, minlength=num_experts)  # (E,)
    return order, counts


def segment_matmul(rows_sorted: torch.Tensor, weights: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """(P, a) rows sorted by expert, weights (E, a, b) -> (P, b), segment e times weights[e]."""
    out = rows_sorted.new_empty(rows_sorted.shape[0], weights.shape[2])  # (P, b)
    start = 0
    for expert, count in enumerate(counts):
        if count:
            out[start : start + count] = rows_sorted[start : start + count] @ weights[expert]
            start += count
    return out


def segment_weight_grad(left_sorted: torch.Tensor, right_sorted: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """(P, a), (P, b) sorted by expert -> (E, a, b), dW[e] = left_e^T @ right_e (zero if empty)."""
    grad = left_sorted.new_zeros(len(counts), left_sorted.shape[1], right_sorted.shape[1])  # (E, a, b)
    start = 0
    for expert, count in enumerate(counts):
        if count:
            grad[expert] = left_sorted[start : start + count].T @ right_sorted[start : start + count]
            start += count
    return grad


def cvmm_forward_torch(x_rows: torch.Tensor, expert_index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """out[r] = x_rows[r] @ weights[expert_index[r]];  (R, d_in) -> (R, d_out)."""
    order, counts = sort_by_expert(expert_index, weights.shape[0])
    out_sorted = segment_matmul(x_rows[order], weights, counts.tolist())  # (R, d_out)
    out = torch.empty_like(out_sorted)
    out[order] = out_sorted
    return out


def cvmm_backward_torch(
    grad_out: torch.Tensor, x_rows: torch.Tensor, expert_index: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """dx[r] = dout[r] @ W[e_r]^T (R, d_in);  dW[e] = sum_{r in e} x[r]^T dout[r] (E, d_in, d_out)."""
    order, counts = sort_by_expert(expert_index, weights.shape[0])
    count_list = counts.tolist()
    grad_sorted = grad_out[order]  # (R, d_out)
    grad_x = torch.empty_like(x_rows)
    grad_x[order] = segment_matmul(grad_sorted, weights.transpose(1, 2), count_list)
    grad_weights = segment_weight_grad(x_rows[order], grad_sorted, count_list)
    return grad_x, grad_weights


def cvmm_weighted_reduce_forward_torch(
    h_rows: torch.Tensor, expert_index: torch.Tensor, gates: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """out[t] = sum_j gates[t, j] h_rows[t*K+j] @ W[e_{t*K+j}];  (T*K, d_in) -> (T, d_out)."""
    tokens, top_k = gates.shape
    order, counts = sort_by_expert(expert_index, weights.shape[0])
    scaled = h_rows[order] * gates.reshape(-1)[order].unsqueeze(-1)  # (T*K, d_in)
    rows = segment_matmul(scaled, weights, counts.tolist())  # (T*K, d_out)
    out = torch.zeros(tokens, weights.shape[2], device=h_rows.device, dtype=torch.float32)
    out.index_add_(0, order // top_k, rows.float())
    return out.to(h_rows.dtype)


def cvmm_weighted_reduce_backward_torch(
    grad_out: torch.Tensor, h_rows: torch.Tensor, expert_index: torch.Tensor, gates: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """With z[r] = dout[t_r] @ W[e_r]^T: dh[r] = g_r z[r], dgates[r] = <h[r], z[r]>,
    dW[e] = sum_{r in e} (g_r h[r])^T dout[t_r].  Returns dh (T*K, d_in), dgates (T, K), dW."""
    top_k = gates.shape[1]
    order, counts = sort_by_expert(expert_index, weights.shape[0])
    count_list = counts.tolist()
    gate_flat = gates.reshape(-1)  # (T*K,)
    grad_sorted = grad_out[order // top_k]  # (T*K, d_out)
    z = torch.empty_like(h_rows)  # (T*K, d_in)
    z[order] = segment_matmul(grad_sorted, weights.transpose(1, 2), count_list)
    grad_h = z * gate_flat.unsqueeze(-1)
    grad_gates = (h_rows.float() * z.float()).sum(-1).view_as(gates).to(gates.dtype)
    scaled = h_rows[order] * gate_flat[order].unsqueeze(-1)  # (T*K, d_in)
    grad_weights = segment_weight_grad(scaled, grad_sorted, count_list)
    return grad_h, grad_gates, grad_weights
