"""Product-key retrieval shared by PKM and PEER (Lample et al. 2019, "Large
Memory Layers with Product Keys", §3.1–3.2; He 2024, PEER §2, Eq. 3).

N = n² keys are the Cartesian product of two sets of n sub-keys,
k_(i,j) = [c_i ; c'_j]. A query q = [q1 ; q2] scores k_(i,j) with
q1·c_i + q2·c'_j, so the exact top-k over all N keys lies among the k² pairs
of the per-half top-k (Lample §3.2): two n-way searches, k² additions and one
top-k replace an N-way search. Since each half's top-k is sorted, only the
about k·ln k pairs of ranks (a, b) with (a+1)(b+1) <= k can be among the best
(:func:`candidate_pairs`), so only those are added and searched.

Each of h heads has its own query (one ``nn.Linear`` d -> h·d_key, no bias)
and its own sub-keys. The queries can be normalised per feature before the
search (Lample §3.3 uses BatchNorm, which spreads the queries over the keys
and raises the share of keys in use), with one of two kinds of statistics:

- ``prefix`` (the default, causal): the mean and variance of each feature
  over positions 0..t of the token's own sequence,
  q̂_t = (q_t - mean_{s<=t} q_s) / sqrt(var_{s<=t} q_s + eps), then a
  learned scale and shift. Nothing later in the sequence and nothing of
  other sequences enters, in training and evaluation alike (no running
  statistics; the same output whatever the batch). At t = 0 the normalised
  query is 0 and the retrieval uses the shift only.
- ``batch``: the paper's exact ``nn.BatchNorm1d`` over all B·T tokens of the
  forward in training (running statistics in evaluation). In training a
  token's retrieval then depends on later tokens of its own sequence (and on
  the other sequences): NOT causal, kept to reproduce the paper.

:class:`PrefixQueryNorm` lives in :mod:`models.ffw.prefix_norm` (its forward and
backward are written by hand) and is imported here with the other norms.

:func:`router_scores` turns the retrieved key scores into the weights both
layers use (softmax, sigmoid or ReLU over the top-k).

FLOPs per token seen by FlopCounterMode: query 2·d·h·d_key, sub-key scores
2·h·n·d_key. Not seen (no matmul): the query normalisation, the k² candidate
sums, the top-k selections and the index arithmetic.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from kernels.row_topk import best_pairs_compiled, row_topk
from models.ffw.prefix_norm import PrefixQueryNorm


class BatchQueryNorm(nn.BatchNorm1d):
    """The paper's query BatchNorm (Lample et al. 2019 §3.3) over all B·T tokens of a forward.

    Not causal in training: the statistics include later positions of every sequence.
    """

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        """Normalised ``query`` (B, T, F)."""
        return super().forward(query.reshape(-1, query.shape[-1])).view_as(query)


QUERY_NORMS = {"prefix": PrefixQueryNorm, "batch": BatchQueryNorm}
"""Query normalisation by ``query_norm_statistics``."""


class ProductKeyRetrieval(nn.Module):
    """Multi-head exact top-k over N = n² product keys.

    Args:
        d_model: input width d.
        n_heads: h, heads with their own query and sub-keys.
        n_keys: n sub-keys per half (N = n²).
        d_key: query/key width (each half d_key/2).
        top_k: k, per half and overall.
        query_norm: ``prefix`` or ``batch`` normalisation of the h·d_key query
            features (module docstring), or None for none.
    """

    def __init__(self, d_model: int, n_heads: int, n_keys: int, d_key: int, top_k: int,
                 query_norm: str | None) -> None:
        super().__init__()
        self.n_heads, self.n_keys, self.d_key, self.top_k = n_heads, n_keys, d_key, top_k
        self.query = nn.Linear(d_model, n_heads * d_key, bias=False)
        self.query_norm = QUERY_NORMS[query_norm](n_heads * d_key) if query_norm else None
        # (h, 2, n, d_key/2): per head, the two halves' sub-keys.
        self.sub_keys = nn.Parameter(torch.empty(n_heads, 2, n_keys, d_key // 2))
        nn.init.normal_(self.query.weight, std=d_model ** -0.5)
        nn.init.normal_(self.sub_keys, std=(d_key // 2) ** -0.5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and ids of the top-k keys per head, best first.

        Args:
            x: (B, T, d) tokens.
        Returns:
            key_scores (M, h, k) = q·k_(i,j) (before any score function) and
            key_index (M, h, k) int64 ids i·n + j in [0, N), M = B·T.
        """
        query = self.query(x)  # (B, T, h·d_key)
        if self.query_norm is not None:
            query = self.query_norm(query)
        query = query.reshape(-1, self.n_heads, 2, self.d_key // 2)  # (M, h, 2, d_key/2)
        key_scores, key_index = ProductKeySearch.apply(query, self.sub_keys, self.top_k)  # (h, M, k) each
        return key_scores.transpose(0, 1), key_index.transpose(0, 1)  # (M, h, k) each


class ProductKeySearch(torch.autograd.Function):
    """Sub-key scores, per-half top-k and the k best pairs of every head, with a hand-written backward.

    Forward, head by head: the head's sub-key scores q_s·c (2, M, n) come from one batched
    matmul (FLOPs 2·n·d_key per token and head, as counted) and its per-half top-k is taken
    while they are in cache (:func:`kernels.row_topk.row_topk`: ``torch.topk``'s exact result,
    from a C kernel on the CPU); no (h, 2, M, n) tensor is kept or allocated. Backward: the
    gradient of the k best sums goes to the two per-half ranks they came from, is scattered
    into one reused (2, M, n) buffer per head, and the two matmuls of the scores' gradient
    follow (dq = dS c, dc = dS^T q), so the maths is the plain autograd one, in the same
    order. Twice-differentiating is not supported. Under autocast both inputs are cast to the
    autocast dtype first, as autocast casts a matmul's inputs, and the gradients are returned in
    the inputs' own dtypes, as the casts' backward does.

    ``apply(query (M, h, 2, d_key/2), sub_keys (h, 2, n, d_key/2), top_k)`` returns the scores
    (h, M, k), sorted descending, and the ids i·n + j (h, M, k) of the k best keys per head.
    """

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, sub_keys: torch.Tensor,
                top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.input_dtypes = query.dtype, sub_keys.dtype
        query, sub_keys = (tensor.to(matmul_dtype(query, sub_keys)) for tensor in (query, sub_keys))
        tokens, heads, halves, half_width = query.shape
        half_top = query.new_empty(heads, halves, tokens, top_k)  # (h, 2, M, k)
        half_index = torch.empty(half_top.shape, dtype=torch.int64, device=query.device)
        for head in range(heads):
            scores = torch.bmm(query[:, head].transpose(0, 1), sub_keys[head].transpose(1, 2))  # (2, M, n)
            row_topk(scores, top_k, out=(half_top[head], half_index[head]))
        best_scores, best_index, best_ranks = best_pairs(half_top, half_index, top_k, sub_keys.shape[2], half_dim=1)
        ctx.save_for_backward(query, sub_keys, half_index, best_ranks)
        ctx.mark_non_differentiable(best_index)
        return best_scores, best_index

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_scores: torch.Tensor, _grad_index: None) -> tuple[torch.Tensor, torch.Tensor, None]:
        query, sub_keys, half_index, best_ranks = ctx.saved_tensors
        tokens, heads, halves, half_width = query.shape
        grad_top = grad_scores.new_zeros(half_index.shape)  # (h, 2, M, k)
        grad_top.scatter_add_(-1, best_ranks, grad_scores.unsqueeze(1).expand_as(best_ranks))
        grad_half = grad_scores.new_empty(halves, tokens, sub_keys.shape[2])  # (2, M, n), reused per head
        grad_head_query = grad_scores.new_empty(halves, tokens, half_width)  # (2, M, d_key/2), reused per head
        grad_query = torch.empty_like(query, memory_format=torch.contiguous_format)  # (M, h, 2, d_key/2)
        grad_keys = torch.empty_like(sub_keys)  # (h, 2, n, d_key/2)
        for head in range(heads):
            grad_half.zero_().scatter_(-1, half_index[head], grad_top[head])
            torch.bmm(grad_half, sub_keys[head], out=grad_head_query)
            grad_query[:, head] = grad_head_query.transpose(0, 1)  # copied into the query's layout while in cache
            torch.bmm(grad_half.transpose(1, 2), query[:, head].transpose(0, 1), out=grad_keys[head])
        query_dtype, keys_dtype = ctx.input_dtypes
        return grad_query.to(query_dtype), grad_keys.to(keys_dtype), None


def matmul_dtype(first: torch.Tensor, second: torch.Tensor) -> torch.dtype:
    """The dtype a matmul of ``first`` and ``second`` computes in: autocast's when it is on for
    their device (as for ``torch.bmm``), else their promoted dtype."""
    device_type = first.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(first.dtype, second.dtype)


def candidate_pairs(top_k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs (a, b) of per-half ranks that can hold one of the k best sums: (a+1)(b+1) <= k.

    With both halves' top-k sorted descending, the pair of ranks (a, b) is beaten or tied by
    every pair (a', b') <= (a, b), (a+1)(b+1) - 1 others; if that is k or more it cannot be
    among the k best (except by an exact tie). For k = 16 this keeps 50 of the k² = 256 pairs
    (sum over a of floor(k / (a+1)), about k ln k).
    Returns:
        first_rank, second_rank: (C,) int64 each.
    """
    pairs = [(a, b) for a in range(top_k) for b in range(top_k // (a + 1))]
    ranks = torch.tensor(pairs, dtype=torch.int64, device=device).view(-1, 2)  # (C, 2)
    return ranks[:, 0], ranks[:, 1]


def best_pairs(half_top: torch.Tensor, half_index: torch.Tensor, top_k: int, n_keys: int,
               half_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k best sums first[a] + second[b] from each half's top-k (sorted descending).

    On the CPU in float32 (without a gradient to keep) one pass of C computes it
    (:func:`kernels.row_topk.best_pairs_compiled`: the same sums, the same top-k), and the
    PyTorch ops below redo only the rows whose k best sums are tied, so the result is theirs
    bit for bit: ``torch.topk``'s choice among ties included.

    Args:
        half_top, half_index: (..., k) per-half top-k scores and sub-key ids, the two halves
            stacked along ``half_dim`` (size 2).
    Returns:
        scores (k sorted descending), ids i·n + j, both shaped as half_top without
        ``half_dim``, and the per-half ranks (a, b) of each, shaped as half_top.
    """
    first_rank, second_rank = candidate_pairs(top_k, half_top.device)  # (C,)
    keep_graph = half_top.requires_grad and torch.is_grad_enabled()
    compiled = None if keep_graph else best_pairs_compiled(*half_top.unbind(half_dim), *half_index.unbind(half_dim),
                                                           first_rank, second_rank, n_keys)
    if compiled is None:
        return _best_pairs_torch(half_top, half_index, first_rank, second_rank, n_keys, half_dim)
    scores, index, best_first, best_second, tied = compiled
    if tied.any():
        rows = tied.nonzero(as_tuple=True)
        redone = _best_pairs_torch(half_top.movedim(half_dim, -2)[rows], half_index.movedim(half_dim, -2)[rows],
                                   first_rank, second_rank, n_keys, half_dim=-2)
        scores[rows], index[rows] = redone[0], redone[1]
        best_first[rows], best_second[rows] = redone[2].unbind(-2)
    return scores, index, torch.stack([best_first, best_second], dim=half_dim)


def _best_pairs_torch(half_top: torch.Tensor, half_index: torch.Tensor, first_rank: torch.Tensor,
                      second_rank: torch.Tensor, n_keys: int,
                      half_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`best_pairs` in PyTorch ops (any device and dtype, and with autograd), over the
    candidate pairs of ranks ``first_rank``, ``second_rank`` (C,) of :func:`candidate_pairs`."""
    first_top, second_top = half_top.unbind(half_dim)
    candidate_scores = first_top.index_select(-1, first_rank) + second_top.index_select(-1, second_rank)  # (..., C)
    best_scores, best = row_topk(candidate_scores, half_top.shape[-1])  # (..., k)
    best_ranks = torch.stack([first_rank[best], second_rank[best]], dim=half_dim)  # as half_top
    first_index, second_index = half_index.gather(-1, best_ranks).unbind(half_dim)
    return best_scores, first_index * n_keys + second_index, best_ranks


def product_key_top_k(half_scores: torch.Tensor, top_k: int, half_dim: int = -2) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of s(i, j) = first[i] + second[j] over all n² pairs (Lample et al. 2019 §3.2).

    Args:
        half_scores: (..., n) sub-key scores with the two halves stacked along ``half_dim``
            (size 2), e.g. (..., 2, n).
        top_k: k <= n.
    Returns:
        scores (k sorted descending) and ids i·n + j, shaped as half_scores without
        ``half_dim`` and with k in place of n. Among exactly tied sums the choice is arbitrary.
    """
    half_top, half_index = row_topk(half_scores, top_k)  # (..., k) each, one call for both halves
    best_scores, best_index, _ = best_pairs(half_top, half_index, top_k, half_scores.shape[-1], half_dim)
    return best_scores, best_index


def router_scores(key_scores: torch.Tensor, score: str) -> torch.Tensor:
    """Router scores g from the top-k key scores (..., k): softmax over the k
    (PEER Eq. 5; PKM, Lample Eq. 2), sigmoid, or ReLU (Csordás et al. 2023 §6.2)."""
    if score == "softmax":
        return key_scores.softmax(dim=-1)
    if score == "sigmoid":
        return key_scores.sigmoid()
    if score == "relu":
        return key_scores.relu()
    raise ValueError(f"score={score!r} is not supported; use softmax, sigmoid or relu")
