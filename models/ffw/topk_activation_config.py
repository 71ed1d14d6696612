"""Top-K activation FFW (Csordás et al. 2023, "Approximating Two-Layer
Feedforward Networks for Efficient Transformers", §3.1)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from models.ffw.config_base import (
    FFWConfigBase, FFWCosts, config_error, ffw_family, require_choice, require_positive, resolve_int,
)


@ffw_family("models.ffw.topk_activation")
@dataclass(frozen=True)
class TopKActivationConfig(FFWConfigBase):
    """Dense FFW that keeps only the K largest hidden activations per token.

    The hidden layer is computed densely and masked, so the FLOPs equal the
    dense layer's (the sparsity is not exploited for speed; §3.1).

    Attributes:
        d_ff: hidden width; ``None`` means ``ffw_multiplier * d_model``.
        k: hidden units kept per token.
        activation: ``relu`` (the paper) or ``gelu``.
    """

    family: ClassVar[str] = "topk_activation"
    d_ff: int | None = None
    k: int = 128
    activation: str = "relu"

    def __post_init__(self) -> None:
        require_positive(self.family, d_ff=self.d_ff, k=self.k)
        require_choice(self.family, "activation", self.activation, ("relu", "gelu"))
        if self.d_ff is not None and self.k > self.d_ff:
            raise config_error(self.family, "k", self.k, f"must be <= d_ff = {self.d_ff}",
                               "lower k or raise d_ff")

    def resolve(self, d_model: int, ffw_multiplier: float) -> "TopKActivationConfig":
        return replace(self, d_ff=resolve_int(self.d_ff, ffw_multiplier * d_model))

    def costs(self, d_model: int) -> FFWCosts:
        """Params 2·d·d_ff; FLOPs/token 4·d·d_ff (top-k selection: 0 matmul FLOPs)."""
        assert self.d_ff is not None, "resolve() first"
        params = {"ffw": 2 * d_model * self.d_ff}
        return FFWCosts(params, dict(params), {"ffw": 4.0 * d_model * self.d_ff})

    def summary(self) -> str:
        return f"topk d_ff={self.d_ff} k={self.k}"
