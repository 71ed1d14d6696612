"""Token-choice mixture of experts: softmax top-K, Switch, sigma-MoE, S-BASE.

Every token picks K of N_E two-layer experts of width G from router logits
r = W_sel x (Csordás et al. 2023, "Approximating Two-Layer Feedforward
Networks for Efficient Transformers", §5, Eq. 19):

- ``softmax``: g = softmax(r), top-K of g, gates not renormalised;
  ``softmax_renorm``: the K gates renormalised to sum to 1. Switch
  (Fedus et al. 2021) is ``softmax`` with K = 1, the load-balancing loss and
  a capacity factor.
- ``sigmoid`` (sigma-MoE): g = σ(r), top-K, gates σ(r) (Eq. 19).
- ``sinkhorn`` (S-BASE, Clark et al. 2022, with sigmoid gates as in the
  sigma-MoE paper §4): in training the selection is the top-K of the
  Sinkhorn-balanced assignment matrix; at inference the top-K of r; the gate
  is always σ(r).

Experts run through ``kernels.cvmm`` (up) and ``kernels.cvmm_weighted_reduce``
(gated down + sum), y = Σ_k g_k W2[e_k] act(W1[e_k] x).

Auxiliary losses (stored through ``models.routing``):

- ``load_balance`` (Switch, sigma-MoE paper Eq. 15–17):
  N_E · Σ_i f_i P_i, f_i = fraction of the T·K selections that went to
  expert i, P_i = mean over tokens of softmax(r)_i.
- ``entropy`` (sigma-MoE, Eq. 20–21): -H(p) = Σ_i p_i log p_i of the
  batch-averaged softmax p = mean_t softmax(r_t), computed in log space.

Expert dropout (Eq. 22): in training each (token, expert) pair is removed
from the selection with probability δ; the remaining gates are not rescaled.

Causality: a token's output must not depend on later tokens. Everything
batch-wide here respects that: the Sinkhorn balancing runs over the tokens of
the batch at the same position (never across positions), and the capacity
cap admits selections in the order (position, rank k, batch row), so a
selection is only ever displaced by selections at the same or earlier
positions. (Sinkhorn within a sequence, as in the public sigma-MoE code,
would leak future tokens.)

FLOPs per token seen by FlopCounterMode (reference backend): router 2·d·N_E,
experts K·(2·d·G + 2·G·d); capacity-dropped selections are still computed
(gate 0). Not seen: softmax/sigmoid, Sinkhorn, top-K, sorting, gathers, the
gate products and the sum over K.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from models.ffw.base import ACTIVATION_FUNCTIONS, FFWLayer
from models.ffw.token_choice_config import TokenChoiceMoEConfig
from models.registry import FFW_MODULES


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """-H(p) with p = mean over tokens of softmax(logits) (sigma-MoE Eq. 20–21).

    Args:
        logits: (M, N_E) router logits.
    Returns:
        scalar Σ_i p_i log p_i (minimising it maximises the entropy).
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)  # (M, N_E)
    log_mean = log_probs.logsumexp(dim=0) - math.log(logits.shape[0])  # (N_E,) log p
    return (log_mean.exp() * log_mean).sum()


def load_balance_loss(logits: torch.Tensor, expert_index: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Switch load-balancing loss N_E · Σ_i f_i P_i (Fedus et al. 2021 Eq. 4;
    sigma-MoE paper Eq. 15–17). Equals 1 for perfectly even routing.

    Args:
        logits: (M, N_E) router logits.  expert_index: (M, K) selections.
    """
    probs = logits.float().softmax(dim=-1)  # (M, N_E)
    mean_probs = probs.mean(dim=0)  # (N_E,) P_i
    flat_index = expert_index.reshape(-1)
    counts = torch.zeros(n_experts, device=logits.device).scatter_add_(
        0, flat_index, torch.ones_like(flat_index, dtype=torch.float32))  # (N_E,)
    fractions = counts / flat_index.numel()  # (N_E,) f_i
    return n_experts * (fractions * mean_probs).sum()


@torch.no_grad()
def sinkhorn_balanced_log_assignment(logits: torch.Tensor, iterations: int) -> torch.Tensor:
    """Log of the Sinkhorn-balanced assignment matrix (Clark et al. 2022, S-BASE).

    For each group (leading axes) of A tokens and N_E experts finds row and
    column offsets b_t, a_e such that P = exp(r + b + a) has rows summing to 1
    and columns summing to A / N_E (each expert takes an equal share).

    Args:
        logits: (..., A, N_E); the balancing runs over the A axis.
        iterations: alternating row/column normalisations.
    Returns:
        (..., A, N_E) log P; its row-wise top-K is the balanced selection.
    """
    tokens, n_experts = logits.shape[-2:]
    logits = logits.float()
    column_offset = torch.zeros_like(logits[..., 0, :])  # (..., N_E)
    row_offset = torch.zeros_like(logits[..., 0])  # (..., A)
    for _ in range(iterations):
        row_offset = -(logits + column_offset.unsqueeze(-2)).logsumexp(dim=-1)
        column_offset = math.log(tokens / n_experts) - (logits + row_offset.unsqueeze(-1)).logsumexp(dim=-2)
    return logits + row_offset.unsqueeze(-1) + column_offset.unsqueeze(-2)


def capacity_keep_mask(expert_index: torch.Tensor, n_experts: int, capacity: int) -> torch.Tensor:
    """Which selections fit under a per-expert capacity, admitted causally.

    Args:
        expert_index: (B, T, K) selections.
        capacity: selections each expert accepts per forward.
    Returns:
        (B, T, K) bool; selections are admitted in the order (position t,
        rank k, batch row b), so the mask at position t depends only on
        selections at positions <= t.
    """
    batch, positions, top_k = expert_index.shape
    in_priority_order = expert_index.permute(1, 2, 0).reshape(-1)  # (T·K·B,)
    sorted_expert, order = torch.sort(in_priority_order, stable=True)
    counts = torch.zeros(n_experts, dtype=torch.long, device=expert_index.device).scatter_add_(
        0, in_priority_order, torch.ones_like(in_priority_order))  # (N_E,)
    group_start = counts.cumsum(0) - counts  # (N_E,)
    rank_sorted = torch.arange(order.numel(), device=order.device) - group_start[sorted_expert]
    rank = torch.empty_like(rank_sorted).scatter_(0, order, rank_sorted)  # (T·K·B,) rank within expert
    return (rank < capacity).view(positions, top_k, batch).permute(2, 0, 1)  # (B, T, K)


@FFW_MODULES.register(TokenChoiceMoEConfig.family)
class TokenChoiceMoEFFW(FFWLayer):
    """N_E experts (W1: (N_E, d, G), W2: (N_E, G, d)) and a bias-free router (N_E, d)."""

    def __init__(self, config: TokenChoiceMoEConfig, d_model: int, n_layers: int,
                 sparse_tables: bool = False) -> None:
        super().__init__(config, d_model)
        if config.expert_size is None:
            raise ValueError("TokenChoiceMoEConfig.expert_size is unresolved; call resolve() first")
        self.router = nn.Linear(d_model, config.n_experts, bias=False)
        self.expert_up = nn.Parameter(torch.empty(config.n_experts, d_model, config.expert_size))
        self.expert_down = nn.Parameter(torch.empty(config.n_experts, config.expert_size, d_model))
        self.reset_parameters(n_layers)

    @torch.no_grad()
    def reset_parameters(self, n_layers: int) -> None:
        """``sigma_moe`` (Csordás et al. 2023 §5): the experts together are
        initialised like the dense layer they replace, W1 std sqrt(2/(d·L)),
        W2 std sqrt(2/(d_ff·L)) with d_ff = N_E·G and L = n_layers; router rows
        drawn with std 1/sqrt(d), then rescaled to equal norm keeping the
        overall std. ``default``: std 1/sqrt(d) for W1 and the router,
        1/sqrt(N_E·G) for W2."""
        d_model, d_ff = self.d_model, self.config.n_experts * self.config.expert_size
        layer_scale = math.sqrt(2.0 / n_layers) if self.config.init == "sigma_moe" else 1.0
        nn.init.normal_(self.expert_up, std=layer_scale / math.sqrt(d_model))
        nn.init.normal_(self.expert_down, std=layer_scale / math.sqrt(d_ff))
        nn.init.normal_(self.router.weight, std=1.0 / math.sqrt(d_model))
        if self.config.init == "sigma_moe" and self.router.weight.device.type != "meta":
            weight = self.router.weight
            overall_std = weight.std()
            weight.div_(weight.norm(dim=1, keepdim=True))
            weight.mul_(overall_std / weight.std())

    def select(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gates and expert ids of each token's K selections.

        Args:
            logits: (B, T, N_E) router logits.
        Returns:
            gates (B, T, K) and expert_index (B, T, K) int64.
        """
        config = self.config
        # Softmax routers select by and gate with the same probabilities.
        probabilities = logits.softmax(dim=-1) if config.router in ("softmax", "softmax_renorm") else None
        if config.router == "sinkhorn" and self.training:
            # Balance over the batch at each position: (T, B, N_E) groups of B tokens.
            balanced = sinkhorn_balanced_log_assignment(logits.transpose(0, 1), config.sinkhorn_iterations)
            selection_scores = balanced.transpose(0, 1)  # (B, T, N_E)
        elif probabilities is not None:
            selection_scores = probabilities
        else:
            selection_scores = logits.sigmoid()
        if self.training and config.expert_dropout > 0:
            dropped = torch.rand_like(selection_scores) < config.expert_dropout
            selection_scores = selection_scores.masked_fill(dropped, float("-inf"))
        top_scores, expert_index = selection_scores.topk(config.top_k, dim=-1)  # (B, T, K)
        if probabilities is None:  # sigmoid, sinkhorn
            gates = logits.gather(-1, expert_index).sigmoid()
        else:
            gates = probabilities.gather(-1, expert_index)
            if config.router == "softmax_renorm":
                gates = gates / gates.sum(dim=-1, keepdim=True)
        if self.training and config.expert_dropout > 0:
            # Fewer than K experts survived: the dropped ones filling the top-K contribute nothing.
            gates = gates.masked_fill(top_scores == float("-inf"), 0.0)
        return gates, expert_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, d)
        config = self.config
        batch, positions, d_model = x.shape
        logits = self.router(x)  # (B, T, N_E)
        gates, expert_index = self.select(logits)  # (B, T, K) each
        self.record_routing(expert_index, gates)
        flat_logits = logits.reshape(-1, config.n_experts)  # (M, N_E)
        if config.load_balance_weight > 0:
            self.set_auxiliary_loss("load_balance", config.load_balance_weight * load_balance_loss(
                flat_logits, expert_index, config.n_experts))
        if config.entropy_weight > 0:
            self.set_auxiliary_loss("entropy", config.entropy_weight * entropy_loss(flat_logits))
        if config.capacity_factor is not None:
            capacity = math.ceil(config.capacity_factor * config.top_k * batch * positions / config.n_experts)
            gates = gates * capacity_keep_mask(expert_index, config.n_experts, capacity)

        tokens = x.reshape(-1, d_model)  # (M, d)
        flat_index = expert_index.reshape(-1)  # (M·K,) token-major
        token_rows = tokens.repeat_interleave(config.top_k, dim=0)  # (M·K, d)
        hidden = ACTIVATION_FUNCTIONS[config.activation](
            kernels.cvmm(token_rows, flat_index, self.expert_up))  # (M·K, G)
        output = kernels.cvmm_weighted_reduce(hidden, flat_index, gates.reshape(-1, config.top_k).to(x.dtype),
                                              self.expert_down)  # (M, d)
        return output.view(batch, positions, d_model)  # (B, T, d)
