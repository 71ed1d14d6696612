"""Product-key retrieval shared by PKM and PEER (Lample et al. 2019, "Large
Memory Layers with Product Keys", §3.1–3.2; He 2024, PEER §2, Eq. 3).

N = n² keys are the Cartesian product of two sets of n sub-keys,
k_(i,j) = [c_i ; c'_j]. A query q = [q1 ; q2] scores k_(i,j) with
q1·c_i + q2·c'_j, so the exact top-k over all N keys lies among the k² pairs
of the per-half top-k (Lample §3.2): two n-way searches, k² additions and one
top-k replace an N-way search.

Each of h heads has its own query (one ``nn.Linear`` d -> h·d_key, no bias)
and its own sub-keys. Optional BatchNorm on the queries (Lample §3.3) uses
batch statistics in training, so in train mode a token's retrieval depends on
the other tokens of the batch (not causal); in eval mode it uses running
statistics.

:func:`router_scores` turns the retrieved key scores into the weights both
layers use (softmax, sigmoid or ReLU over the top-k).

FLOPs per token seen by FlopCounterMode: query 2·d·h·d_key, sub-key scores
2·h·n·d_key. Not seen (no matmul): BatchNorm, the k² candidate sums, the
top-k selections and the index arithmetic.
"""

from __future__ import annotations

import torch
from torch import nn


class ProductKeyRetrieval(nn.Module):
    """Multi-head exact top-k over N = n² product keys.

    Args:
        d_model: input width d.
        n_heads: h, heads with their own query and sub-keys.
        n_keys: n sub-keys per half (N = n²).
        d_key: query/key width (each half d_key/2).
        top_k: k, per half and overall.
        query_batchnorm: BatchNorm1d(h·d_key) on the queries.
    """

    def __init__(self, d_model: int, n_heads: int, n_keys: int, d_key: int, top_k: int,
                 query_batchnorm: bool) -> None:
        super().__init__()
        self.n_heads, self.n_keys, self.d_key, self.top_k = n_heads, n_keys, d_key, top_k
        self.query = nn.Linear(d_model, n_heads * d_key, bias=False)
        self.query_batchnorm = nn.BatchNorm1d(n_heads * d_key) if query_batchnorm else None
        # (h, 2, n, d_key/2): per head, the two halves' sub-keys.
        self.sub_keys = nn.Parameter(torch.empty(n_heads, 2, n_keys, d_key // 2))
        nn.init.normal_(self.query.weight, std=d_model ** -0.5)
        nn.init.normal_(self.sub_keys, std=(d_key // 2) ** -0.5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and ids of the top-k keys per head, best first.

        Args:
            x: (M, d) tokens.
        Returns:
            key_scores (M, h, k) = q·k_(i,j) (before any score function) and
            key_index (M, h, k) int64 ids i·n + j in [0, N).
        """
        tokens = x.shape[0]
        query = self.query(x)  # (M, h·d_key)
        if self.query_batchnorm is not None:
            query = self.query_batchnorm(query)
        query = query.view(tokens, self.n_heads, 2, self.d_key // 2)  # (M, h, 2, d_key/2)
        half_scores = torch.einsum("mhsc,hsnc->mhsn", query, self.sub_keys)  # (M, h, 2, n)
        return product_key_top_k(half_scores[:, :, 0], half_scores[:, :, 1], self.top_k)


def product_key_top_k(first_scores: torch.Tensor, second_scores: torch.Tensor,
                      top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of s(i, j) = first[i] + second[j] over all n² pairs.

    Args:
        first_scores, second_scores: (..., n) sub-key scores of the two halves.
        top_k: k <= n.
    Returns:
        scores (..., k) sorted descending and ids (..., k) = i·n + j.
    """
    n_keys = first_scores.shape[-1]
    first_top, first_index = first_scores.topk(top_k, dim=-1)  # (..., k)
    second_top, second_index = second_scores.topk(top_k, dim=-1)  # (..., k)
    candidate_scores = first_top.unsqueeze(-1) + second_top.unsqueeze(-2)  # (..., k, k)
    candidate_index = first_index.unsqueeze(-1) * n_keys + second_index.unsqueeze(-2)  # (..., k, k)
    candidate_scores = candidate_scores.flatten(-2)  # (..., k²)
    best_scores, best_position = candidate_scores.topk(top_k, dim=-1)  # (..., k)
    best_index = candidate_index.flatten(-2).gather(-1, best_position)  # (..., k)
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
