"""Equivalences a comparison relies on, for every FFW family.

1. Gradient accumulation: one step on a batch of B sequences gives the same
   gradients as four micro-batches of B/4, within fp32 tolerance. True for
   every family whose training forward treats each sequence (expert choice:
   each routing group) on its own. Not true, and why (the test checks what
   is true instead — the same layer with that part switched off):

   - ``switch``: the load-balancing loss N·Σ f_i P_i multiplies two means
     over the forward's tokens, and the capacity cap counts them;
   - ``sigma_moe``: the entropy regulariser is the entropy of the forward's
     mean router distribution, and expert dropout draws a new mask per forward;
   - ``s_base``: Sinkhorn balances the forward's tokens at each position;
   - the paper's query BatchNorm (``query_norm_statistics=batch``): it
     normalises with the forward's statistics.

2. Evaluation: a token's loss is the same whatever the evaluation batch, for
   every family but one: Switch's capacity cap (``capacity_factor``) admits
   ceil(c·K·B·T/E) selections per expert and forward, so whether a token's
   selection fits depends on the other sequences of the evaluation batch
   (the test checks the same layer without the cap).

Two processes against one (gloo) are in ``tests/test_train_distributed.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from isoflop.data import evaluation_windows
from isoflop.evaluation import token_losses
from models import build_model
from model_support import BATCH, SEQ, TINY_BACKBONE, TINY_FFW, tiny_model_config

ACCUMULATION_BATCH = 8
NOT_ACCUMULATION_EQUIVALENT = {
    "switch": {"load_balance_weight": 0.0, "capacity_factor": None},
    "sigma_moe": {"entropy_weight": 0.0, "expert_dropout": 0.0},
    "s_base": {"router": "sigmoid"},
    "pkm_softmax_bn_batch": {"query_norm_statistics": "prefix"},
    "peer_softmax_bn_batch": {"query_norm_statistics": "prefix"},
}
"""Cases whose training forward couples the sequences of a forward, and the
options that make the rest of the same layer equivalent."""

CASES = {**{name: (name, {}) for name in TINY_FFW},
         "pkm_softmax_bn_batch": ("pkm_softmax_bn", {"query_norm_statistics": "batch"}),
         "peer_softmax_bn_batch": ("peer_softmax_bn", {"query_norm_statistics": "batch"})}


def step_gradients(model: torch.nn.Module, tokens: torch.Tensor, micro_batches: int) -> dict[str, torch.Tensor]:
    """Gradients of one optimizer step's loss (mean over tokens + auxiliary) accumulated over ``micro_batches``."""
    model.zero_grad(set_to_none=True)
    for micro in tokens.chunk(micro_batches):
        logits = model(micro[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), micro[:, 1:].flatten()) + model.auxiliary_loss()
        (loss / micro_batches).backward()
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters()}


def assert_same_gradients(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    for name, gradient in first.items():
        torch.testing.assert_close(second[name], gradient, rtol=1e-4, atol=1e-6, msg=lambda text: f"{name}: {text}")


def accumulation_gradients(name: str, **overrides: object) -> tuple[dict, dict]:
    base, case_overrides = CASES[name]
    config = tiny_model_config(base, **{**case_overrides, **overrides})
    torch.manual_seed(0)
    model = build_model(config).train()
    tokens = torch.randint(0, TINY_BACKBONE.vocab_size, (ACCUMULATION_BATCH, SEQ + 1))
    torch.manual_seed(1)
    whole = step_gradients(model, tokens, 1)
    torch.manual_seed(1)
    accumulated = step_gradients(model, tokens, 4)
    return whole, accumulated


@pytest.mark.parametrize("name", sorted(set(CASES) - set(NOT_ACCUMULATION_EQUIVALENT)))
def test_gradient_accumulation_gives_the_whole_batch_gradients(name: str) -> None:
    assert_same_gradients(*accumulation_gradients(name))


@pytest.mark.parametrize("name", sorted(NOT_ACCUMULATION_EQUIVALENT))
def test_coupled_layers_differ_and_are_equivalent_without_the_coupling(name: str) -> None:
    whole, accumulated = accumulation_gradients(name)
    assert any(not torch.allclose(whole[key], accumulated[key], rtol=1e-4, atol=1e-6) for key in whole)
    assert_same_gradients(*accumulation_gradients(name, **NOT_ACCUMULATION_EQUIVALENT[name]))


def test_evaluation_windows_count_every_target_once() -> None:
    tokens = np.arange(5 * SEQ + 7, dtype=np.int32)
    windows, first_counted = evaluation_windows(tokens, SEQ, max_tokens=10**6)
    assert windows.shape == (6, SEQ + 1)
    counted = np.concatenate([window[1:][first:] for window, first in zip(windows, first_counted)])
    assert counted.tolist() == tokens[1:].tolist()
    short, first = evaluation_windows(tokens[:5], SEQ, max_tokens=10**6)
    assert short.tolist() == [tokens[:5].tolist()] and first.tolist() == [0]


def test_evaluation_windows_sample_the_whole_corpus_when_it_is_larger() -> None:
    tokens = np.arange(100 * SEQ + 1, dtype=np.int32)
    windows, first_counted = evaluation_windows(tokens, SEQ, max_tokens=10 * SEQ - 3)
    assert windows.shape == (10, SEQ + 1) and not first_counted.any()
    starts = windows[:, 0]
    assert starts[0] == 0 and starts[-1] == 99 * SEQ  # first and last window of the corpus
    assert (np.diff(starts) >= SEQ).all()  # no target counted twice


EVALUATION_BATCH_DEPENDENT = {"switch": {"capacity_factor": None}}
"""Cases whose evaluation forward couples the sequences of a batch, and the
options that make the rest of the same layer batch-independent."""


def evaluation_losses_by_batch(name: str, **extra: object) -> list[torch.Tensor]:
    """Per-token evaluation losses of case ``name`` at 1, 2 and 8 routing groups per batch."""
    base, overrides = CASES[name]
    config = tiny_model_config(base, **{**overrides, **extra})
    torch.manual_seed(0)
    model = build_model(config)
    model.train()
    model(torch.randint(0, TINY_BACKBONE.vocab_size, (BATCH * 2, SEQ)))  # training statistics, if any
    model.eval()
    group = config.ffw.sequences_per_routing_group
    tokens = np.random.default_rng(0).integers(0, TINY_BACKBONE.vocab_size, 7 * SEQ + 5).astype(np.int32)
    windows, first_counted = evaluation_windows(tokens, SEQ, max_tokens=10**6)  # 8 windows, the last overlapping
    losses = [token_losses(model, windows, first_counted, batch_size, group, torch.device("cpu"))
              for batch_size in (group, 2 * group, 8 * group)]
    assert losses[0].shape == (7 * SEQ + 4,)
    return losses


@pytest.mark.parametrize("name", sorted(set(CASES) - set(EVALUATION_BATCH_DEPENDENT)))
def test_a_tokens_evaluation_loss_does_not_depend_on_the_evaluation_batch(name: str) -> None:
    losses = evaluation_losses_by_batch(name)
    for other in losses[1:]:
        torch.testing.assert_close(other, losses[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(EVALUATION_BATCH_DEPENDENT))
def test_batch_coupled_evaluation_differs_and_is_independent_without_the_coupling(name: str) -> None:
    losses = evaluation_losses_by_batch(name)
    assert not torch.allclose(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    losses = evaluation_losses_by_batch(name, **EVALUATION_BATCH_DEPENDENT[name])
    for other in losses[1:]:
        torch.testing.assert_close(other, losses[0], rtol=1e-5, atol=1e-6)
