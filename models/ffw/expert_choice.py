"""Expert-choice mixture of experts (Zhou et al. 2022, "Mixture-of-Experts
with Expert Choice Routing", §3.1), the PEER paper's MoE baseline (E = 128
experts, each the size of the dense FFW).

Token-expert affinities S = softmax(X W_g) over the E experts (Zhou Eq. 1).
Each expert then picks its top-C tokens by affinity and processes them:
y_t = Σ_{e picked t} S[t, e] · W2_e act(W1_e x_t).

Causal-safe grouping: in the original, experts choose among all tokens of the
batch, including later positions of the same sequence, so a token's output
(whether and by which experts it is processed) depends on future tokens, and
a decoder LM trained that way can cheat. Here experts choose among the tokens
at the SAME position of a fixed routing group of G consecutive sequences
(``ExpertChoiceMoEConfig.routing_group``): the choice at position t sees the
group's tokens at position t and nothing later, and it is the same whatever
the micro-batch, the number of processes or the evaluation batch (a forward's
batch is a whole number of groups). A token's output depends on the other
sequences of its group at the same position (batch dependence, not future
leakage).

Slot schedule: the group has S = c·G expert slots per position. Expert e
takes C(e, t) = floor(((t+1)·S + e) / E) - floor((t·S + e) / E) tokens at
position t, which sums to exactly S over the experts at every position
(Hermite's identity) and to floor((T·S + e) / E) over T positions for
expert e. When E divides S this is the classic fixed capacity S/E at every
position; when S < E, each expert works at a fixed 1 in E/S of the
positions, and S experts share the group's tokens at each position.

FLOPs per token seen by FlopCounterMode: router 2·d·E; experts c·4·d·G_e
when E divides T·S (each expert's slots are padded to the largest count,
floor((T·S + E - 1) / E), otherwise). Not seen: softmax, top-C, gathers, the
score products and the scatter-add of outputs.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from models.errors import UserError
from models.ffw.base import ACTIVATION_FUNCTIONS, FFWLayer, init_linear, residual_std
from models.ffw.expert_choice_config import ExpertChoiceMoEConfig
from models.registry import FFW_MODULES


@lru_cache(maxsize=16)
def slot_schedule(positions: int, slots: int, n_experts: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each expert's slots sit (schedule in the module docstring).

    Args:
        positions: T.  slots: S = c·G per position.  n_experts: E.
    Returns:
        (E, n) tensors, n = ceil(T·S / E): slot_position (int64 position t of
        slot i of expert e), slot_rank (int64; the slot takes the expert's
        rank-th best token at t) and slot_valid (bool; False for padding).
    """
    with torch.inference_mode(False):  # cached: ordinary tensors even when first built in inference mode
        return _slot_schedule(positions, slots, n_experts, device)


def _slot_schedule(positions: int, slots: int, n_experts: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    position = torch.arange(positions).view(1, -1)  # (1, T)
    expert = torch.arange(n_experts).view(-1, 1)  # (E, 1)
    slots_before = (position * slots + expert) // n_experts  # (E, T) slots before t, plus e // E = 0
    slots_through = ((position + 1) * slots + expert) // n_experts  # (E, T)
    per_expert = -(-positions * slots // n_experts)
    slot = torch.arange(per_expert).repeat(n_experts, 1)  # (E, n)
    slot_position = torch.searchsorted(slots_through, slot, right=True)  # (E, n) first t with count > slot
    slot_valid = slot_position < positions
    slot_position = slot_position.clamp(max=positions - 1)
    slot_rank = torch.where(slot_valid, slot - slots_before.gather(1, slot_position), 0)
    return slot_position.to(device), slot_rank.to(device), slot_valid.to(device)


@FFW_MODULES.register(ExpertChoiceMoEConfig.family)
class ExpertChoiceMoEFFW(FFWLayer):
    """E experts W1: (E, d, G_e), W2: (E, G_e, d) and a bias-free router (E, d)."""

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
        # x: (B, T, d), B a multiple of the routing group G
        config = self.config
        batch, positions, d_model = x.shape
        group, n_experts, slots = config.routing_group, config.n_experts, config.slots_per_position
        if batch % group:
            raise UserError(f"expert choice routes groups of routing_group={group} sequences but a forward "
                            f"holds {batch}; use a per-process micro-batch that is a multiple of {group} "
                            "(train.micro_batch_size, the process count) or a routing_group that divides it")
        n_groups = batch // group
        affinity = self.router(x).softmax(dim=-1)  # (B, T, E)
        # Each expert ranks, at each position, the G tokens of each group there.
        by_position = affinity.view(n_groups, group, positions, n_experts).permute(0, 2, 3, 1)  # (N, T, E, G)
        most_per_position = -(-slots // n_experts)
        ranked_scores, ranked_rows = by_position.topk(most_per_position, dim=-1)  # (N, T, E, C) each
        slot_position, slot_rank, slot_valid = slot_schedule(positions, slots, n_experts, x.device)  # (E, n)
        expert = torch.arange(n_experts, device=x.device).view(-1, 1)  # (E, 1)
        picked_rows = ranked_rows[:, slot_position, expert, slot_rank]  # (N, E, n)
        picked_scores = ranked_scores[:, slot_position, expert, slot_rank] * slot_valid  # (N, E, n)
        if self.routing_accumulator is not None:  # expert ids only built when a tracker listens
            valid = slot_valid.expand_as(picked_rows)
            self.record_routing(expert.expand_as(slot_position).expand_as(picked_rows)[valid],
                                picked_scores[valid])

        # Token ids in the flattened (B·T) order: sequence g·G + row at position t is (g·G + row)·T + t.
        first_sequence = (torch.arange(n_groups, device=x.device) * group).view(-1, 1, 1)  # (N, 1, 1)
        token_ids = (first_sequence + picked_rows) * positions + slot_position  # (N, E, n)
        token_ids = token_ids.permute(1, 0, 2).reshape(n_experts, -1)  # (E, N·n)
        tokens = x.reshape(-1, d_model)  # (M, d)
        expert_inputs = tokens[token_ids]  # (E, N·n, d)
        activation = ACTIVATION_FUNCTIONS[config.activation]
        hidden = activation(torch.bmm(expert_inputs, self.expert_up))  # (E, N·n, G_e)
        expert_outputs = torch.bmm(hidden, self.expert_down)  # (E, N·n, d)
        weights = picked_scores.permute(1, 0, 2).reshape(n_experts, -1, 1)  # (E, N·n, 1)
        weighted = (expert_outputs * weights.to(expert_outputs.dtype)).reshape(-1, d_model)  # (E·N·n, d)
        # Summed in the residual stream's dtype: under bf16 autocast the experts' output is bf16.
        output = torch.zeros_like(tokens).index_add_(0, token_ids.reshape(-1), weighted.to(tokens.dtype))  # (M, d)
        return output.view(batch, positions, d_model)  # (B, T, d)
