"""The interface every FFW module implements.

``forward(x (B, T, d)) -> y (B, T, d)``. The leading (batch, position) axes
are kept because expert-choice routing groups the tokens of one position
(see ``models/ffw/expert_choice.py``); every other family treats the B·T tokens
independently.

Auxiliary losses and routing statistics go through :mod:`models.routing`:
a layer calls :meth:`FFWLayer.set_auxiliary_loss` and
:meth:`FFWLayer.record_routing` in its forward and nothing else is needed
from the training loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.ffw.config_base import FFWConfigBase
from models.routing import RoutingAccumulator

ACTIVATION_FUNCTIONS = {"relu": F.relu, "gelu": F.gelu}


def _clear_auxiliary_losses(layer: "FFWLayer", inputs: tuple) -> None:
    """Forward pre-hook: a forward's losses never outlive the next forward."""
    layer.auxiliary_losses = {}


def init_linear(linear: nn.Linear | nn.Parameter, std: float) -> None:
    """Normal(0, std) initialisation of a weight (GPT-2 style: std 0.02 for
    inputs, 0.02 / sqrt(2 · n_layers) for projections into the residual)."""
    weight = linear.weight if isinstance(linear, nn.Linear) else linear
    nn.init.normal_(weight, mean=0.0, std=std)


def residual_std(n_layers: int) -> float:
    """Init std of layers writing into the residual stream (Radford et al. 2019, GPT-2 §2.3)."""
    return 0.02 / (2 * n_layers) ** 0.5


class FFWLayer(nn.Module):
    """Base of every FFW module.

    Attributes:
        config: the family's resolved config.
        d_model: residual width d.
        n_experts: experts a router chooses among, the config's ``n_experts``
            (``None`` for unrouted layers, whose configs have none).
        auxiliary_losses: weighted auxiliary losses of the last forward, by name.
        routing_accumulator: set by :class:`models.routing.RoutingTracker`.
    """

    def __init__(self, config: FFWConfigBase, d_model: int) -> None:
        super().__init__()
        self.config = config
        self.d_model = d_model
        self.n_experts: int | None = getattr(config, "n_experts", None)
        self.auxiliary_losses: dict[str, torch.Tensor] = {}
        self.routing_accumulator: RoutingAccumulator | None = None
        self.register_forward_pre_hook(_clear_auxiliary_losses)

    def set_auxiliary_loss(self, name: str, weighted_value: torch.Tensor) -> None:
        """Store an auxiliary loss (already multiplied by its weight) of this forward."""
        self.auxiliary_losses[name] = weighted_value

    def record_routing(self, expert_index: torch.Tensor, scores: torch.Tensor) -> None:
        """Report this forward's selections (same shapes) to an active tracker, if any."""
        if self.routing_accumulator is not None:
            self.routing_accumulator.add(expert_index, scores)

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Tables whose gradients are sparse (PEER/PKM built with sparse tables)."""
        return []

    def extra_repr(self) -> str:
        return self.config.summary()
