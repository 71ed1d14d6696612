"""Expert-choice mixture of experts (Zhou et al. 2022), the PEER paper's MoE baseline."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from models.ffw.config_base import (
    FFWConfigBase, FFWCosts, ffw_family, require_choice, require_positive, resolve_int,
)


@ffw_family("models.ffw.expert_choice")
@dataclass(frozen=True)
class ExpertChoiceMoEConfig(FFWConfigBase):
    """Each expert picks its top tokens, up to its capacity.

    To stay causal in a decoder LM, experts choose among the tokens of the
    batch at the same sequence position (never across positions), so a
    token's output never depends on later tokens.

    Attributes:
        n_experts: E. The PEER paper uses 128.
        expert_size: hidden width of one expert; ``None`` means the dense FFW
            width ``ffw_multiplier * d_model`` ("each the size of the dense FFW").
        capacity_factor: c; on average each token is processed by c experts
            (capacity per expert per position = c·B/E tokens of a batch of B).
        activation: ``relu`` or ``gelu``.
    """

    family: ClassVar[str] = "expert_choice_moe"
    n_experts: int = 128
    expert_size: int | None = None
    capacity_factor: float = 1.0
    activation: str = "gelu"

    def __post_init__(self) -> None:
        require_positive(self.family, n_experts=self.n_experts, expert_size=self.expert_size,
                         capacity_factor=self.capacity_factor)
        require_choice(self.family, "activation", self.activation, ("relu", "gelu"))

    def resolve(self, d_model: int, ffw_multiplier: float) -> "ExpertChoiceMoEConfig":
        return replace(self, expert_size=resolve_int(self.expert_size, ffw_multiplier * d_model))

    def costs(self, d_model: int) -> FFWCosts:
        """Params: router d·E + experts E·2·d·G.

        FLOPs/token (expected): router 2·d·E; experts c·4·d·G, exact when c·B/E
        is an integer for the micro-batch size B.
        """
        assert self.expert_size is not None, "resolve() first"
        expert_params = 2 * d_model * self.expert_size
        params = {"router": d_model * self.n_experts, "experts": self.n_experts * expert_params}
        active = {"router": params["router"],
                  "experts": int(round(self.capacity_factor * expert_params))}
        flops = {"router": 2.0 * d_model * self.n_experts,
                 "experts": self.capacity_factor * 2.0 * expert_params}
        return FFWCosts(params, active, flops)

    def summary(self) -> str:
        return f"moe-ec E={self.n_experts} G={self.expert_size} c={self.capacity_factor:g}"
