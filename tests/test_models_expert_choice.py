"""Expert-choice routing groups: the layer, its FLOPs and the plan do not depend
on the micro-batch, the process count or the evaluation batch."""

from __future__ import annotations

import pytest
import torch

from isoflop.errors import UserError
from models import build_ffw
from models.ffw.expert_choice import slot_schedule
from models.ffw.expert_choice_config import ExpertChoiceMoEConfig
from models.routing import RoutingTracker
from models.verify import measure_ffw_forward_flops_per_token

D_MODEL = 16


def slot_counts(positions: int, slots: int, n_experts: int) -> torch.Tensor:
    """(E, T) how many slots expert e has at position t, counted from the schedule."""
    slot_position, slot_rank, slot_valid = slot_schedule(positions, slots, n_experts, torch.device("cpu"))
    counts = torch.zeros(n_experts, positions, dtype=torch.long)
    for expert in range(n_experts):
        for position, rank, valid in zip(slot_position[expert], slot_rank[expert], slot_valid[expert]):
            if valid:
                assert rank == counts[expert, position], "ranks at a position are 0, 1, ... in order"
                counts[expert, position] += 1
    return counts


def test_slot_schedule_by_hand() -> None:
    # S = 2 slots per position, E = 4 experts: C(e, t) = floor((2(t+1) + e) / 4) - floor((2t + e) / 4),
    # so experts 2 and 3 work at even positions, 0 and 1 at odd ones.
    assert slot_counts(4, 2, 4).tolist() == [[0, 1, 0, 1], [0, 1, 0, 1], [1, 0, 1, 0], [1, 0, 1, 0]]
    # E divides S: the classic fixed capacity S / E = 2 at every position.
    assert slot_counts(3, 8, 4).tolist() == [[2, 2, 2]] * 4


@pytest.mark.parametrize("positions, slots, n_experts", [(12, 4, 4), (128, 16, 8), (2048, 16, 128), (7, 3, 5),
                                                         (5, 1, 8), (9, 12, 8)])
def test_slot_schedule_fills_every_position_and_shares_slots_evenly(positions: int, slots: int,
                                                                    n_experts: int) -> None:
    counts = slot_counts(positions, slots, n_experts)
    assert (counts.sum(dim=0) == slots).all()
    per_expert = counts.sum(dim=1)
    assert per_expert.max() - per_expert.min() <= 1


def test_a_groups_output_does_not_depend_on_the_other_groups_in_the_forward() -> None:
    config = ExpertChoiceMoEConfig(n_experts=4, routing_group=4).resolve(D_MODEL, 4.0)
    torch.manual_seed(0)
    layer = build_ffw(config, D_MODEL, 2)
    x = torch.randn(12, 10, D_MODEL)
    together = layer(x)
    for first in range(0, 12, 4):
        torch.testing.assert_close(layer(x[first:first + 4]), together[first:first + 4])
    # The check can fail: a different grouping (sequences 2..5) routes differently.
    assert not torch.allclose(layer(x[2:6])[:2], together[2:4])


def test_each_token_gets_c_experts_on_average() -> None:
    config = ExpertChoiceMoEConfig(n_experts=8, routing_group=4, capacity_factor=2.0).resolve(D_MODEL, 4.0)
    layer = build_ffw(config, D_MODEL, 2)
    with RoutingTracker(torch.nn.ModuleDict({"ffw": layer})) as tracker:
        layer(torch.randn(8, 6, D_MODEL))
    counts = tracker.accumulators["ffw"].selection_counts
    assert int(counts.sum()) == 2 * 8 * 6  # c · tokens (expert, token) pairs
    assert counts.tolist() == [2 * 8 * 6 // 8] * 8  # every expert takes the same share


@pytest.mark.parametrize("batch", [16, 32, 128])
def test_flops_match_the_accounting_at_any_multiple_of_the_group(batch: int) -> None:
    """E = 128 (the PEER study): measured/accounted was 6.6 at B = 16 and 1.8 at B = 64
    before routing groups; now 1.0 at every micro-batch that holds whole groups."""
    config = ExpertChoiceMoEConfig(n_experts=128, routing_group=16, expert_size=8).resolve(D_MODEL, 4.0)
    costs = config.costs(D_MODEL)
    measured = measure_ffw_forward_flops_per_token(config, D_MODEL, seq_len=64, batch_size=batch)
    assert measured == pytest.approx(costs.forward_flops, rel=1e-9)


def test_a_batch_that_is_not_whole_groups_is_a_user_error() -> None:
    config = ExpertChoiceMoEConfig(n_experts=4, routing_group=4).resolve(D_MODEL, 4.0)
    layer = build_ffw(config, D_MODEL, 2)
    with pytest.raises(UserError, match="routing_group=4 sequences but a forward holds 6"):
        layer(torch.randn(6, 3, D_MODEL))


@pytest.mark.parametrize("values, message", [
    ({"capacity_factor": 0.5, "routing_group": 3}, "whole number of slots"),
    ({"capacity_factor": 9.0, "n_experts": 8}, "must be <= n_experts=8"),
    ({"routing_group": 0}, "must be a finite number > 0"),
])
def test_config_errors_name_the_field_and_the_fix(values: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        ExpertChoiceMoEConfig(**values)
