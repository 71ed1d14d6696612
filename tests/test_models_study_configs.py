"""The PEER study's layers (He 2024, §3) at a realistic size on the meta
device: exact parameter counts and forward FLOPs against the accounting."""

from __future__ import annotations

import pytest

from isoflop.flops import model_costs
from models import build_ffw, build_model
from models.config import BackboneConfig, ModelConfig
from models.ffw.dense_config import DenseFFWConfig
from models.ffw.expert_choice_config import ExpertChoiceMoEConfig
from models.ffw.peer_config import PEERConfig
from models.ffw.pkm_config import PKMConfig
from models.verify import measure_ffw_forward_flops_per_token, measure_forward_flops_per_token

BACKBONE = BackboneConfig(n_layers=12, d_model=768, n_heads=12, vocab_size=32128, max_seq_len=2048)
SEQ_LEN = 2048
STUDY_FFW = {
    "dense": DenseFFWConfig(),
    "expert_choice_e128": ExpertChoiceMoEConfig(n_experts=128, capacity_factor=1.0),
    "pkm_1024sq_h8_k32_bn": PKMConfig(n_experts=1024 ** 2, n_heads=8, top_k=32, query_batchnorm=True),
    "peer_1024sq_h8_k16_bn": PEERConfig(n_experts=1024 ** 2, n_heads=8, top_k=16, d_key=256,
                                        query_batchnorm=True),
}
# Expert choice routes groups of 16 sequences: 32 is two groups.
BATCH = {"expert_choice_e128": 32}


def study_config(name: str) -> ModelConfig:
    ffw = STUDY_FFW[name].resolve(BACKBONE.d_model, BACKBONE.ffw_multiplier)
    return ModelConfig(BACKBONE, ffw, replace_blocks="middle")


@pytest.mark.parametrize("name", sorted(STUDY_FFW))
def test_study_parameter_counts_are_exact(name: str) -> None:
    config = study_config(name)
    layer = build_ffw(config.ffw, BACKBONE.d_model, BACKBONE.n_layers, device="meta")
    assert sum(p.numel() for p in layer.parameters()) == config.ffw.costs(BACKBONE.d_model).n_params
    model = build_model(config, device="meta")
    assert sum(p.numel() for p in model.parameters()) == model_costs(config, SEQ_LEN).n_params_total


def test_study_expert_choice_experts_are_dense_ffw_sized() -> None:
    config = study_config("expert_choice_e128")
    assert config.ffw.expert_size == BACKBONE.dense_ffw().d_ff == 4 * BACKBONE.d_model


@pytest.mark.parametrize("name", sorted(STUDY_FFW))
def test_study_forward_flops_match_flop_counter(name: str) -> None:
    config = study_config(name)
    batch = BATCH.get(name, 1)
    costs = config.ffw.costs(BACKBONE.d_model)
    expected_layer = sum(value for component, value in costs.forward_flops_per_token.items()
                         if component not in costs.flop_counter_invisible)
    # The layer alone at a shorter sequence (FFW FLOPs per token do not depend on it).
    measured_layer = measure_ffw_forward_flops_per_token(config.ffw, BACKBONE.d_model, 64, batch)
    assert measured_layer == pytest.approx(expected_layer, rel=0.01)
    measured_model = measure_forward_flops_per_token(config, SEQ_LEN, batch)
    assert measured_model == pytest.approx(model_costs(config, SEQ_LEN).flops_per_token_forward_measurable,
                                           rel=0.01)
