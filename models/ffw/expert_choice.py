"""Expert-choice mixture of experts (Zhou et al. 2022, "Mixture-of-Experts
with Expert Choice Routing", §3.1), the PEER paper's MoE baseline (E = 128
experts, each the size of the dense FFW).

Token-expert affinities S = softmax(X W_g) over the E experts (Zhou Eq. 1).
Each expert then picks its top-C tokens by affinity and processes them:
y_t = Σ_{e picked t} S[t, e] · W2_e act(W1_e x_t).

Causal-safe grouping: in the original, experts choose among all tokens of the
batch, including later positions of the same sequence, so a token's output
(whether and by which experts it is processed) depends on future tokens, and
a decoder LM trained that way can cheat. Here experts choose among the B
tokens of the batch at the SAME position only: the choice at position t sees
the batch's tokens at position t and nothing later. The capacity per expert
and position is C = round(c·B/E) tokens (clamped to 1..B), so each token is
processed by c experts on average; FLOPs match the formula exactly when c·B/E
is an integer. Because the groups mix sequences of the batch, a token's
output depends on other sequences' tokens at the same position (batch
dependence, not future leakage); a batch of one sequence gives each expert
the single token at each position when C >= 1.

FLOPs per token seen by FlopCounterMode: router 2·d·E; experts
(E·C/B)·(2·d·G + 2·G·d) = c·4·d·G. Not seen: softmax, top-C, gathers, the
score products and the scatter-add of outputs.
"""

from __future__ import annotations


import torch
from torch import nn

from models.ffw.base import ACTIVATION_FUNCTIONS, FFWLayer, init_linear, residual_std
from models.ffw.expert_choice_config import ExpertChoiceMoEConfig
from models.registry import FFW_MODULES


def capacity_per_position(capacity_factor: float, batch_size: int, n_experts: int) -> int:
    """C = round(c·B/E), clamped to 1..B: tokens each expert picks at one position."""
    return min(batch_size, max(1, round(capacity_factor * batch_size / n_experts)))


@FFW_MODULES.register(ExpertChoiceMoEConfig.family)
class ExpertChoiceMoEFFW(FFWLayer):
    """E experts W1: (E, d, G), W2: (E, G, d) and a bias-free router (E, d)."""

    def __init__(self, config: ExpertChoiceMoEConfig, d_model: int, n_layers: int,
                 sparse_tables: bool = False) -> None:
        super().__init__(config, d_model)
        if config.expert_size is None:
            raise ValueError("ExpertChoiceMoEConfig.expert_size is unresolved; call resolve() first")
        self.router = nn.Linear(d_model, config.n_experts, bias=False)
        self.expert_up = nn.Parameter(torch.empty(config.n_experts, d_model, config.expert_size))
        self.expert_down = nn.Parameter(torch.empty(config.n_experts, config.expert_size, d_model))
        init_linear(self.router, 0.02)
        init_linear(self.expert_up, 0.02)
        init_linear(self.expert_down, residual_std(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, d)
        config = self.config
        batch, positions, d_model = x.shape
        capacity = capacity_per_position(config.capacity_factor, batch, config.n_experts)
        affinity = self.router(x).softmax(dim=-1)  # (B, T, E)
        # Each expert picks, at each position, its top-C of the B tokens there.
        by_position = affinity.permute(1, 2, 0)  # (T, E, B)
        picked_scores, picked_rows = by_position.topk(capacity, dim=-1)  # (T, E, C) each
        if self.routing_accumulator is not None:  # expert ids only built when a tracker listens
            self.record_routing(
                torch.arange(config.n_experts, device=x.device).view(1, -1, 1).expand_as(picked_rows), picked_scores)

        # Token ids in the flattened (B·T) order: row b at position t is b·T + t.
        position_ids = torch.arange(positions, device=x.device).view(-1, 1, 1)  # (T, 1, 1)
        token_ids = picked_rows * positions + position_ids  # (T, E, C)
        token_ids = token_ids.permute(1, 0, 2).reshape(config.n_experts, -1)  # (E, T·C)
        tokens = x.reshape(-1, d_model)  # (M, d)
        expert_inputs = tokens[token_ids]  # (E, T·C, d)
        activation = ACTIVATION_FUNCTIONS[config.activation]
        hidden = activation(torch.bmm(expert_inputs, self.expert_up))  # (E, T·C, G)
        expert_outputs = torch.bmm(hidden, self.expert_down)  # (E, T·C, d)
        weights = picked_scores.permute(1, 0, 2).reshape(config.n_experts, -1, 1)  # (E, T·C, 1)
        weighted = (expert_outputs * weights.to(expert_outputs.dtype)).reshape(-1, d_model)  # (E·T·C, d)
        # Summed in the residual stream's dtype: under bf16 autocast the experts' output is bf16.
        output = torch.zeros_like(tokens).index_add_(0, token_ids.reshape(-1), weighted.to(tokens.dtype))  # (M, d)
        return output.view(batch, positions, d_model)  # (B, T, d)



