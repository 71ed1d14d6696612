"""One mechanism for auxiliary losses and routing statistics of every FFW layer.

Auxiliary losses: an FFW layer's forward stores its *weighted* auxiliary
losses with ``FFWLayer.set_auxiliary_loss(name, value)``;
``TransformerLM.auxiliary_loss()`` sums them from its blocks' FFWs and the
training loop adds that sum to the LM loss, with no per-family code;
:func:`auxiliary_loss_terms` lists them by module name for any model (logging).

Routing statistics (He 2024, "Mixture of A Million Experts", §3.3 and Table 2):
a routed layer (token-choice and expert-choice MoE, PKM, PEER) reports each
forward's selection with ``FFWLayer.record_routing(expert_index, scores)``.
Inside a :class:`RoutingTracker` those calls accumulate, per layer,

- how many times each expert was selected, giving the *expert usage*
  = |{i : count_i > 0}| / N, and
- the router scores summed per expert over all tokens, normalised to a
  distribution p, giving the *unevenness* = KL(p || uniform)
  = Σ_i p_i log(N p_i) (0 log 0 = 0; 0 for perfectly even use, log N when a
  single expert takes everything).

Outside a tracker ``record_routing`` does nothing, so training pays nothing.
"""

from __future__ import annotations

import math
from types import TracebackType

import torch
from torch import nn


class RoutingAccumulator:
    """Per-expert selection counts and summed router scores of one layer.

    Attributes:
        selection_counts: (N,) int64, times expert i was selected.
        score_sums: (N,) float64, Σ over selections of the router score of i.
    """

    def __init__(self, n_experts: int, device: torch.device | str | None = None) -> None:
        self.n_experts = n_experts
        self.selection_counts = torch.zeros(n_experts, dtype=torch.int64, device=device)
        self.score_sums = torch.zeros(n_experts, dtype=torch.float64, device=device)

    def add(self, expert_index: torch.Tensor, scores: torch.Tensor) -> None:
        """Accumulate one forward's selections.

        Args:
            expert_index: (...) int64 expert ids in [0, N), any shape.
            scores: (...) router scores of those selections, same shape.
        """
        index = expert_index.detach().reshape(-1).to(self.selection_counts.device)
        values = scores.detach().reshape(-1).to(self.score_sums.device, torch.float64)
        self.selection_counts.index_add_(0, index, torch.ones_like(index))
        self.score_sums.index_add_(0, index, values)

    def statistics(self) -> dict[str, float | int]:
        return {"expert_usage": expert_usage(self.selection_counts),
                "unevenness": unevenness(self.score_sums),
                "n_experts": self.n_experts}


def expert_usage(selection_counts: torch.Tensor) -> float:
    """Fraction of experts selected at least once (PEER Table 2 "expert usage")."""
    return float((selection_counts > 0).sum().item()) / selection_counts.numel()


def unevenness(score_sums: torch.Tensor) -> float:
    """KL(p || uniform) of the accumulated router scores p (PEER §3.3, Table 2).

    p_i = score_sums_i / Σ_j score_sums_j; KL = Σ_i p_i log(N p_i), with 0 log 0 = 0.
    NaN when nothing was accumulated.
    """
    total = score_sums.double().sum()
    if total.item() <= 0:
        return math.nan
    distribution = score_sums.double() / total  # (N,)
    n_experts = distribution.numel()
    terms = torch.where(distribution > 0, distribution * torch.log(distribution * n_experts),
                        torch.zeros_like(distribution))
    return float(terms.sum().item())


def auxiliary_loss_terms(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weighted auxiliary losses of the last forward, keyed
    ``"<module name>.<loss name>"`` (e.g. ``"blocks.6.ffw.load_balance"``)."""
    from models.ffw.base import FFWLayer

    terms: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, FFWLayer):
            for loss_name, value in module.auxiliary_losses.items():
                terms[f"{module_name}.{loss_name}" if module_name else loss_name] = value
    return terms


class RoutingTracker:
    """Context manager accumulating routing statistics of every routed layer.

    Usage::

        with RoutingTracker(model) as tracker:
            for batch in eval_batches:
                model(batch)
        tracker.statistics()  # {"blocks.6.ffw": {"expert_usage": ..., "unevenness": ..., "n_experts": N}}
    """

    def __init__(self, model: nn.Module) -> None:
        from models.ffw.base import FFWLayer

        self.accumulators: dict[str, RoutingAccumulator] = {}
        self._layers: dict[str, FFWLayer] = {}
        for module_name, module in model.named_modules():
            if isinstance(module, FFWLayer) and module.n_experts is not None:
                self._layers[module_name] = module

    def __enter__(self) -> "RoutingTracker":
        for module_name, layer in self._layers.items():
            device = next((p.device for p in layer.parameters()), None)
            accumulator = RoutingAccumulator(layer.n_experts, device=device)
            self.accumulators[module_name] = accumulator
            layer.routing_accumulator = accumulator
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for layer in self._layers.values():
            layer.routing_accumulator = None

    def statistics(self) -> dict[str, dict[str, float | int]]:
        """Per routed layer: expert_usage (0..1), unevenness (KL to uniform, nats), n_experts."""
        return {name: accumulator.statistics() for name, accumulator in self.accumulators.items()}
