"""Routing statistics (PEER Table 2: expert usage, unevenness) and the
shared auxiliary-loss mechanism."""

from __future__ import annotations

import math

import pytest
import torch

from models import build_model
from models.builder import ffw_module_class
from models.config import BackboneConfig, ModelConfig
from models.ffw.peer_config import PEERConfig
from models.ffw.token_choice_config import TokenChoiceMoEConfig
from models.registry import Registry
from models.routing import RoutingAccumulator, RoutingTracker, auxiliary_loss_terms, expert_usage, unevenness

BACKBONE = BackboneConfig(n_layers=3, d_model=16, n_heads=2, vocab_size=32, max_seq_len=8)


def test_usage_and_unevenness_match_hand_computed_values() -> None:
    accumulator = RoutingAccumulator(4)
    accumulator.add(torch.tensor([0, 0]), torch.tensor([0.5, 0.25]))
    accumulator.add(torch.tensor([[1]]), torch.tensor([[0.25]]))
    statistics = accumulator.statistics()
    assert statistics["expert_usage"] == 0.5  # experts 0 and 1 of 4
    # p = [3/4, 1/4, 0, 0]; KL(p || 1/4) = 3/4 log 3 + 1/4 log 1.
    assert statistics["unevenness"] == pytest.approx(0.75 * math.log(3.0))
    assert statistics["n_experts"] == 4


def test_unevenness_is_zero_for_uniform_and_log_n_for_one_expert() -> None:
    assert unevenness(torch.ones(8)) == pytest.approx(0.0)
    assert unevenness(torch.tensor([0.0, 0.0, 5.0, 0.0])) == pytest.approx(math.log(4.0))
    assert expert_usage(torch.tensor([0, 3, 0, 1])) == 0.5
    assert math.isnan(unevenness(torch.zeros(3)))


def test_tracker_reports_every_routed_layer_and_detaches_on_exit() -> None:
    ffw = PEERConfig(n_experts=64, n_heads=2, top_k=4, d_key=8)
    model = build_model(ModelConfig(BACKBONE, ffw, replace_blocks=(0, 2))).eval()
    tokens = torch.randint(0, 32, (2, 8))
    with RoutingTracker(model) as tracker:
        model(tokens)
        model(tokens)
    statistics = tracker.statistics()
    assert sorted(statistics) == ["blocks.0.ffw", "blocks.2.ffw"]
    layer_statistics = statistics["blocks.0.ffw"]
    counts = tracker.accumulators["blocks.0.ffw"].selection_counts
    assert int(counts.sum()) == 2 * 2 * 8 * 2 * 4  # forwards x tokens x heads x k
    assert layer_statistics["n_experts"] == 64 and 0 < layer_statistics["expert_usage"] <= 1
    assert layer_statistics["unevenness"] >= 0
    model(tokens)  # outside the tracker nothing accumulates
    assert int(tracker.accumulators["blocks.0.ffw"].selection_counts.sum()) == int(counts.sum())
    assert model.blocks[0].ffw.routing_accumulator is None


def test_auxiliary_losses_come_out_through_one_interface() -> None:
    ffw = TokenChoiceMoEConfig(n_experts=4, top_k=1, router="softmax", load_balance_weight=0.1,
                               entropy_weight=0.01).resolve(16, 4.0)
    model = build_model(ModelConfig(BACKBONE, ffw, replace_blocks="all"))
    model(torch.randint(0, 32, (2, 8)))
    terms = auxiliary_loss_terms(model)
    assert sorted(terms) == [f"blocks.{i}.ffw.{name}" for i in range(3) for name in ("entropy", "load_balance")]
    torch.testing.assert_close(model.auxiliary_loss(), torch.stack(list(terms.values())).sum())
    dense = build_model(ModelConfig(BACKBONE, ffw, replace_blocks="none"))
    dense(torch.randint(0, 32, (2, 8)))
    assert dense.auxiliary_loss().item() == 0.0


def test_registry_refuses_duplicates_and_lists_valid_names() -> None:
    registry: Registry = Registry("thing")
    registry.register("a")(int)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(float)
    with pytest.raises(KeyError, match="valid names: a"):
        registry.get("b")
    with pytest.raises(KeyError, match="dense, expert_choice_moe"):
        ffw_module_class("nope")
