"""Dense FFW config and costs (Vaswani et al. 2017 §3.3; SwiGLU: Shazeer 2020)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from models.ffw.config_base import (
    FFWConfigBase, FFWCosts, ffw_family, require_choice, require_positive, resolve_int,
)

DENSE_ACTIVATIONS = ("relu", "gelu", "swiglu")


@ffw_family("models.ffw.dense")
@dataclass(frozen=True)
class DenseFFWConfig(FFWConfigBase):
    """y = W2 act(W1 x); SwiGLU: y = W2 (silu(W1 x) * W3 x). No biases.

    Attributes:
        d_ff: hidden width; ``None`` means ``ffw_multiplier * d_model``.
        activation: ``relu``, ``gelu`` or ``swiglu``; ``None`` means the
            activation of the backbone the layer is placed in (``model.activation``),
            so a study's ``dense`` method is the backbone's own dense FFW.
    """

    family: ClassVar[str] = "dense"
    backbone_settings: ClassVar[tuple[str, ...]] = ("activation",)
    d_ff: int | None = None
    activation: str | None = None

    def __post_init__(self) -> None:
        require_positive(self.family, d_ff=self.d_ff)
        if self.activation is not None:
            require_choice(self.family, "activation", self.activation, DENSE_ACTIVATIONS)

    def resolve(self, d_model: int, ffw_multiplier: float) -> "DenseFFWConfig":
        return replace(self, d_ff=resolve_int(self.d_ff, ffw_multiplier * d_model))

    def costs(self, d_model: int) -> FFWCosts:
        """Params: 2·d·d_ff (3·d·d_ff for SwiGLU). FLOPs/token: 2 x params."""
        d_ff = self._d_ff()
        n_matrices = 3 if self.activation == "swiglu" else 2
        params = {"ffw": n_matrices * d_model * d_ff}
        return FFWCosts(params, dict(params), {"ffw": 2.0 * params["ffw"]})

    def summary(self) -> str:
        return f"dense d_ff={self._d_ff()} {self.activation}"

    def _d_ff(self) -> int:
        """The resolved hidden width; raises ``ValueError`` while it is unresolved."""
        if self.d_ff is None:
            raise ValueError("DenseFFWConfig.d_ff is unresolved; call resolve(d_model, ffw_multiplier) first")
        return self.d_ff
