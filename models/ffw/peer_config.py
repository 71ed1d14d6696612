"""PEER: parameter-efficient expert retrieval (He 2024, "Mixture of A Million
Experts", §2, Algorithm 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from models.ffw.config_base import (
    QUERY_NORM_STATISTICS, FFWCosts, ProductKeyConfig, ffw_family, product_key_count, product_key_retrieval_costs,
    require_choice, require_positive,
)


@ffw_family("models.ffw.peer")
@dataclass(frozen=True)
class PEERConfig(ProductKeyConfig):
    """h heads each retrieve the top-k of N = n² singleton experts by product keys.

    Expert i is a one-neuron MLP: e_i(x) = act(u_i·x)·v_i (GLU: act(u_i·x)·(w_i·x)·v_i).
    y = Σ_heads Σ_top-k g_i·e_i(x) (Eq. 5–7), with router scores g from the
    softmax (the paper), sigmoid or ReLU of the top-k key scores.

    Attributes:
        n_experts: N (a perfect square). The PEER paper uses 1024².
        n_heads: h, each with its own query network.
        top_k: k experts per head.
        d_key: query/sub-key dimension (routing FLOPs scale with it).
        score: ``softmax``, ``sigmoid`` or ``relu``.
        activation: ``gelu`` or ``relu``.
        query_batchnorm: normalise the queries (He 2024 Fig. 4 ablates it).
        query_norm_statistics: ``prefix`` (causal, the default: each
            sequence's positions up to t) or ``batch`` (the paper's BatchNorm
            over the whole batch, not causal in training); see
            ``models/ffw/product_keys.py``.
        glu: GLU experts (a third table W).
    """

    family: ClassVar[str] = "peer"
    n_experts: int = 1024 * 1024
    n_heads: int = 8
    top_k: int = 16
    d_key: int = 256
    score: str = "softmax"
    activation: str = "gelu"
    query_batchnorm: bool = True
    query_norm_statistics: str = "prefix"
    glu: bool = False

    def __post_init__(self) -> None:
        require_positive(self.family, n_experts=self.n_experts, n_heads=self.n_heads,
                         top_k=self.top_k, d_key=self.d_key)
        require_choice(self.family, "score", self.score, ("softmax", "sigmoid", "relu"))
        require_choice(self.family, "activation", self.activation, ("gelu", "relu"))
        require_choice(self.family, "query_norm_statistics", self.query_norm_statistics, QUERY_NORM_STATISTICS)
        product_key_count(self.family, self.n_experts, self.top_k, self.d_key)

    def costs(self, d_model: int) -> FFWCosts:
        """Params: query d·h·d_key (+2·h·d_key BatchNorm), sub-keys h·n·d_key,
        expert tables N·d each for U and V (and W with GLU).

        FLOPs/token: query 2·d·h·d_key; sub-key scores 2·h·n·d_key; experts
        h·k·(2·d down + 2·d up) (+2·d·h·k for GLU). Candidate combination,
        top-k and gathers: 0 matmul FLOPs.
        """
        n_tables = 3 if self.glu else 2
        retrieval, batchnorm, retrieval_flops = product_key_retrieval_costs(
            d_model, self.n_heads, self.n_keys, self.d_key, self.query_batchnorm)
        params = {**retrieval, "experts": n_tables * self.n_experts * d_model, **batchnorm}
        active = {name: count for name, count in params.items() if name != "experts"}
        active["experts"] = n_tables * self.n_heads * self.top_k * d_model
        flops = {**retrieval_flops, "experts": 2.0 * n_tables * self.n_heads * self.top_k * d_model}
        return FFWCosts(params, active, flops)

    def summary(self) -> str:
        return f"peer N={self.n_experts} h={self.n_heads} k={self.top_k} {self.score} {self.query_norm_summary()}"
