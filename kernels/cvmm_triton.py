"""CVMM (conditional vector-matrix multiply), Triton kernels.

sigma-MoE (Csordas, Irie & Schmidhuber 2023, App. B.1): rows are sorted by the
matrix they select, so a block of BLOCK_M consecutive sorted rows touches one
expert (rarely a few); the block loops over the experts between its first and
last row and multiplies each with a tensor-core `tl.dot`.

Two kernels cover forward and both gradients of `cvmm` and of the
weighted-reduce variant:

* `_cvmm_kernel`: Y[out_row[p]] (+)= scale[p] * X[in_row[p]] @ M[expert[p]] for
  sorted positions p; M may be a transposed view (input gradient), `ATOMIC`
  accumulates rows of the same token (weighted reduce, fp32 output).
* `_cvmm_weight_grad_kernel`: dM[e] = sum_{p in segment e} (scale[p] X[in_row[p]])^T
  DY[out_row[p]]; one program per (expert, tile), no atomics, zero for
  experts without rows.

Importing this module imports triton; set TRITON_INTERPRET=1 before that to run
on CPU (fp32 only, one autotune config).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.cvmm_torch import sort_by_expert

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _configs() -> list[triton.Config]:
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in [(64, 64, 32, 4, 3), (128, 64, 32, 4, 3), (64, 128, 32, 4, 3), (128, 128, 32, 8, 3)]
    ]


@triton.autotune(configs=_configs(), key=["K_DIM", "N_DIM"], reset_to_zero=["Y"])
@triton.jit
def _cvmm_kernel(
    X, M, Y, IN_ROW, OUT_ROW, EXPERT, SCALE,
    P, K_DIM, N_DIM, stride_xm, stride_me, stride_mk, stride_mn, stride_ym,
    HAS_SCALE: tl.constexpr, ATOMIC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_p = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_p = offs_p < P
    in_row = tl.load(IN_ROW + offs_p, mask=mask_p, other=0)  # (BLOCK_M,) int64
    out_row = tl.load(OUT_ROW + offs_p, mask=mask_p, other=0)
    expert = tl.load(EXPERT + offs_p, mask=mask_p, other=-1)
    first = tl.min(tl.where(mask_p, expert, 1 << 62))
    last = tl.max(expert)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N_DIM
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for e in range(first, last + 1):
        selected = mask_p & (expert == e)
        if tl.sum(selected.to(tl.int32)) > 0:
            part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for k0 in range(0, K_DIM, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                mask_k = offs_k < K_DIM
                x = tl.load(X + in_row[:, None] * stride_xm + offs_k[None, :],
                            mask=selected[:, None] & mask_k[None, :], other=0.0)  # (BLOCK_M, BLOCK_K)
                m = tl.load(M + e * stride_me + offs_k[:, None] * stride_mk + offs_n[None, :] * stride_mn,
                            mask=mask_k[:, None] & mask_n[None, :], other=0.0)  # (BLOCK_K, BLOCK_N)
                part += tl.dot(x, m)
            acc = tl.where(selected[:, None], part, acc)
    if HAS_SCALE:
        acc = acc * tl.load(SCALE + offs_p, mask=mask_p, other=0.0).to(tl.float32)[:, None]
    y_ptr = Y + out_row[:, None] * stride_ym + offs_n[None, :]
    mask = mask_p[:, None] & mask_n[None, :]
    if ATOMIC:
        tl.atomic_add(y_ptr, acc, mask=mask)
    else:
        tl.store(y_ptr, acc.to(Y.dtype.element_ty), mask=mask)


@triton.autotune(configs=_configs(), key=["K_DIM", "N_DIM"])
@triton.jit
def _cvmm_weight_grad_kernel(
    X, DY, DM, IN_ROW, OUT_ROW, SCALE, SEGMENT_START,
    K_DIM, N_DIM, stride_xm, stride_dym, stride_dme, stride_dmk,
    HAS_SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    e = tl.program_id(0).to(tl.int64)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_k = offs_k < K_DIM
    mask_n = offs_n < N_DIM
    lo = tl.load(SEGMENT_START + e)
    hi = tl.load(SEGMENT_START + e + 1)
    acc = tl.zeros([BLOCK_K, BLOCK_N], dtype=tl.float32)
    for p0 in range(lo, hi, BLOCK_M):
        offs_p = p0 + tl.arange(0, BLOCK_M)
        mask_p = offs_p < hi
        in_row = tl.load(IN_ROW + offs_p, mask=mask_p, other=0)
        out_row = tl.load(OUT_ROW + offs_p, mask=mask_p, other=0)
        xt = tl.load(X + in_row[None, :] * stride_xm + offs_k[:, None],
                     mask=mask_k[:, None] & mask_p[None, :], other=0.0)  # (BLOCK_K, BLOCK_M)
        dy = tl.load(DY + out_row[:, None] * stride_dym + offs_n[None, :],
                     mask=mask_p[:, None] & mask_n[None, :], other=0.0)  # (BLOCK_M, BLOCK_N)
        if HAS_SCALE:
            scale = tl.load(SCALE + offs_p, mask=mask_p, other=0.0).to(tl.float32)
            xt = (xt.to(tl.float32) * scale[None, :]).to(dy.dtype)
        acc += tl.dot(xt, dy)
    tl.store(DM + e * stride_dme + offs_k[:, None] * stride_dmk + offs_n[None, :], acc.to(DM.dtype.element_ty),
             mask=mask_k[:, None] & mask_n[None, :])


def _launch_cvmm(x: torch.Tensor, matrices: torch.Tensor, out: torch.Tensor, in_row: torch.Tensor,
                 out_row: torch.Tensor, expert_sorted: torch.Tensor, scale: torch.Tensor | None, atomic: bool) -> None:
    """out[out_row[p]] (+)= scale[p] x[in_row[p]] @ matrices[expert_sorted[p]]; matrices (E, K, N) any strides."""
    positions = in_row.numel()
    if positions == 0:
        return
    k_dim, n_dim = matrices.shape[1], matrices.shape[2]

    def grid(meta: dict) -> tuple[int, int]:
        return triton.cdiv(positions, meta["BLOCK_M"]), triton.cdiv(n_dim, meta["BLOCK_N"])

    _cvmm_kernel[grid](
        x, matrices, out, in_row, out_row, expert_sorted, scale if scale is not None else x,
        positions, k_dim, n_dim, x.stride(0), matrices.stride(0), matrices.stride(1), matrices.stride(2),
        out.stride(0), HAS_SCALE=scale is not None, ATOMIC=atomic,
    )


def _weight_grad(x: torch.Tensor, grad_rows: torch.Tensor, in_row: torch.Tensor, out_row: torch.Tensor,
                 scale: torch.Tensor | None, counts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(E, d_in, d_out): sum over each expert's sorted segment of (scale x[in_row])^T grad_rows[out_row]."""
    experts, k_dim, n_dim = weights.shape
    segment_start = torch.zeros(experts + 1, device=x.device, dtype=torch.int64)
    segment_start[1:] = torch.cumsum(counts, 0)
    grad = torch.empty(experts, k_dim, n_dim, device=x.device, dtype=weights.dtype)

    def grid(meta: dict) -> tuple[int, int, int]:
        return experts, triton.cdiv(k_dim, meta["BLOCK_K"]), triton.cdiv(n_dim, meta["BLOCK_N"])

    _cvmm_weight_grad_kernel[grid](
        x, grad_rows, grad, in_row, out_row, scale if scale is not None else x, segment_start,
        k_dim, n_dim, x.stride(0), grad_rows.stride(0), grad.stride(0), grad.stride(1), HAS_SCALE=scale is not None,
    )
    return grad


def cvmm_forward_triton(x_rows: torch.Tensor, expert_index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """out[r] = x_rows[r] @ weights[expert_index[r]];  (R, d_in) -> (R, d_out)."""
    x_rows = x_rows.contiguous()
    order, _ = sort_by_expert(expert_index, weights.shape[0])
    out = torch.empty(x_rows.shape[0], weights.shape[2], device=x_rows.device, dtype=x_rows.dtype)
    _launch_cvmm(x_rows, weights, out, order, order, expert_index[order], None, atomic=False)
    return out


def cvmm_backward_triton(grad_out: torch.Tensor, x_rows: torch.Tensor, expert_index: torch.Tensor,
                         weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dx = dout @ W[e]^T (R, d_in), dW[e] = sum x^T dout (E, d_in, d_out)."""
    grad_out, x_rows = grad_out.contiguous(), x_rows.contiguous()
    order, counts = sort_by_expert(expert_index, weights.shape[0])
    grad_x = torch.empty_like(x_rows)
    _launch_cvmm(grad_out, weights.transpose(1, 2), grad_x, order, order, expert_index[order], None, atomic=False)
    return grad_x, _weight_grad(x_rows, grad_out, order, order, None, counts, weights)


def cvmm_weighted_reduce_forward_triton(h_rows: torch.Tensor, expert_index: torch.Tensor, gates: torch.Tensor,
                                        weights: torch.Tensor) -> torch.Tensor:
    """out[t] = sum_j gates[t, j] h_rows[t*K+j] @ W[e];  (T*K, d_in) -> (T, d_out), fp32 atomic accumulation."""
    tokens, top_k = gates.shape
    h_rows = h_rows.contiguous()
    order, _ = sort_by_expert(expert_index, weights.shape[0])
    out = torch.zeros(tokens, weights.shape[2], device=h_rows.device, dtype=torch.float32)
    gate_sorted = gates.reshape(-1)[order].contiguous()
    _launch_cvmm(h_rows, weights, out, order, order // top_k, expert_index[order], gate_sorted, atomic=True)
    return out.to(h_rows.dtype)


def cvmm_weighted_reduce_backward_triton(
    grad_out: torch.Tensor, h_rows: torch.Tensor, expert_index: torch.Tensor, gates: torch.Tensor,
    weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z[r] = dout[t_r] @ W[e_r]^T; dh = g z (T*K, d_in), dgates = <h, z> (T, K), dW[e] = sum (g h)^T dout."""
    top_k = gates.shape[1]
    grad_out, h_rows = grad_out.contiguous(), h_rows.contiguous()
    order, counts = sort_by_expert(expert_index, weights.shape[0])
    token_sorted = order // top_k
    z = torch.empty_like(h_rows)
    _launch_cvmm(grad_out, weights.transpose(1, 2), z, token_sorted, order, expert_index[order], None, atomic=False)
    gate_flat = gates.reshape(-1)
    grad_h = z * gate_flat.unsqueeze(-1)
    grad_gates = (h_rows.float() * z.float()).sum(-1).view_as(gates).to(gates.dtype)
    gate_sorted = gate_flat[order].contiguous()
    grad_weights = _weight_grad(h_rows, grad_out, order, token_sorted, gate_sorted, counts, weights)
    return grad_h, grad_gates, grad_weights
