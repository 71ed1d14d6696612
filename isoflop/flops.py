"""FLOP and parameter accounting for a whole model — the single source.

The planner uses it to size runs, the trainer logs it, the analysis reads it.
Torch-free: this module imports no torch, pandas or matplotlib.

Conventions (all per token):

- *Exact forward FLOPs* count matmul FLOPs, 2 per multiply-add, as
  ``torch.utils.flop_counter.FlopCounterMode`` measures them:
  attention projections 2·4·d² per block (Q, K, V, O; no biases);
  attention scores and values 2·2·s·d per block at sequence length s (the
  full s x s products, as Kaplan et al. 2020 Table 1 and Hoffmann et al.
  2022 App. F count them; causal masking does not halve the count);
  the FFW of each block (formulas beside each family's config);
  the LM head 2·d·V. Embedding lookups, norms, softmax, rotary and residual
  additions count 0.
- *Training FLOPs* = 3 x forward (backward = 2 x forward; Kaplan et al.
  2020 §2.1), unless a layer documents otherwise.
- *6N* and *6N non-embedding* conventions (Kaplan et al. 2020 Eq. 2.1;
  Hoffmann et al. 2022) are reported beside the exact count, with N the
  active parameters, because the convention moves fitted exponents
  (Porian et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass

from models.config import ModelConfig

TRAINING_FLOPS_PER_FORWARD_FLOP = 3.0


@dataclass(frozen=True)
class ModelCosts:
    """Parameters and FLOPs per token of a whole model, by component.

    Component keys: ``embedding``, ``position_embedding``, ``attention``,
    ``attention_scores`` (FLOPs only), ``norms``, ``dense_ffw``, ``lm_head``,
    and ``ffw.<component>`` for the replacement layer's parts (e.g.
    ``ffw.router``, ``ffw.experts``, ``ffw.query``, ``ffw.keys``).
    """

    params: dict[str, int]
    params_active: dict[str, int]
    forward_flops_per_token: dict[str, float]
    flop_counter_invisible: tuple[str, ...]

    @property
    def n_params_total(self) -> int:
        return sum(self.params.values())

    @property
    def n_params_active(self) -> int:
        return sum(self.params_active.values())

    @property
    def n_params_embedding(self) -> int:
        """Token and position embedding tables (the LM head is not an embedding
        unless tied, in which case the shared matrix counts here once)."""
        return self.params.get("embedding", 0) + self.params.get("position_embedding", 0)

    @property
    def n_params_non_embedding(self) -> int:
        return self.n_params_total - self.n_params_embedding

    @property
    def n_params_active_non_embedding(self) -> int:
        return self.n_params_active - self.n_params_embedding

    @property
    def flops_per_token_forward(self) -> float:
        return float(sum(self.forward_flops_per_token.values()))

    @property
    def flops_per_token_train(self) -> float:
        return TRAINING_FLOPS_PER_FORWARD_FLOP * self.flops_per_token_forward

    @property
    def flops_per_token_6n(self) -> float:
        """6·N with N the active parameters (embeddings included)."""
        return 6.0 * self.n_params_active

    @property
    def flops_per_token_6n_non_embedding(self) -> float:
        """6·N with N the active non-embedding parameters (Kaplan et al. 2020)."""
        return 6.0 * self.n_params_active_non_embedding

    @property
    def flops_per_token_forward_measurable(self) -> float:
        """Forward FLOPs that FlopCounterMode can see (for verification)."""
        return float(sum(value for name, value in self.forward_flops_per_token.items()
                         if name not in self.flop_counter_invisible))

    def summary(self) -> dict[str, float | int]:
        """The flat numbers written into plan rows and result files."""
        return {
            "n_params_total": self.n_params_total,
            "n_params_active": self.n_params_active,
            "n_params_embedding": self.n_params_embedding,
            "n_params_non_embedding": self.n_params_non_embedding,
            "n_params_active_non_embedding": self.n_params_active_non_embedding,
            "flops_per_token_forward": self.flops_per_token_forward,
            "flops_per_token_train": self.flops_per_token_train,
            "flops_per_token_6n": self.flops_per_token_6n,
            "flops_per_token_6n_non_embedding": self.flops_per_token_6n_non_embedding,
        }


def _add(totals: dict, key: str, value: float) -> None:
    totals[key] = totals.get(key, 0) + value


def model_costs(model: ModelConfig, seq_len: int) -> ModelCosts:
    """Exact parameter counts and forward FLOPs per token of ``model`` at ``seq_len``.

    Args:
        model: the resolved model config.
        seq_len: tokens per sequence (sets the attention score/value FLOPs).
    """
    backbone = model.backbone
    d_model, vocab = backbone.d_model, backbone.vocab_size
    norm_params = d_model if backbone.norm == "rmsnorm" else 2 * d_model
    params: dict[str, int] = {"embedding": vocab * d_model}
    flops: dict[str, float] = {}
    invisible: set[str] = set()
    active_extra: dict[str, int] = {}
    if backbone.positions == "learned":
        params["position_embedding"] = backbone.max_seq_len * d_model
    params["attention"] = backbone.n_layers * 4 * d_model * d_model
    params["norms"] = (2 * backbone.n_layers + 1) * norm_params
    flops["attention"] = 2.0 * params["attention"]
    flops["attention_scores"] = backbone.n_layers * 2.0 * 2.0 * seq_len * d_model

    replaced = set(model.replaced_blocks)
    replacement_costs = model.ffw.costs(d_model) if replaced else None
    dense_costs = backbone.dense_ffw().costs(d_model) if len(replaced) < backbone.n_layers else None
    for block_index in range(backbone.n_layers):  # summed block by block (float sums as in the model)
        if block_index in replaced:
            for name, count in replacement_costs.params.items():
                _add(params, f"ffw.{name}", count)
            for name, count in replacement_costs.params_active.items():
                _add(active_extra, f"ffw.{name}", count)
            for name, value in replacement_costs.forward_flops_per_token.items():
                _add(flops, f"ffw.{name}", value)
            invisible.update(f"ffw.{name}" for name in replacement_costs.flop_counter_invisible)
        else:
            _add(params, "dense_ffw", dense_costs.n_params)
            _add(flops, "dense_ffw", dense_costs.forward_flops)

    if not backbone.tie_embeddings:
        params["lm_head"] = vocab * d_model
    flops["lm_head"] = 2.0 * d_model * vocab

    params_active = {name: count for name, count in params.items() if not name.startswith("ffw.")}
    params_active.update(active_extra)
    return ModelCosts(params=params, params_active=params_active,
                      forward_flops_per_token=flops, flop_counter_invisible=tuple(sorted(invisible)))
