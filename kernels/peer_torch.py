"""PEER expert computation, best pure-PyTorch path (CPU default).

Same maths as `kernels.peer_reference` (PEER, He 2024, Eq. 4-5), without ever
materialising gathered rows. The (token, expert) pairs of a step are the
non-zeros of a sparse (N x T) routing matrix A, A[i, t] != 0 when token t
retrieved expert i. Sorting the pairs by expert once (`PairsByExpert`) lets
every table-side product run as one fused PyTorch op:

forward, with s = <u_i, x_t> and y[t] = sum_e g act(s) v_i:
    s:  SDDMM over A's pattern (`torch.sparse.sampled_addmm`), expert by
        expert: each touched row of U is read once, in order; x stays in cache.
    y:  `F.embedding_bag` over each token's pairs (rows of V read per pair).
backward, with r = <v_i, dy_t>:
    r:  SDDMM as for s (V read once).
    dx = sum ds u_i [+ dw w_i]: `F.embedding_bag` over each token's pairs.
    dU[i] = sum_t ds x_t, dV[i] = sum_t g o dy_t [, dW[i] = sum_t dw x_t]:
        A (weighted) times x or dy, one sparse-dense matmul (`torch.addmm`),
        so each gradient row is written once, in order, and no (T*E, d) outer
        products exist. Its output lies on huge pages (`kernels.host_memory`):
        a fresh (N, d) tensor every step otherwise costs more in 4 KiB page
        faults than the matmul.

Only the pre-activations (T, h*k) are kept between forward and backward; the
backward sorts the pairs again (about 1 ms; passing the order on would widen
the op's outputs for every backend). Table gradients are accumulated in fp32,
densely (N, d) or, with `sparse=True`, over the touched rows only and returned
as a sparse COO tensor.
Rounding: sums run in a different order than the reference's einsum, so results
agree with it to fp32 rounding, not bitwise.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.host_memory import empty_on_huge_pages
from kernels.peer_reference import activation_pair

# Dtypes `torch.sparse.sampled_addmm` supports on the CPU; others are computed in fp32.
SDDMM_DTYPES = (torch.float32, torch.float64)


def csr_matrix(row_starts: torch.Tensor, columns: torch.Tensor, values: torch.Tensor,
               column_count: int) -> torch.Tensor:
    """A (len(row_starts) - 1, column_count) sparse CSR tensor (PyTorch's beta warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(row_starts, columns, values, (row_starts.shape[0] - 1, column_count))


@dataclass(frozen=True)
class PairsByExpert:
    """The (token, expert) pairs of a step grouped by expert: the CSR pattern of the (N x T)
    routing matrix.

    Attributes:
        order: (P,) int64, P = T*E: flat token-major pair positions t*E + e, sorted by expert
            id (stable, so tokens ascend within an expert).
        tokens: (P,) int64, the token of each sorted pair (CSR column indices).
        row_starts: (N+1,) int64 CSR row pointers: expert i's pairs are
            order[row_starts[i]:row_starts[i+1]].
    """

    order: torch.Tensor
    tokens: torch.Tensor
    row_starts: torch.Tensor

    @staticmethod
    def of(expert_index: torch.Tensor, table_rows: int) -> PairsByExpert:
        """Group the pairs of `expert_index` (T, E) int64 in [0, table_rows) by expert."""
        flat = expert_index.reshape(-1)  # (P,)
        keys = flat.int() if table_rows <= torch.iinfo(torch.int32).max else flat  # int32 sorts about twice as fast
        order = torch.argsort(keys, stable=True)  # (P,)
        row_starts = torch.zeros(table_rows + 1, device=flat.device, dtype=torch.int64)
        torch.cumsum(torch.bincount(flat, minlength=table_rows), 0, out=row_starts[1:])
        return PairsByExpert(order, order // expert_index.shape[1], row_starts)

    def touched_rows(self) -> torch.Tensor:
        """(R,) int64 ids of the experts that have at least one pair, ascending."""
        return torch.nonzero(self.row_starts[1:] > self.row_starts[:-1]).squeeze(1)

    def to_expert_major(self, per_pair: torch.Tensor) -> torch.Tensor:
        """(T, E) token-major values -> (P,) in `order`."""
        return per_pair.reshape(-1).index_select(0, self.order)

    def to_token_major(self, sorted_values: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """(P,) values in `order` -> token-major tensor of `shape` (T, E)."""
        return torch.empty_like(sorted_values).index_copy_(0, self.order, sorted_values).view(shape)

    def row_dots(self, table: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """(P,) fp32 <table[i], vectors[t]> for every pair, in `order` (SDDMM over A's pattern).

        Args:
            table: (N, d) expert rows (read once, row by row).  vectors: (T, d) per-token vectors.
        """
        dtype = torch.promote_types(table.dtype, vectors.dtype)
        dtype = dtype if dtype in SDDMM_DTYPES else torch.float32
        pair_count, table_rows = self.order.shape[0], table.shape[0]
        # sampled_addmm keeps at most rows x columns values; more pairs than that (repeats, when a
        # token's E pairs outnumber the N experts) need zero columns appended.
        columns = max(vectors.shape[0], -(-pair_count // max(1, table_rows)))
        if columns > vectors.shape[0]:
            vectors = F.pad(vectors, (0, 0, 0, columns - vectors.shape[0]))
        pattern = csr_matrix(self.row_starts, self.tokens, torch.zeros(pair_count, device=table.device, dtype=dtype),
                             columns)
        dots = torch.sparse.sampled_addmm(pattern, table.to(dtype), vectors.to(dtype).t(), beta=0.0)
        return dots.values().float()

    def row_sums(self, vectors: torch.Tensor, sorted_weights: torch.Tensor,
                 touched_rows: torch.Tensor | None) -> torch.Tensor:
        """fp32 sum over each expert's pairs of weight * vectors[t]: a table gradient.

        The (rows x T) CSR matrix of the weights times ``vectors`` (one sparse-dense matmul), written
        into an output on huge pages (`kernels.host_memory`) so that it faults in 2 MiB at a time.
        Args:
            vectors: (T, d).  sorted_weights: (P,) in `order`.
            touched_rows: None for all N rows, else the (R,) rows to return (in that order).
        Returns:
            (N, d), or (R, d) for the touched rows; rows without pairs are 0.
        """
        row_starts = self.row_starts if touched_rows is None else torch.cat(
            [self.row_starts[touched_rows], self.row_starts[-1:]])  # (rows+1,)
        weights = csr_matrix(row_starts, self.tokens, sorted_weights.float(), vectors.shape[0])
        sums = empty_on_huge_pages(weights.shape[0], vectors.shape[1], device=vectors.device)
        return torch.addmm(sums, weights, vectors.float(), beta=0.0, out=sums)  # beta 0: sums is not read


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
    pairs = PairsByExpert.of(expert_index, down_table.shape[0])
    pre_down = pairs.to_token_major(pairs.row_dots(down_table, x), expert_index.shape)  # (T, E)
    hidden = act(pre_down)
    if gate_table is not None:
        pre_gate = pairs.to_token_major(pairs.row_dots(gate_table, x), expert_index.shape)  # (T, E)
        hidden = hidden * pre_gate
    else:
        pre_gate = pre_down.new_empty(0, expert_index.shape[1])
    weight = (hidden * scores.float()).to(up_table.dtype)  # (T, E)
    out = F.embedding_bag(expert_index, up_table, per_sample_weights=weight, mode="sum")  # (T, d)
    return out.to(x.dtype), pre_down, pre_gate


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
    """Rows of the table-gradient buffers and each (t, e) pair's row in them (Triton backward).

    Dense: the buffer is the whole (N, d) table, so the slot is the expert id.
    Sparse: a compact buffer over the touched rows (sorted ids), slot = position in it.
    Returns:
        touched_rows (R,) int64 or None (dense), slot (T, E) int64, rows R (N when dense).
    """
    if not sparse:
        return None, expert_index, table_rows
    touched_rows, slot = torch.unique(expert_index, sorted=True, return_inverse=True)
    return touched_rows, slot, touched_rows.numel()


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
    glu = gate_table is not None
    pairs = PairsByExpert.of(expert_index, down_table.shape[0])
    r = pairs.to_token_major(pairs.row_dots(up_table, grad_out), expert_index.shape)  # (T, E) <v_i, dy>
    g = scores.float()
    hidden = act(pre_down)
    out_unit = hidden * pre_gate if glu else hidden  # o
    d_hidden = g * r  # d loss / d o
    coef_down = d_hidden * act_grad(pre_down) * (pre_gate if glu else 1.0)  # ds
    grad_scores = (out_unit * r).to(scores.dtype)
    grad_x = F.embedding_bag(expert_index, down_table, per_sample_weights=coef_down.to(down_table.dtype), mode="sum")
    coef_gate = d_hidden * hidden if glu else None  # dw
    if coef_gate is not None:
        grad_x = grad_x + F.embedding_bag(expert_index, gate_table, per_sample_weights=coef_gate.to(gate_table.dtype),
                                          mode="sum")
    touched_rows = pairs.touched_rows() if sparse else None

    def table_grad(vectors: torch.Tensor, coef: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return finish_table_grad(pairs.row_sums(vectors, pairs.to_expert_major(coef), touched_rows), table,
                                 touched_rows)

    return (
        grad_x.to(x.dtype),
        grad_scores,
        table_grad(x, coef_down, down_table),
        table_grad(grad_out, g * out_unit, up_table),
        table_grad(x, coef_gate, gate_table) if coef_gate is not None else None,
    )
