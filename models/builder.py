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

from models.config import FFW_FAMILIES, ModelConfig
from models.ffw.base import FFWLayer
from models.ffw.config_base import FFWConfigBase
from models.registry import FFW_MODULES
from models.transformer import TransformerLM


def ffw_module_class(family: str) -> type[FFWLayer]:
    """The ``nn.Module`` class of ``family``: imports the module its config names
    (which registers the class in ``FFW_MODULES``) on first use."""
    importlib.import_module(FFW_FAMILIES.get(family).module_path)
    return FFW_MODULES.get(family)


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
    unset = [name for name in ffw_config.backbone_settings if getattr(ffw_config, name) is None]
    if unset:
        raise ValueError(f"{type(ffw_config).__name__}.{unset[0]} is unset; set it, or place the layer in a "
                         "ModelConfig, which takes it from the backbone")
    module_class = ffw_module_class(ffw_config.family)
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
