"""Product-key memory (Lample et al. 2019, "Large Memory Layers with Product
Keys"; ReLU scores: Csordás et al. 2023 §6.2)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from models.ffw.config_base import (
    QUERY_NORM_STATISTICS, FFWCosts, ProductKeyConfig, ffw_family, product_key_count, product_key_retrieval_costs,
    require_choice, require_positive, resolve_int,
)


@ffw_family("models.ffw.pkm")
@dataclass(frozen=True)
class PKMConfig(ProductKeyConfig):
    """h heads each retrieve the top-k of N = n² memory values by product keys.

    Attributes:
        n_experts: N memory slots (a perfect square; n = sqrt(N) sub-keys per half).
        n_heads: h retrieval heads, each with its own query and sub-keys.
        top_k: k, per-half top-k and the final top-k among k² candidates.
        d_key: query/key dimension (each half uses d_key/2).
        score: ``softmax`` over the top-k scores (Lample) or ``relu`` (§6.2).
        query_batchnorm: normalise the queries (Lample §3.3).
        query_norm_statistics: ``prefix`` (causal, the default: each
            sequence's positions up to t) or ``batch`` (Lample's BatchNorm
            over the whole batch, not causal in training); see
            ``models/ffw/product_keys.py``.
        d_value: value dimension; ``None`` means d_model (no output projection).
    """

    family: ClassVar[str] = "pkm"
    n_experts: int = 1024 * 1024
    n_heads: int = 8
    top_k: int = 32
    d_key: int = 512
    score: str = "softmax"
    query_batchnorm: bool = True
    query_norm_statistics: str = "prefix"
    d_value: int | None = None

    def __post_init__(self) -> None:
        require_positive(self.family, n_experts=self.n_experts, n_heads=self.n_heads,
                         top_k=self.top_k, d_key=self.d_key, d_value=self.d_value)
        require_choice(self.family, "score", self.score, ("softmax", "relu"))
        require_choice(self.family, "query_norm_statistics", self.query_norm_statistics, QUERY_NORM_STATISTICS)
        product_key_count(self.family, self.n_experts, self.top_k, self.d_key)

    def resolve(self, d_model: int, ffw_multiplier: float) -> "PKMConfig":
        return replace(self, d_value=resolve_int(self.d_value, d_model))

    def costs(self, d_model: int) -> FFWCosts:
        """Params: query d·h·d_key (+2·h·d_key BatchNorm), sub-keys h·n·d_key,
        values N·d_value, output projection d_value·d if d_value != d.

        FLOPs/token: query 2·d·h·d_key; sub-key scores 2·h·n·d_key (two halves of
        n keys x d_key/2); value read 2·h·k·d_value (weighted sum of k rows per
        head); output projection 2·d_value·d if present. Candidate combination
        (h·k² additions), top-k and gathers: 0 matmul FLOPs.

        The value read is done by ``F.embedding_bag`` (a weighted sum of the k
        rows without materialising them), which FlopCounterMode does not count:
        ``values`` is listed in ``flop_counter_invisible``.
        """
        d_value = self.d_value or d_model
        retrieval, batchnorm, retrieval_flops = product_key_retrieval_costs(
            d_model, self.n_heads, self.n_keys, self.d_key, self.query_batchnorm)
        params = {**retrieval, "values": self.n_experts * d_value, **batchnorm}
        active = {name: count for name, count in params.items() if name != "values"}
        active["values"] = self.n_heads * self.top_k * d_value
        flops = {**retrieval_flops, "values": 2.0 * self.n_heads * self.top_k * d_value}
        if d_value != d_model:
            params["output"] = active["output"] = d_value * d_model
            flops["output"] = 2.0 * d_value * d_model
        return FFWCosts(params, active, flops, flop_counter_invisible=("values",))

    def summary(self) -> str:
        return f"pkm N={self.n_experts} h={self.n_heads} k={self.top_k} {self.score} {self.query_norm_summary()}"
