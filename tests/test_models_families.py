"""Every FFW family against the common contracts: registry, causality,
parameter counts, forward FLOPs and gradients (tiny shapes, CPU)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from isoflop.flops import model_costs
from models import build_ffw, build_model
from models.builder import ffw_module_class
from models.config import FFW_FAMILIES
from models.verify import measure_ffw_forward_flops_per_token, measure_forward_flops_per_token
from model_support import BATCH, SEQ, TINY_BACKBONE, TINY_FFW, tiny_model_config

def test_every_config_family_has_a_registered_module_and_a_tiny_case() -> None:
    for family in FFW_FAMILIES.names():
        assert ffw_module_class(family).__module__ == FFW_FAMILIES.get(family).module_path
    assert {case["family"] for case in TINY_FFW.values()} == set(FFW_FAMILIES.names())


@pytest.mark.parametrize("name", sorted(TINY_FFW))
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_outputs_up_to_t_ignore_later_tokens(name: str, mode: str) -> None:
    config = tiny_model_config(name)
    assert config.ffw.causal
    torch.manual_seed(0)
    model = build_model(config).train(mode == "train")
    tokens = torch.randint(0, TINY_BACKBONE.vocab_size, (BATCH, SEQ))
    for last_kept in (0, 4, SEQ - 2):
        changed = tokens.clone()
        changed[:, last_kept + 1:] = torch.randint(0, TINY_BACKBONE.vocab_size, (BATCH, SEQ - last_kept - 1))
        torch.manual_seed(1)
        logits = model(tokens)
        torch.manual_seed(1)
        changed_logits = model(changed)
        torch.testing.assert_close(changed_logits[:, :last_kept + 1], logits[:, :last_kept + 1],
                                   rtol=1e-5, atol=1e-5)
        assert not torch.allclose(changed_logits[:, last_kept + 1:], logits[:, last_kept + 1:])


@pytest.mark.parametrize("name", ["pkm_softmax_bn", "peer_softmax_bn"])
def test_the_papers_query_batchnorm_would_fail_the_causality_check(name: str) -> None:
    """The check above can fail: the paper's query BatchNorm (kept as an option,
    marked non-causal) lets later tokens change earlier outputs in training."""
    config = tiny_model_config(name, query_norm_statistics="batch")
    assert not config.ffw.causal and "NON-CAUSAL" in config.ffw.summary()
    torch.manual_seed(0)
    model = build_model(config).train()
    tokens = torch.randint(0, TINY_BACKBONE.vocab_size, (BATCH, SEQ))
    changed = tokens.clone()
    changed[:, 6:] = torch.randint(0, TINY_BACKBONE.vocab_size, (BATCH, SEQ - 6))
    assert not torch.allclose(model(tokens)[:, :6], model(changed)[:, :6])
    model.eval()  # running statistics: causal in evaluation
    torch.testing.assert_close(model(tokens)[:, :6], model(changed)[:, :6])


def test_naive_batch_wide_expert_choice_would_fail_the_causality_check() -> None:
    """The check above can fail: mixing positions inside the layer is caught."""
    config = tiny_model_config("expert_choice", routing_group=BATCH)
    torch.manual_seed(0)
    layer = build_ffw(config.ffw, TINY_BACKBONE.d_model, 2).eval()
    # The same weights routing all B·T tokens as one group (the non-causal original).
    naive = build_ffw(replace(config.ffw, routing_group=BATCH * SEQ), TINY_BACKBONE.d_model, 2).eval()
    naive.load_state_dict(layer.state_dict())
    x = torch.randn(BATCH, SEQ, TINY_BACKBONE.d_model)
    changed = x.clone()
    changed[:, 6:] = torch.randn(BATCH, SEQ - 6, TINY_BACKBONE.d_model)

    def all_tokens_as_one_position(layer_input: torch.Tensor) -> torch.Tensor:
        flat = layer_input.reshape(-1, 1, TINY_BACKBONE.d_model)  # (B·T, 1, d)
        return naive(flat).reshape_as(layer_input)

    assert not torch.allclose(all_tokens_as_one_position(x)[:, :6], all_tokens_as_one_position(changed)[:, :6])
    torch.testing.assert_close(layer(x)[:, :6], layer(changed)[:, :6])


@pytest.mark.parametrize("name", sorted(TINY_FFW))
def test_parameter_counts_match_accounting(name: str) -> None:
    config = tiny_model_config(name, replace_blocks=(1,))
    layer = build_ffw(config.ffw, TINY_BACKBONE.d_model, TINY_BACKBONE.n_layers, device="meta")
    assert sum(p.numel() for p in layer.parameters()) == config.ffw.costs(TINY_BACKBONE.d_model).n_params
    model = build_model(config, device="meta")
    assert sum(p.numel() for p in model.parameters()) == model_costs(config, SEQ).n_params_total


@pytest.mark.parametrize("name", sorted(TINY_FFW))
def test_forward_flops_match_flop_counter(name: str) -> None:
    config = tiny_model_config(name)
    costs = config.ffw.costs(TINY_BACKBONE.d_model)
    expected_layer = sum(value for component, value in costs.forward_flops_per_token.items()
                         if component not in costs.flop_counter_invisible)
    measured_layer = measure_ffw_forward_flops_per_token(config.ffw, TINY_BACKBONE.d_model, SEQ, BATCH)
    assert measured_layer == pytest.approx(expected_layer, rel=0.01)
    measured_model = measure_forward_flops_per_token(config, SEQ, BATCH)
    assert measured_model == pytest.approx(model_costs(config, SEQ).flops_per_token_forward_measurable, rel=0.01)


@pytest.mark.parametrize("name", sorted(TINY_FFW))
def test_gradients_reach_every_parameter(name: str) -> None:
    config = tiny_model_config(name)
    torch.manual_seed(0)
    model = build_model(config).train()
    tokens = torch.randint(0, TINY_BACKBONE.vocab_size, (BATCH, SEQ))
    logits = model(tokens)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, TINY_BACKBONE.vocab_size), tokens[:, 1:].reshape(-1))
    (loss + model.auxiliary_loss()).backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{parameter_name} got no gradient"
        assert parameter.grad.abs().sum() > 0, f"{parameter_name} got an all-zero gradient"


@pytest.mark.parametrize("name", ["pkm_softmax_bn", "peer_softmax_bn", "peer_glu_sigmoid"])
def test_sparse_tables_get_sparse_gradients(name: str) -> None:
    config = tiny_model_config(name)
    torch.manual_seed(0)
    model = build_model(config, sparse_tables=True)
    sparse_parameters = model.sparse_parameters()
    tables_per_layer = 1 if config.ffw.family == "pkm" else 3 if config.ffw.glu else 2
    assert len(sparse_parameters) == TINY_BACKBONE.n_layers * tables_per_layer
    model(torch.randint(0, TINY_BACKBONE.vocab_size, (BATCH, SEQ))).sum().backward()
    assert all(parameter.grad is not None and parameter.grad.is_sparse for parameter in sparse_parameters)
    assert build_model(config).sparse_parameters() == []
