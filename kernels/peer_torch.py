"""PEER expert computation, best pure-PyTorch path (CPU default).

Same math as `kernels.peer_reference` (PEER, He 2024, Eq. 4-5), but never holds
the gathered [T, h, k, d] rows for all tokens at once. Tokens are processed in
chunks whose gathered rows stay under `CHUNK_ELEMENTS` elements:

forward, per chunk:  s = <u_i, x> via one gather + bmm,  y = EmbeddingBag(V,
    per-sample weights g * act(s))   -- the up rows are never gathered.
backward, per chunk: r = <v_i, dy> (gather + bmm), dx = EmbeddingBag(U, ds);
    then dU[i] += ds * x and dV[i] += g * act(s) * dy for all tokens at once as a
    sparse (rows x T) CSR matrix times x / dy (no (T*h*k, d) outer products).

Only the pre-activations (T, h*k) are saved between forward and backward. Table
gradients are accumulated in fp32, densely (N, d) or, with `sparse=True`, in a
compact buffer over the touched rows that is returned as a sparse COO tensor.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F

from kernels.peer_reference import activation_pair

# Gathered rows per chunk (elements); 2**22 fp32 = 16 MiB.
CHUNK_ELEMENTS = 1 << 22


def chunk_tokens(tokens: int, experts_per_token: int, dim: int) -> int:
    """Tokens per chunk so that a gathered (chunk, h*k, d) block fits CHUNK_ELEMENTS."""
    return max(1, min(tokens, CHUNK_ELEMENTS // max(1, experts_per_token * dim)))


def peer_forward_torch(
    x: torch.Tensor,
    expert_index: torch.Tensor,
    scores: torch.Tensor,
    down_table: torch.Tensor,
    up_table: torch.Tensor,
    gate_table: torch.Tensor | None,
    activation: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward for flat inputs.

    Args:
        x: (T, d).  expert_index: (T, E) with E = h*k.  scores: (T, E).
        down_table, up_table, gate_table: (N, d).
    Returns:
        y (T, d); pre-activation u.x (T, E) fp32; gate pre-activation w.x (T, E)
        fp32, or an empty tensor without GLU.
    """
    act, _ = activation_pair(activation)
    tokens, experts = expert_index.shape
    dim = x.shape[1]
    out = torch.empty_like(x)  # (T, d)
    pre_down = torch.empty(tokens, experts, device=x.device, dtype=torch.float32)
    pre_gate = torch.empty(tokens if gate_table is not None else 0, experts, device=x.device, dtype=torch.float32)
    step = chunk_tokens(tokens, experts, dim)
    for start in range(0, tokens, step):
        sl = slice(start, start + step)
        index = expert_index[sl]  # (c, E)
        x_chunk = x[sl].unsqueeze(-1)  # (c, d, 1)
        s = torch.bmm(F.embedding(index, down_table), x_chunk).squeeze(-1).float()  # (c, E)
        pre_down[sl] = s
        hidden = act(s)
        if gate_table is not None:
            w = torch.bmm(F.embedding(index, gate_table), x_chunk).squeeze(-1).float()  # (c, E)
            pre_gate[sl] = w
            hidden = hidden * w
        weight = (hidden * scores[sl].float()).to(up_table.dtype)  # (c, E)
        out[sl] = F.embedding_bag(index, up_table, per_sample_weights=weight, mode="sum")  # (c, d)
    return out, pre_down, pre_gate


def finish_table_grad(
    buffer: torch.Tensor, table: torch.Tensor, touched_rows: torch.Tensor | None
) -> torch.Tensor:
    """Cast an fp32 accumulator to the table's dtype; sparse COO over touched rows if given."""
    values = buffer.to(table.dtype)
    if touched_rows is None:
        return values  # (N, d)
    return torch.sparse_coo_tensor(touched_rows.unsqueeze(0), values, table.shape, is_coalesced=True,
                                   check_invariants=False)


def table_grad_rows(
    expert_index: torch.Tensor, table_rows: int, sparse: bool
) -> tuple[torch.Tensor | None, torch.Tensor, int]:
    """Rows of the table-gradient buffers and each (t, e) pair's row in them.

    Dense: the buffer is the whole (N, d) table, so the slot is the expert id.
    Sparse: a compact buffer over the touched rows (sorted ids), slot = position in it.
    Returns:
        touched_rows (R,) int64 or None (dense), slot (T, E) int64, rows R (N when dense).
    """
    if not sparse:
        return None, expert_index, table_rows
    touched_rows, slot = torch.unique(expert_index, sorted=True, return_inverse=True)
    return touched_rows, slot, touched_rows.numel()


def row_accumulator(slot: torch.Tensor, rows: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Returns acc(coef (T, E), src (T, d)) -> (rows, d) fp32 with out[slot[t, e]] += coef[t, e] * src[t].

    Implemented as one sparse (rows x T) CSR matrix times src: no (T*E, d) outer products are built,
    and the sort that groups (t, e) pairs by row is shared by every table gradient.
    """
    tokens, experts = slot.shape
    flat = slot.reshape(-1)  # (T*E,)
    order = torch.argsort(flat, stable=True)  # (t, e) pairs grouped by row, t ascending within a row
    columns = order // experts  # token of each pair
    crow = torch.zeros(rows + 1, device=slot.device, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(flat, minlength=rows), 0)

    def accumulate(coef: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            matrix = torch.sparse_csr_tensor(crow, columns, coef.reshape(-1)[order].float(), (rows, tokens))
        return matrix @ src.float()  # (rows, d)

    return accumulate


def peer_backward_torch(
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
    """Backward for flat inputs (shapes as in `peer_forward_torch`, grad_out (T, d)).

    With o = act(s) [* w] and r = <v_i, dy>:  dscores = o r,  ds = g r act'(s) [* w],
    dw = g r act(s),  dx = sum ds u_i [+ dw w_i],  dU[i] += ds x,  dV[i] += g o dy,
    dW[i] += dw x.
    Returns:
        dx (T, d), dscores (T, E), d_down, d_up, d_gate (N, d) dense or sparse COO
        (d_gate None without GLU).
    """
    act, act_grad = activation_pair(activation)
    tokens, experts = expert_index.shape
    dim = x.shape[1]
    glu = gate_table is not None
    grad_x = torch.empty_like(x)  # (T, d)
    grad_scores = torch.empty(tokens, experts, device=x.device, dtype=scores.dtype)
    coef_down = torch.empty(tokens, experts, device=x.device, dtype=torch.float32)  # ds
    coef_up = torch.empty_like(coef_down)  # g * o
    coef_gate = torch.empty_like(coef_down) if glu else None  # dw
    step = chunk_tokens(tokens, experts, dim)
    for start in range(0, tokens, step):
        sl = slice(start, start + step)
        index = expert_index[sl]  # (c, E)
        r = torch.bmm(F.embedding(index, up_table), grad_out[sl].unsqueeze(-1)).squeeze(-1).float()  # (c, E)
        s, g = pre_down[sl], scores[sl].float()
        hidden = act(s)
        d_hidden = g * r  # (c, E) d loss / d o
        out_unit = hidden * pre_gate[sl] if glu else hidden
        coef_down[sl] = d_hidden * act_grad(s) * (pre_gate[sl] if glu else 1.0)
        coef_up[sl] = g * out_unit
        grad_scores[sl] = (out_unit * r).to(scores.dtype)
        dx = F.embedding_bag(index, down_table, per_sample_weights=coef_down[sl].to(down_table.dtype), mode="sum")
        if glu:
            coef_gate[sl] = d_hidden * hidden
            dx = dx + F.embedding_bag(index, gate_table, per_sample_weights=coef_gate[sl].to(gate_table.dtype),
                                      mode="sum")
        grad_x[sl] = dx
    touched_rows, slot, rows = table_grad_rows(expert_index, down_table.shape[0], sparse)
    accumulate = row_accumulator(slot, rows)
    return (
        grad_x,
        grad_scores,
        finish_table_grad(accumulate(coef_down, x), down_table, touched_rows),
        finish_table_grad(accumulate(coef_up, grad_out), up_table, touched_rows),
        finish_table_grad(accumulate(coef_gate, x), gate_table, touched_rows) if glu else None,
    )
