"""Tiny models of every FFW family, with every option the default studies use (CPU, milliseconds)."""

from __future__ import annotations

from models.config import BackboneConfig, ModelConfig, ffw_config_from_dict

TINY_BACKBONE = BackboneConfig(n_layers=2, d_model=32, n_heads=4, vocab_size=64, max_seq_len=16)
BATCH, SEQ = 4, 12

TINY_FFW = {
    "dense_relu": {"family": "dense", "activation": "relu"},
    "dense_gelu": {"family": "dense", "activation": "gelu"},
    "dense_swiglu": {"family": "dense", "activation": "swiglu"},
    "topk_activation": {"family": "topk_activation", "k": 8},
    "switch": {"family": "token_choice_moe", "n_experts": 4, "top_k": 1, "router": "softmax",
               "load_balance_weight": 0.01, "capacity_factor": 1.0},
    "softmax_renorm": {"family": "token_choice_moe", "n_experts": 4, "top_k": 2, "router": "softmax_renorm"},
    "sigma_moe": {"family": "token_choice_moe", "n_experts": 4, "top_k": 2, "router": "sigmoid",
                  "entropy_weight": 0.001, "expert_dropout": 0.2},
    "s_base": {"family": "token_choice_moe", "n_experts": 4, "top_k": 1, "router": "sinkhorn"},
    "expert_choice": {"family": "expert_choice_moe", "n_experts": 4, "capacity_factor": 1.0, "routing_group": 1},
    "expert_choice_group2_c2": {"family": "expert_choice_moe", "n_experts": 4, "capacity_factor": 2.0,
                                "routing_group": 2},
    "pkm_softmax_bn": {"family": "pkm", "n_experts": 64, "n_heads": 2, "top_k": 4, "d_key": 16},
    "pkm_relu_value16": {"family": "pkm", "n_experts": 64, "n_heads": 2, "top_k": 4, "d_key": 16,
                         "score": "relu", "query_batchnorm": False, "d_value": 16},
    "peer_softmax_bn": {"family": "peer", "n_experts": 64, "n_heads": 2, "top_k": 4, "d_key": 16},
    "peer_glu_sigmoid": {"family": "peer", "n_experts": 64, "n_heads": 2, "top_k": 4, "d_key": 16,
                         "score": "sigmoid", "glu": True, "query_batchnorm": False, "activation": "relu"},
    "peer_relu_score": {"family": "peer", "n_experts": 64, "n_heads": 3, "top_k": 2, "d_key": 8,
                        "score": "relu", "query_batchnorm": False},
}
"""Family options by case name. ``*_bn`` cases use the default (causal) query
normalisation, the one the default studies use."""


def tiny_model_config(name: str, replace_blocks: str | tuple = "all", **ffw_overrides: object) -> ModelConfig:
    """The tiny backbone with case ``name``'s FFW in ``replace_blocks``."""
    ffw = ffw_config_from_dict({**TINY_FFW[name], **ffw_overrides})
    ffw = ffw.resolve(TINY_BACKBONE.d_model, TINY_BACKBONE.ffw_multiplier)
    return ModelConfig(TINY_BACKBONE, ffw, replace_blocks=replace_blocks)
