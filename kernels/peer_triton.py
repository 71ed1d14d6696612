"""PEER expert computation, fused Triton kernels (forward and backward).

Math as in `kernels.peer_reference` (PEER, He 2024, arXiv 2407.04153, Eq. 4-5):
y[t] = sum_e g[t,e] act(<u_{i(t,e)}, x[t]>) [<w_i, x[t]>] v_{i(t,e)}, e = (h, k).

One program handles one token and all its E = h*k experts. The gathered rows
are streamed through registers in (E, BLOCK_D) tiles and never written to
memory; the only per-(t, e) tensors in memory are scalars (pre-activations,
score gradients). Backward recomputes nothing but a dot product per (t, e) and
accumulates dU, dV (, dW) row-wise with fp32 atomic adds, into a dense (N, d)
buffer or, for sparse gradients, a compact buffer over the touched rows.
Importing this module imports triton; set TRITON_INTERPRET=1 before that to run
on CPU (fp32 only).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.peer_torch import finish_table_grad, table_grad_rows

ACTIVATION_CODES = {"relu": 0, "gelu": 1, "silu": 2}
# Elements of one (E, BLOCK_D) register tile.
TILE_ELEMENTS = 8192


@triton.jit
def _act(s, ACT: tl.constexpr):
    if ACT == 0:
        out = tl.maximum(s, 0.0)
    elif ACT == 1:
        out = 0.5 * s * (1.0 + tl.erf(s * 0.7071067811865476))
    else:
        out = s * tl.sigmoid(s)
    return out


@triton.jit
def _act_grad(s, ACT: tl.constexpr):
    if ACT == 0:
        out = tl.where(s > 0.0, 1.0, 0.0)
    elif ACT == 1:
        cdf = 0.5 * (1.0 + tl.erf(s * 0.7071067811865476))
        out = cdf + s * 0.3989422804014327 * tl.exp(-0.5 * s * s)
    else:
        sig = tl.sigmoid(s)
        out = sig * (1.0 + s * (1.0 - sig))
    return out


@triton.jit
def _peer_fwd_kernel(
    X, IDX, G, U, V, W, Y, S_OUT, WPRE_OUT,
    D, E, stride_x, stride_u, stride_v, stride_w, stride_y,
    ACT: tl.constexpr, GLU: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    offs_e = tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    idx = tl.load(IDX + t * E + offs_e, mask=mask_e, other=0)  # (BLOCK_E,) int64
    g = tl.load(G + t * E + offs_e, mask=mask_e, other=0.0).to(tl.float32)
    s = tl.zeros([BLOCK_E], dtype=tl.float32)
    w = tl.zeros([BLOCK_E], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        mask_ed = mask_e[:, None] & mask_d[None, :]
        xc = tl.load(X + t * stride_x + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        u = tl.load(U + idx[:, None] * stride_u + offs_d[None, :], mask=mask_ed, other=0.0).to(tl.float32)
        s += tl.sum(u * xc[None, :], axis=1)
        if GLU:
            wr = tl.load(W + idx[:, None] * stride_w + offs_d[None, :], mask=mask_ed, other=0.0).to(tl.float32)
            w += tl.sum(wr * xc[None, :], axis=1)
    tl.store(S_OUT + t * E + offs_e, s, mask=mask_e)
    hidden = _act(s, ACT)
    if GLU:
        tl.store(WPRE_OUT + t * E + offs_e, w, mask=mask_e)
        hidden = hidden * w
    coef = tl.where(mask_e, hidden * g, 0.0)  # (BLOCK_E,)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        v = tl.load(V + idx[:, None] * stride_v + offs_d[None, :], mask=mask_e[:, None] & mask_d[None, :], other=0.0)
        y = tl.sum(coef[:, None] * v.to(tl.float32), axis=0)  # (BLOCK_D,)
        tl.store(Y + t * stride_y + offs_d, y.to(Y.dtype.element_ty), mask=mask_d)


@triton.jit
def _peer_bwd_kernel(
    DY, X, IDX, SLOT, G, U, V, W, S, WPRE,
    DX, DG, DU, DV, DW,
    D, E, stride_dy, stride_x, stride_u, stride_v, stride_w, stride_dx,
    ACT: tl.constexpr, GLU: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    offs_e = tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    idx = tl.load(IDX + t * E + offs_e, mask=mask_e, other=0)  # (BLOCK_E,) table rows
    slot = tl.load(SLOT + t * E + offs_e, mask=mask_e, other=0)  # rows of the grad buffers
    g = tl.load(G + t * E + offs_e, mask=mask_e, other=0.0).to(tl.float32)
    s = tl.load(S + t * E + offs_e, mask=mask_e, other=0.0)
    # r = <v_i, dy>
    r = tl.zeros([BLOCK_E], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        dyc = tl.load(DY + t * stride_dy + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        v = tl.load(V + idx[:, None] * stride_v + offs_d[None, :], mask=mask_e[:, None] & mask_d[None, :], other=0.0)
        r += tl.sum(v.to(tl.float32) * dyc[None, :], axis=1)
    hidden = _act(s, ACT)
    d_hidden = g * r
    if GLU:
        w = tl.load(WPRE + t * E + offs_e, mask=mask_e, other=0.0)
        out_unit = hidden * w
        d_gate_pre = tl.where(mask_e, d_hidden * hidden, 0.0)
        d_pre = tl.where(mask_e, d_hidden * w * _act_grad(s, ACT), 0.0)
    else:
        out_unit = hidden
        d_pre = tl.where(mask_e, d_hidden * _act_grad(s, ACT), 0.0)
    tl.store(DG + t * E + offs_e, (out_unit * r).to(DG.dtype.element_ty), mask=mask_e)
    coef_up = tl.where(mask_e, g * out_unit, 0.0)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        mask_ed = mask_e[:, None] & mask_d[None, :]
        xc = tl.load(X + t * stride_x + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        dyc = tl.load(DY + t * stride_dy + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        u = tl.load(U + idx[:, None] * stride_u + offs_d[None, :], mask=mask_ed, other=0.0).to(tl.float32)
        dx = tl.sum(d_pre[:, None] * u, axis=0)  # (BLOCK_D,)
        grad_offs = slot[:, None] * D + offs_d[None, :]
        tl.atomic_add(DU + grad_offs, d_pre[:, None] * xc[None, :], mask=mask_ed)
        tl.atomic_add(DV + grad_offs, coef_up[:, None] * dyc[None, :], mask=mask_ed)
        if GLU:
            wr = tl.load(W + idx[:, None] * stride_w + offs_d[None, :], mask=mask_ed, other=0.0).to(tl.float32)
            dx += tl.sum(d_gate_pre[:, None] * wr, axis=0)
            tl.atomic_add(DW + grad_offs, d_gate_pre[:, None] * xc[None, :], mask=mask_ed)
        tl.store(DX + t * stride_dx + offs_d, dx.to(DX.dtype.element_ty), mask=mask_d)


def _blocks(experts: int, dim: int) -> tuple[int, int]:
    block_e = triton.next_power_of_2(experts)
    block_d = max(16, min(triton.next_power_of_2(dim), TILE_ELEMENTS // block_e))
    return block_e, block_d


def peer_forward_triton(
    x: torch.Tensor,
    expert_index: torch.Tensor,
    scores: torch.Tensor,
    down_table: torch.Tensor,
    up_table: torch.Tensor,
    gate_table: torch.Tensor | None,
    activation: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as `kernels.peer_torch.peer_forward_torch` (flat (T, E) index)."""
    tokens, experts = expert_index.shape
    dim = x.shape[1]
    x = x.contiguous()
    index = expert_index.contiguous()
    scores = scores.contiguous()
    down_table, up_table = down_table.contiguous(), up_table.contiguous()
    gate = gate_table.contiguous() if gate_table is not None else down_table
    out = torch.empty_like(x)
    pre_down = torch.empty(tokens, experts, device=x.device, dtype=torch.float32)
    pre_gate = torch.empty(tokens if gate_table is not None else 0, experts, device=x.device, dtype=torch.float32)
    if tokens == 0:
        return out, pre_down, pre_gate
    block_e, block_d = _blocks(experts, dim)
    _peer_fwd_kernel[(tokens,)](
        x, index, scores, down_table, up_table, gate, out, pre_down, pre_gate if gate_table is not None else pre_down,
        dim, experts, x.stride(0), down_table.stride(0), up_table.stride(0), gate.stride(0), out.stride(0),
        ACT=ACTIVATION_CODES[activation], GLU=gate_table is not None, BLOCK_E=block_e, BLOCK_D=block_d,
    )
    return out, pre_down, pre_gate


def peer_backward_triton(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    expert_index: torch.Tensor,
    scores: torch.Tensor,
    down_table: torch.Tensor,
    up_table: torch.Tensor,
    gate_table: torch.Tensor | None,
    pre_down: torch.Tensor,
    pre_gate: torch.Tensor,
    activation: str,
    sparse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Same contract as `kernels.peer_torch.peer_backward_torch`."""
    tokens, experts = expert_index.shape
    dim = x.shape[1]
    grad_out, x = grad_out.contiguous(), x.contiguous()
    index, scores = expert_index.contiguous(), scores.contiguous()
    down_table, up_table = down_table.contiguous(), up_table.contiguous()
    gate = gate_table.contiguous() if gate_table is not None else down_table
    touched_rows, slot, rows = table_grad_rows(index, down_table.shape[0], sparse)
    buffers = [torch.zeros(rows, dim, device=x.device, dtype=torch.float32) for _ in range(2)]
    grad_gate = torch.zeros(rows, dim, device=x.device, dtype=torch.float32) if gate_table is not None else None
    grad_x = torch.empty_like(x)
    grad_scores = torch.empty(tokens, experts, device=x.device, dtype=scores.dtype)
    if tokens:
        block_e, block_d = _blocks(experts, dim)
        _peer_bwd_kernel[(tokens,)](
            grad_out, x, index, slot.contiguous(), scores, down_table, up_table, gate, pre_down,
            pre_gate if gate_table is not None else pre_down,
            grad_x, grad_scores, buffers[0], buffers[1], grad_gate if grad_gate is not None else buffers[0],
            dim, experts, grad_out.stride(0), x.stride(0), down_table.stride(0), up_table.stride(0),
            gate.stride(0), grad_x.stride(0),
            ACT=ACTIVATION_CODES[activation], GLU=gate_table is not None, BLOCK_E=block_e, BLOCK_D=block_d,
        )
    return (
        grad_x,
        grad_scores,
        finish_table_grad(buffers[0], down_table, touched_rows),
        finish_table_grad(buffers[1], up_table, touched_rows),
        finish_table_grad(grad_gate, gate_table, touched_rows) if grad_gate is not None else None,
    )
