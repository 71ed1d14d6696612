"""Measure forward FLOPs with ``torch.utils.flop_counter.FlopCounterMode``.

The model is built on the ``meta`` device (shapes only, no memory, any size)
with the kernel backend forced to ``reference`` (plain gather + einsum/bmm,
whose matmuls the counter sees), run once in eval mode on a (batch_size,
seq_len) batch, and the counted FLOPs are divided by the batch's tokens.
Compare with ``isoflop.flops.model_costs(config, seq_len)
.flops_per_token_forward_measurable``.

What FlopCounterMode counts: matmul-like aten ops (mm, addmm, bmm, baddbmm,
convolutions and the fused SDPA kernels that have a registered formula),
2 FLOPs per multiply-add. What it does not count, and the accounting
therefore also counts 0 for or lists in ``flop_counter_invisible``: top-k,
sort, gathers/index/scatter/embedding lookups, ``F.embedding_bag`` (the PKM
value read), softmax, sigmoid, activations, norms, elementwise products and
sums.

Attention on the meta device: ``F.scaled_dot_product_attention`` falls back
to its math decomposition there, two ``bmm`` over the full s x s scores, so the
counter sees 2·2·s·d per token per block (causal masking not subtracted),
exactly the accounting's ``attention_scores``. On a real CPU tensor the fused
``_scaled_dot_product_flash_attention_for_cpu`` op has no registered FLOP
formula and the counter reports 0 for attention; measuring on meta avoids
that artefact.

``batch_size`` must hold whole routing groups of expert choice
(``routing_group`` sequences); the FLOPs per token do not depend on it
otherwise (exact against the formula when E divides seq_len·c·routing_group).
``isoflop plan --verify-flops`` measures at the micro-batch one training
process runs (:func:`isoflop.planner.per_rank_micro_batch_size`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

from kernels.dispatch import ENV_BACKEND
from models.config import ModelConfig
from models.ffw.config_base import FFWConfigBase


@contextmanager
def forced_kernel_backend(backend: str) -> Iterator[None]:
    """Set ``$ISOFLOP_KERNEL_BACKEND`` (what "auto" resolves to) to ``backend``
    while inside; its previous value, or its absence, is restored on exit."""
    previous = os.environ.get(ENV_BACKEND)
    os.environ[ENV_BACKEND] = backend
    try:
        yield
    finally:
        if previous is None:
            del os.environ[ENV_BACKEND]
        else:
            os.environ[ENV_BACKEND] = previous


@contextmanager
def reference_kernels() -> Iterator[None]:
    """Force the ``reference`` kernel backend (visible matmuls) while inside."""
    with forced_kernel_backend("reference"):
        yield


def count_forward_flops(module: torch.nn.Module, inputs: torch.Tensor) -> int:
    """Total FLOPs FlopCounterMode sees in one eval-mode forward of ``module``."""
    module.eval()
    with reference_kernels(), torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(inputs)
    return int(counter.get_total_flops())


def measure_forward_flops_per_token(config: ModelConfig, seq_len: int, batch_size: int) -> float:
    """Measured forward FLOPs per token of the whole model (meta device).

    Args:
        config: the resolved model config.
        seq_len: tokens per sequence (<= max_seq_len).
        batch_size: sequences per forward (whole routing groups for expert choice).
    Returns:
        FLOPs per token, to compare with ``flops_per_token_forward_measurable``.
    """
    from models.builder import build_model

    model = build_model(config, device="meta")
    tokens = torch.zeros(batch_size, seq_len, dtype=torch.long, device="meta")
    return count_forward_flops(model, tokens) / (batch_size * seq_len)


def measure_ffw_forward_flops_per_token(ffw_config: FFWConfigBase, d_model: int, seq_len: int,
                                        batch_size: int, n_layers: int = 1) -> float:
    """Measured forward FLOPs per token of one FFW layer (meta device); compare
    with ``ffw_config.costs(d_model)`` minus its ``flop_counter_invisible`` parts."""
    from models.builder import build_ffw

    layer = build_ffw(ffw_config, d_model, n_layers, device="meta")
    inputs = torch.zeros(batch_size, seq_len, d_model, device="meta")
    return count_forward_flops(layer, inputs) / (batch_size * seq_len)
