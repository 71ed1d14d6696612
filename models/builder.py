"""Public builders: a whole model or a single FFW layer from their configs.

    from models import build_model, build_ffw
    model = build_model(model_config)                  # TransformerLM
    layer = build_ffw(PEERConfig(n_experts=256**2), d_model=256, n_layers=12)

Parameters are created directly on ``device`` (``"meta"`` gives a shape-only
model for FLOP and parameter checks at full size without memory).
"""

from __future__ import annotations

import contextlib
import importlib

import torch

from models.config import ModelConfig
from models.ffw.base import FFWLayer
from models.ffw.cost_model import FFWConfigBase
from models.registry import FFW_MODULES
from models.transformer import TransformerLM

FFW_MODULE_PATHS = ("models.ffw.dense", "models.ffw.topk_activation", "models.ffw.token_choice",
                    "models.ffw.expert_choice", "models.ffw.pkm", "models.ffw.peer")
"""Modules whose import registers every FFW family in ``FFW_MODULES``."""

for _module_path in FFW_MODULE_PATHS:
    importlib.import_module(_module_path)


def _device_context(device: torch.device | str | None) -> contextlib.AbstractContextManager:
    """``torch.device(device)`` as a context, or no context at all when ``device`` is None
    (so an enclosing ``with torch.device(...)`` keeps applying; on torch < 2.8
    ``torch.get_default_device()`` does not see such a context)."""
    return torch.device(device) if device is not None else contextlib.nullcontext()


def build_ffw(ffw_config: FFWConfigBase, d_model: int, n_layers: int, *,
              device: torch.device | str | None = None, sparse_tables: bool = False) -> FFWLayer:
    """One FFW layer of ``ffw_config``'s family (looked up in ``FFW_MODULES``).

    Args:
        ffw_config: a resolved family config (sizes filled in).
        d_model: residual width d.
        n_layers: blocks of the model it belongs to (initialisation scales).
        device: where to create the parameters (``"meta"``: no memory).
        sparse_tables: PEER/PKM tables get sparse gradients.
    """
    module_class = FFW_MODULES.get(ffw_config.family)
    with _device_context(device):
        return module_class(ffw_config, d_model, n_layers, sparse_tables=sparse_tables)


def build_model(config: ModelConfig, *, device: torch.device | str | None = None,
                sparse_tables: bool = False) -> TransformerLM:
    """The transformer of ``config``: replaced blocks get ``config.ffw``, the
    others the backbone's dense FFW."""
    backbone = config.backbone
    with _device_context(device):
        ffw_layers = [build_ffw(config.block_ffw(index), backbone.d_model, backbone.n_layers,
                                device=device, sparse_tables=sparse_tables)
                      for index in range(backbone.n_layers)]
        return TransformerLM(config, ffw_layers)
