"""Every FFW family trains under bf16 autocast, as the trainer runs it on a GPU
(``train.precision=bf16``, forward and loss inside ``torch.autocast``).

On the CPU, autocast follows the same dtype rules for the ops these layers use,
so a layer that mixes a bf16 result into an fp32 buffer fails here too.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import build_model
from test_models_families import BATCH, SEQ, TINY_BACKBONE, TINY_FFW, tiny_model_config


@pytest.mark.parametrize("name", sorted(TINY_FFW))
def test_forward_and_backward_under_bf16_autocast(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_model_config(name, replace_blocks="middle"))
    model.train()
    tokens = torch.randint(0, TINY_BACKBONE.vocab_size, (BATCH, SEQ + 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(tokens[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten()) + model.auxiliary_loss()
    loss.backward()
    assert torch.isfinite(loss)
    for parameter_name, parameter in model.named_parameters():
        if parameter.requires_grad and parameter.grad is not None:
            gradient = parameter.grad.to_dense() if parameter.grad.is_sparse else parameter.grad
            assert torch.isfinite(gradient).all(), parameter_name
