"""Product-key retrieval shared by PKM and PEER (Lample et al. 2019, "Large
Memory Layers with Product Keys", §3.1–3.2; He 2024, PEER §2, Eq. 3).

N = n² keys are the Cartesian product of two sets of n sub-keys,
k_(i,j) = [c_i ; c'_j]. A query q = [q1 ; q2] scores k_(i,j) with
q1·c_i + q2·c'_j, so the exact top-k over all N keys lies among the k² pairs
of the per-half top-k (Lample §3.2): two n-way searches, k² additions and one
top-k replace an N-way search.

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

:func:`router_scores` turns the retrieved key scores into the weights both
layers use (softmax, sigmoid or ReLU over the top-k).

FLOPs per token seen by FlopCounterMode: query 2·d·h·d_key, sub-key scores
2·h·n·d_key. Not seen (no matmul): the query normalisation, the k² candidate
sums, the top-k selections and the index arithmetic.
"""

from __future__ import annotations

import torch
from torch import nn


class PrefixQueryNorm(nn.Module):
    """Per-feature normalisation with statistics of the sequence's positions up to t (causal).

    Args:
        features: F = h·d_key, each normalised on its own (like BatchNorm1d(F)).
        eps: added to the variance.
    """

    def __init__(self, features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        """Normalised ``query`` (B, T, F); statistics in float32 (or float64 for float64 input)."""
        dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
        # (B, F, T), contiguous: running sums along the last axis and every elementwise op on dense memory.
        by_feature = query.transpose(1, 2).to(dtype).contiguous()
        count = torch.arange(1, by_feature.shape[-1] + 1, device=query.device, dtype=dtype)  # (T,)
        mean, mean_square = torch.stack([by_feature, by_feature * by_feature]).cumsum(dim=-1) / count  # (B, F, T)
        scale = torch.rsqrt((mean_square - mean * mean).clamp_min(0.0) + self.eps)  # variance over positions <= t
        normalized = (by_feature - mean) * scale * self.weight.view(-1, 1) + self.bias.view(-1, 1)  # (B, F, T)
        return normalized.transpose(1, 2).to(query.dtype)  # (B, T, F)


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
