"""Token-choice mixture of experts: softmax top-K, Switch, sigma-MoE, S-BASE.

Sources: Csordás et al. 2023 §4–5 (sigma-MoE: Eq. 19–22; Switch: Eq. 15–17,
Fedus et al. 2021; S-BASE: Clark et al. 2022 with sigmoid scores).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

from models.ffw.config_base import (
    FFWConfigBase, FFWCosts, config_error, ffw_family, require_choice, require_positive, resolve_int,
)

ROUTERS = ("softmax", "softmax_renorm", "sigmoid", "sinkhorn")


@ffw_family("models.ffw.token_choice")
@dataclass(frozen=True)
class TokenChoiceMoEConfig(FFWConfigBase):
    """Each token picks its ``top_k`` of ``n_experts`` two-layer experts of width G.

    The defaults are a plain softmax top-K MoE (the ``token_choice`` option of
    ``conf/model/ffw``); the ``switch``, ``sigma_moe`` and ``sbase`` options
    set only what differs from them.

    Attributes:
        n_experts: N_E.
        expert_size: G, hidden width of one expert; ``None`` means
            ``ffw_multiplier * d_model / n_experts`` (parameter-equal to the
            dense FFW, as in the sigma-MoE paper's comparisons).
        top_k: K experts per token.
        router: ``softmax`` (scores softmax over all experts), ``softmax_renorm``
            (softmax renormalised over the top-K), ``sigmoid`` (sigma-MoE, Eq. 19),
            ``sinkhorn`` (S-BASE: balanced assignment in training, argmax at
            inference, sigmoid gate values).
        activation: expert activation, ``relu`` (the paper) or ``gelu``.
        load_balance_weight: Switch loss N_E·Σ f_i·P_i weight (Eq. 17); 0 = off.
        capacity_factor: tokens per expert capped at cf·K·T/N_E; ``None`` = no cap.
        entropy_weight: sigma-MoE entropy regulariser weight (Eq. 20–21); 0 = off.
        expert_dropout: probability of removing an expert from selection in
            training, without rescaling (Eq. 22).
        sinkhorn_iterations: iterations of the Sinkhorn normalisation (S-BASE).
        init: ``default`` or ``sigma_moe`` (experts initialised like the dense
            layer they replace, selection rows of equal norm; §5).
    """

    family: ClassVar[str] = "token_choice_moe"
    n_experts: int = 16
    expert_size: int | None = None
    top_k: int = 4
    router: str = "softmax"
    activation: str = "relu"
    load_balance_weight: float = 0.0
    capacity_factor: float | None = None
    entropy_weight: float = 0.0
    expert_dropout: float = 0.0
    sinkhorn_iterations: int = 3
    init: str = "default"

    def __post_init__(self) -> None:
        require_positive(self.family, n_experts=self.n_experts, expert_size=self.expert_size,
                         top_k=self.top_k, capacity_factor=self.capacity_factor,
                         sinkhorn_iterations=self.sinkhorn_iterations)
        require_choice(self.family, "router", self.router, ROUTERS)
        require_choice(self.family, "activation", self.activation, ("relu", "gelu"))
        require_choice(self.family, "init", self.init, ("default", "sigma_moe"))
        if self.top_k > self.n_experts:
            raise config_error(self.family, "top_k", self.top_k,
                               f"must be <= n_experts = {self.n_experts}", "lower top_k")
        if not 0.0 <= self.expert_dropout < 1.0:
            raise config_error(self.family, "expert_dropout", self.expert_dropout,
                               "must be in [0, 1)", "use e.g. 0.05")
        for name in ("load_balance_weight", "entropy_weight"):
            if not 0 <= getattr(self, name) < math.inf:
                raise config_error(self.family, name, getattr(self, name), "must be a finite number >= 0",
                                   "use 0 to disable")

    def resolve(self, d_model: int, ffw_multiplier: float) -> "TokenChoiceMoEConfig":
        return replace(self, expert_size=resolve_int(self.expert_size,
                                                     ffw_multiplier * d_model / self.n_experts))

    def costs(self, d_model: int) -> FFWCosts:
        """Params: router d·N_E + experts N_E·2·d·G.

        FLOPs/token: router 2·d·N_E; experts K·4·d·G (every token processed by
        its K experts; tokens dropped by a capacity cap are not subtracted).
        """
        assert self.expert_size is not None, "resolve() first"
        expert_params = 2 * d_model * self.expert_size
        params = {"router": d_model * self.n_experts, "experts": self.n_experts * expert_params}
        active = {"router": params["router"], "experts": self.top_k * expert_params}
        flops = {"router": 2.0 * d_model * self.n_experts,
                 "experts": self.top_k * 2.0 * expert_params}
        return FFWCosts(params, active, flops)

    def summary(self) -> str:
        return f"moe-tc E={self.n_experts} G={self.expert_size} K={self.top_k} {self.router}"
