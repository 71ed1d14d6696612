"""Hand-computed parameter and FLOP counts for the backbone and every FFW family."""

from __future__ import annotations

import pytest

from conftest import heavy_imports
from isoflop.errors import UserError
from isoflop.flops import model_costs
from models.config import BackboneConfig, ModelConfig
from models.ffw.dense_config import DenseFFWConfig
from models.ffw.expert_choice_config import ExpertChoiceMoEConfig
from models.ffw.peer_config import PEERConfig
from models.ffw.pkm_config import PKMConfig
from models.ffw.token_choice_config import TokenChoiceMoEConfig
from models.ffw.topk_activation_config import TopKActivationConfig

D, V, S, L = 64, 100, 32, 2


def backbone(**changes: object) -> BackboneConfig:
    values = dict(n_layers=L, d_model=D, n_heads=4, vocab_size=V, max_seq_len=S)
    values.update(changes)
    return BackboneConfig(**values)  # type: ignore[arg-type]


def test_dense_replacement_in_the_middle_equals_an_all_dense_model() -> None:
    dense = DenseFFWConfig().resolve(D, 4.0)
    middle = model_costs(ModelConfig(backbone(), dense, replace_blocks="middle"), S)
    none = model_costs(ModelConfig(backbone(), dense, replace_blocks="none"), S)
    assert middle.n_params_total == none.n_params_total
    assert middle.flops_per_token_forward == none.flops_per_token_forward


def test_dense_model_by_hand() -> None:
    costs = model_costs(ModelConfig(backbone(), DenseFFWConfig().resolve(D, 4.0), replace_blocks="none"), S)
    attention = L * 4 * D * D
    ffw = L * 2 * D * 4 * D
    norms = (2 * L + 1) * D
    assert costs.params == {"embedding": V * D, "attention": attention, "norms": norms,
                            "dense_ffw": ffw, "lm_head": V * D}
    assert costs.n_params_total == V * D + attention + norms + ffw + V * D
    assert costs.n_params_active == costs.n_params_total
    assert costs.n_params_embedding == V * D
    forward = 2 * attention + L * 4 * S * D + 2 * ffw + 2 * D * V
    assert costs.flops_per_token_forward == forward
    assert costs.flops_per_token_train == 3 * forward
    assert costs.flops_per_token_6n == 6 * costs.n_params_active
    assert costs.flops_per_token_6n_non_embedding == 6 * (costs.n_params_active - V * D)


def test_backbone_variants_by_hand() -> None:
    plain = model_costs(ModelConfig(backbone(), DenseFFWConfig().resolve(D, 4.0)), S)
    variant = model_costs(ModelConfig(backbone(norm="layernorm", positions="learned", tie_embeddings=True,
                                               activation="swiglu"),
                                      DenseFFWConfig(activation="swiglu").resolve(D, 4.0), "none"), S)
    assert variant.params["norms"] == 2 * plain.params["norms"]
    assert variant.params["position_embedding"] == S * D
    assert "lm_head" not in variant.params and variant.forward_flops_per_token["lm_head"] == 2 * D * V
    assert variant.params["dense_ffw"] == L * 3 * D * 4 * D


def replaced_middle(ffw: object) -> ModelConfig:
    return ModelConfig(backbone(), ffw, replace_blocks="middle")  # type: ignore[arg-type]


def ffw_part(costs: object, kind: str) -> dict[str, float]:
    table = getattr(costs, kind)
    return {name[4:]: value for name, value in table.items() if name.startswith("ffw.")}


def test_peer_by_hand() -> None:
    peer = PEERConfig(n_experts=16**2, n_heads=2, top_k=3, d_key=8, query_batchnorm=True)
    costs = model_costs(replaced_middle(peer), S)
    assert ffw_part(costs, "params") == {"query": D * 2 * 8, "keys": 2 * 16 * 8,
                                         "experts": 2 * 256 * D, "query_batchnorm": 2 * 2 * 8}
    assert ffw_part(costs, "params_active")["experts"] == 2 * 2 * 3 * D
    assert ffw_part(costs, "forward_flops_per_token") == {"query": 2 * D * 16, "keys": 2 * 2 * 16 * 8,
                                                          "experts": 4 * D * 2 * 3}
    assert costs.params["dense_ffw"] == (L - 1) * 2 * D * 4 * D
    glu = model_costs(replaced_middle(PEERConfig(n_experts=256, n_heads=2, top_k=3, d_key=8, glu=True)), S)
    assert ffw_part(glu, "forward_flops_per_token")["experts"] == 6 * D * 2 * 3


def test_pkm_by_hand() -> None:
    pkm = PKMConfig(n_experts=8**2, n_heads=2, top_k=4, d_key=6, query_batchnorm=False)
    costs = model_costs(replaced_middle(pkm.resolve(D, 4.0)), S)
    assert ffw_part(costs, "params") == {"query": D * 12, "keys": 2 * 8 * 6, "values": 64 * D}
    assert ffw_part(costs, "params_active")["values"] == 2 * 4 * D
    assert ffw_part(costs, "forward_flops_per_token") == {"query": 2 * D * 12, "keys": 2 * 2 * 8 * 6,
                                                          "values": 2 * 2 * 4 * D}


def test_token_choice_moe_by_hand() -> None:
    moe = TokenChoiceMoEConfig(n_experts=8, top_k=2).resolve(D, 4.0)
    assert moe.expert_size == 4 * D // 8
    costs = model_costs(replaced_middle(moe), S)
    group = moe.expert_size
    assert ffw_part(costs, "params") == {"router": D * 8, "experts": 8 * 2 * D * group}
    assert ffw_part(costs, "params_active") == {"router": D * 8, "experts": 2 * 2 * D * group}
    assert ffw_part(costs, "forward_flops_per_token") == {"router": 2 * D * 8, "experts": 2 * 4 * D * group}


def test_expert_choice_and_topk_by_hand() -> None:
    moe = ExpertChoiceMoEConfig(n_experts=4, capacity_factor=2.0).resolve(D, 4.0)
    costs = model_costs(replaced_middle(moe), S)
    assert ffw_part(costs, "forward_flops_per_token") == {"router": 2 * D * 4, "experts": 2 * 4 * D * 4 * D}
    assert ffw_part(costs, "params")["experts"] == 4 * 2 * D * 4 * D
    topk = model_costs(replaced_middle(TopKActivationConfig(k=8).resolve(D, 4.0)), S)
    dense = model_costs(replaced_middle(DenseFFWConfig(activation="relu").resolve(D, 4.0)), S)
    assert topk.flops_per_token_forward == dense.flops_per_token_forward


def test_replace_all_blocks() -> None:
    moe = TokenChoiceMoEConfig(n_experts=8, top_k=2).resolve(D, 4.0)
    costs = model_costs(ModelConfig(backbone(), moe, replace_blocks="all"), S)
    assert "dense_ffw" not in costs.params
    assert costs.params["ffw.router"] == L * D * 8


@pytest.mark.parametrize("make, message", [
    (lambda: PEERConfig(n_experts=1000), "perfect-square"),
    (lambda: PEERConfig(n_experts=64, top_k=9), "sqrt(n_experts)"),
    (lambda: PKMConfig(d_key=7), "even"),
    (lambda: TokenChoiceMoEConfig(n_experts=4, top_k=5), "top_k"),
    (lambda: BackboneConfig(n_layers=2, d_model=100, n_heads=8, vocab_size=10, max_seq_len=8), "divisible"),
    (lambda: ModelConfig(backbone(), DenseFFWConfig(d_ff=8), replace_blocks=(5,)), "outside"),
])
def test_invalid_values_name_the_rule(make: object, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()  # type: ignore[operator]


def test_accounting_imports_no_heavy_library() -> None:
    assert heavy_imports(("isoflop.flops", "isoflop.planner", "isoflop.compose", "isoflop.cli", "models.config"),
                         ("torch", "pandas", "matplotlib", "scipy")) == []
