"""Token-choice MoE details on hand-computed examples: sigma-MoE entropy
regularisation (Eq. 20–21) and expert dropout (Eq. 22), the Switch
load-balancing loss (Eq. 15–17), S-BASE Sinkhorn balancing, capacity."""

from __future__ import annotations

import math

import pytest
import torch

from models import build_ffw
from models.ffw.token_choice import (
    capacity_keep_mask, entropy_loss, load_balance_loss, sinkhorn_balanced_log_assignment,
)
from models.ffw.token_choice_config import TokenChoiceMoEConfig

D_MODEL = 8


def build_layer(**fields: object) -> torch.nn.Module:
    config = TokenChoiceMoEConfig(**fields).resolve(D_MODEL, 4.0)
    return build_ffw(config, D_MODEL, n_layers=2)


def test_entropy_term_matches_eq_21_by_hand() -> None:
    # Token softmaxes [1/4, 3/4] and [1/2, 1/2]: batch mean p = [3/8, 5/8].
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    expected = 3 / 8 * math.log(3 / 8) + 5 / 8 * math.log(5 / 8)  # -H(p)
    assert entropy_loss(logits).item() == pytest.approx(expected, rel=1e-6)


def test_layer_stores_weighted_entropy_loss() -> None:
    torch.manual_seed(0)
    layer = build_layer(n_experts=4, top_k=2, router="sigmoid", entropy_weight=0.5)
    x = torch.randn(2, 3, D_MODEL)
    layer(x)
    expected = 0.5 * entropy_loss(layer.router(x).reshape(-1, 4))
    torch.testing.assert_close(layer.auxiliary_losses["entropy"], expected)


def test_expert_dropout_removes_experts_without_rescaling() -> None:
    torch.manual_seed(0)
    layer = build_layer(n_experts=8, top_k=3, router="sigmoid", expert_dropout=0.5).train()
    logits = torch.randn(2, 5, 8)
    torch.manual_seed(123)
    dropped = torch.rand_like(logits) < 0.5  # the mask the layer draws from the same seed
    torch.manual_seed(123)
    gates, expert_index = layer.select(logits)
    selected_dropped = dropped.gather(-1, expert_index)  # (B, T, K)
    # A dropped expert is selected only when fewer than K survived, and then its gate is 0.
    assert torch.equal(selected_dropped.any(dim=-1), (~dropped).sum(dim=-1) < 3)
    masked_scores = logits.sigmoid().masked_fill(dropped, float("-inf"))
    kept_index = masked_scores.topk(3, dim=-1).indices
    assert torch.equal(expert_index[~selected_dropped], kept_index[~selected_dropped])
    # Gates are the plain sigmoid scores: no 1/(1 - δ) or renormalisation.
    expected_gates = logits.gather(-1, expert_index).sigmoid().masked_fill(selected_dropped, 0.0)
    torch.testing.assert_close(gates, expected_gates, rtol=0, atol=0)
    # Without dropout (eval) the selection is the plain top-K.
    _, eval_index = layer.eval().select(logits)
    assert torch.equal(eval_index, logits.topk(3, dim=-1).indices)
    assert not torch.equal(eval_index, expert_index)


def test_switch_load_balancing_matches_eq_17_by_hand() -> None:
    # Three tokens prefer expert 0 with p = 3/4, one prefers expert 1 with p = 3/4.
    preferring_zero, preferring_one = [math.log(3.0), 0.0], [0.0, math.log(3.0)]
    logits = torch.tensor([preferring_zero, preferring_zero, preferring_zero, preferring_one])
    expert_index = logits.argmax(dim=-1, keepdim=True)  # (4, 1) top-1
    # f = [3/4, 1/4]; P = [(3·3/4 + 1/4)/4, (3·1/4 + 3/4)/4] = [5/8, 3/8]; N_E Σ f P = 2·(15/32 + 3/32).
    assert load_balance_loss(logits, expert_index, 2).item() == pytest.approx(1.125, rel=1e-6)


def test_sinkhorn_balances_a_batch_that_prefers_one_expert() -> None:
    logits = torch.tensor([[5.0, 0.0], [4.0, 0.0], [3.0, 0.0], [2.0, 0.0]])  # all prefer expert 0
    assert logits.argmax(dim=-1).tolist() == [0, 0, 0, 0]
    balanced = sinkhorn_balanced_log_assignment(logits, iterations=20)
    torch.testing.assert_close(balanced.exp().sum(dim=0), torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(balanced.exp().sum(dim=1), torch.ones(4), atol=1e-4, rtol=0)
    # The strongest preferences keep expert 0, the rest move: two tokens each.
    assert balanced.argmax(dim=-1).tolist() == [0, 0, 1, 1]


def test_s_base_layer_balances_in_training_and_uses_argmax_at_inference() -> None:
    torch.manual_seed(0)
    layer = build_layer(n_experts=4, top_k=1, router="sinkhorn", sinkhorn_iterations=30)
    logits = torch.randn(16, 1, 4) + torch.tensor([3.0, 0.0, 0.0, 0.0])  # 16 sequences, one position
    gates, expert_index = layer.train().select(logits)
    train_counts = torch.bincount(expert_index.flatten(), minlength=4)
    torch.testing.assert_close(gates, logits.gather(-1, expert_index).sigmoid())
    _, eval_index = layer.eval().select(logits)
    assert torch.equal(eval_index, logits.argmax(dim=-1, keepdim=True))
    eval_counts = torch.bincount(eval_index.flatten(), minlength=4)
    # The argmax of the balanced matrix is near-balanced (not exactly: ties are broken by row).
    assert eval_counts.max() >= 12 and train_counts.max() - train_counts.min() <= 2, (train_counts, eval_counts)


def test_capacity_admits_earlier_positions_first() -> None:
    # One sequence, four positions, all routed to expert 0; capacity 2.
    expert_index = torch.zeros(1, 4, 1, dtype=torch.long)
    keep = capacity_keep_mask(expert_index, n_experts=2, capacity=2)
    assert keep.flatten().tolist() == [True, True, False, False]
    # Two sequences: position 0 of both before position 1 of either.
    keep = capacity_keep_mask(torch.zeros(2, 2, 1, dtype=torch.long), n_experts=2, capacity=2)
    assert keep[:, :, 0].tolist() == [[True, False], [True, False]]


def test_switch_layer_zeroes_the_output_of_dropped_tokens() -> None:
    torch.manual_seed(0)
    layer = build_layer(n_experts=2, top_k=1, router="softmax", capacity_factor=0.5).eval()
    x = torch.randn(1, 8, D_MODEL)
    output = layer(x)
    # capacity = ceil(0.5 · 1 · 8 / 2) = 2 per expert: at most 4 tokens get a non-zero output.
    assert int((output.abs().sum(dim=-1) > 0).sum()) <= 4
