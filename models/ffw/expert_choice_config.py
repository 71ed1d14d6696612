"""Expert-choice mixture of experts (Zhou et al. 2022), the PEER paper's MoE baseline."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from models.ffw.config_base import (
    FFWConfigBase, FFWCosts, config_error, ffw_family, require_choice, require_positive, resolve_int,
)


@ffw_family("models.ffw.expert_choice")
@dataclass(frozen=True)
class ExpertChoiceMoEConfig(FFWConfigBase):
    """Each expert picks its top tokens, up to its capacity, within a fixed routing group.

    Routing group: at each sequence position, the tokens of ``routing_group``
    consecutive sequences of the batch are routed together (never tokens of
    other positions, so a token's output never depends on later tokens). The
    group has S = c·G expert slots per position, spread over the E experts by
    a fixed schedule (``models/ffw/expert_choice.py``): each expert gets S/E
    slots per position on average, exactly S/E at every position when E
    divides S. The group is part of the layer, so the model is the same
    whatever the micro-batch, the number of processes or the evaluation
    batch; a forward's batch must be a multiple of G sequences.

    Attributes:
        n_experts: E. The PEER paper uses 128.
        expert_size: hidden width of one expert; ``None`` means the dense FFW
            width ``ffw_multiplier * d_model`` ("each the size of the dense FFW").
        capacity_factor: c; each token is processed by c experts on average
            (c·G must be a whole number of slots, c <= E).
        activation: ``relu`` or ``gelu``.
        routing_group: G, sequences routed together. 16 fits a per-rank
            micro-batch of 16 (the PEER study's batch of 128 on 8 processes);
            with E > c·G only c·G experts take a token at each position (each
            expert works at a fixed 1 in E/(c·G) of the positions), with
            G >= E/c every expert works at every position.
    """

    family: ClassVar[str] = "expert_choice_moe"
    n_experts: int = 128
    expert_size: int | None = None
    capacity_factor: float = 1.0
    activation: str = "gelu"
    routing_group: int = 16

    def __post_init__(self) -> None:
        require_positive(self.family, n_experts=self.n_experts, expert_size=self.expert_size,
                         capacity_factor=self.capacity_factor, routing_group=self.routing_group)
        require_choice(self.family, "activation", self.activation, ("relu", "gelu"))
        slots = self.capacity_factor * self.routing_group
        if abs(slots - round(slots)) > 1e-9:
            raise config_error(self.family, "routing_group", self.routing_group,
                               f"capacity_factor·routing_group = {slots:g} must be a whole number of slots",
                               "choose routing_group so that it is")
        if self.capacity_factor > self.n_experts:
            raise config_error(self.family, "capacity_factor", self.capacity_factor,
                               f"must be <= n_experts={self.n_experts} (an expert takes a token once)",
                               f"use at most {self.n_experts}")

    @property
    def slots_per_position(self) -> int:
        """S = c·G: expert-token pairs a routing group processes at one position."""
        return int(round(self.capacity_factor * self.routing_group))

    @property
    def sequences_per_routing_group(self) -> int:
        return self.routing_group

    def resolve(self, d_model: int, ffw_multiplier: float) -> "ExpertChoiceMoEConfig":
        return replace(self, expert_size=resolve_int(self.expert_size, ffw_multiplier * d_model))

    def costs(self, d_model: int) -> FFWCosts:
        """Params: router d·E + experts E·2·d·G.

        FLOPs/token: router 2·d·E; experts (S/G)·4·d·G_e = c·4·d·G_e (S slots
        per position for G tokens). Exact when E divides T·S (every expert
        gets T·S/E slots per group of sequences); otherwise the module pads
        each expert to the largest count, at most E - 1 slots per group of
        G·T tokens more.
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
        return (f"moe-ec E={self.n_experts} G={self.expert_size} c={self.capacity_factor:g} "
                f"group={self.routing_group}")
