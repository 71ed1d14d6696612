"""Product-key retrieval is exact (Lample et al. 2019 §3.2) and PEER with one
expert per head is a dense MLP assembled from the retrieved experts (He 2024 Eq. 8)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels
from models import build_ffw
from models.ffw.config_base import QUERY_NORM_STATISTICS
from models.ffw.peer_config import PEERConfig
from models.ffw.product_keys import (
    ProductKeyRetrieval, ProductKeySearch, candidate_pairs, product_key_top_k, router_scores,
)


def brute_force_top_k(retrieval: ProductKeyRetrieval, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every one of the n² full keys [c_i ; c'_j]; ties broken by the lowest id."""
    n_keys, half = retrieval.n_keys, retrieval.d_key // 2
    query = retrieval.query(x)
    if retrieval.query_norm is not None:
        query = retrieval.query_norm(query)
    query = query.view(x.shape[0], retrieval.n_heads, retrieval.d_key)  # (M, h, d_key)
    first, second = retrieval.sub_keys[:, 0], retrieval.sub_keys[:, 1]  # (h, n, d_key/2)
    full_keys = torch.cat([first.unsqueeze(2).expand(-1, -1, n_keys, -1),
                           second.unsqueeze(1).expand(-1, n_keys, -1, -1)], dim=-1)  # (h, n, n, d_key)
    full_keys = full_keys.reshape(retrieval.n_heads, n_keys * n_keys, 2 * half)  # (h, N, d_key), id i·n + j
    scores = torch.einsum("mhc,hnc->mhn", query, full_keys)  # (M, h, N)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :retrieval.top_k]
    return scores.gather(-1, order), order


@pytest.mark.parametrize("n_keys,top_k,d_key,n_heads", [(4, 1, 2, 1), (8, 3, 6, 2), (16, 16, 8, 2), (32, 5, 16, 4)])
def test_product_key_retrieval_equals_brute_force(n_keys: int, top_k: int, d_key: int, n_heads: int) -> None:
    torch.manual_seed(n_keys + top_k)
    retrieval = ProductKeyRetrieval(12, n_heads, n_keys, d_key, top_k, query_norm=None).double()
    x = torch.randn(50, 12, dtype=torch.float64)
    scores, index = retrieval(x)
    expected_scores, expected_index = brute_force_top_k(retrieval, x)
    torch.testing.assert_close(index, expected_index, rtol=0, atol=0)
    torch.testing.assert_close(scores, expected_scores)


def test_product_key_top_k_on_integer_scores_keeps_the_best_multiset() -> None:
    """With ties the chosen ids may differ between methods, the top scores may not."""
    torch.manual_seed(0)
    first, second = torch.randint(0, 3, (20, 6)).double(), torch.randint(0, 3, (20, 6)).double()
    scores, index = product_key_top_k(torch.stack([first, second], dim=-2), 4)
    all_pairs = (first.unsqueeze(-1) + second.unsqueeze(-2)).flatten(-2)  # (20, 36)
    torch.testing.assert_close(scores, all_pairs.sort(dim=-1, descending=True).values[:, :4])
    torch.testing.assert_close(all_pairs.gather(-1, index), scores)


@pytest.mark.parametrize("glu", [False, True])
def test_peer_with_one_expert_per_head_is_a_dense_mlp_of_the_retrieved_experts(glu: bool) -> None:
    torch.manual_seed(0)
    d_model, n_heads = 16, 5
    config = PEERConfig(n_experts=100, n_heads=n_heads, top_k=1, d_key=8, query_batchnorm=False, glu=glu)
    layer = build_ffw(config, d_model, n_layers=2).double().eval()
    x = torch.randn(2, 7, d_model, dtype=torch.float64)
    output = layer(x)  # (B, T, d)
    tokens = x.reshape(-1, d_model)
    _, expert_index = layer.retrieval(tokens)  # (M, h, 1); softmax over one expert gives g = 1
    flat_output = output.reshape(-1, d_model)  # (M, d)
    for position, (token, chosen) in enumerate(zip(tokens, expert_index[:, :, 0])):
        w_in, w_out = layer.down_table[chosen], layer.up_table[chosen]  # (h, d) each
        hidden = F.gelu(w_in @ token)  # (h,) the dense MLP's h neurons
        if glu:
            hidden = hidden * (layer.gate_table[chosen] @ token)
        torch.testing.assert_close(flat_output[position], w_out.T @ hidden)


@pytest.mark.parametrize("n_keys,top_k,half_width,n_heads", [(8, 3, 3, 2), (16, 16, 4, 3), (32, 5, 8, 1)])
def test_search_gradients_equal_plain_autograd(n_keys: int, top_k: int, half_width: int, n_heads: int) -> None:
    """The hand-written backward is the autograd of the plain formulation: all heads' sub-key
    scores at once, the top-k of every half, all k² candidate sums, their top-k."""
    torch.manual_seed(n_keys)
    query = torch.randn(40, n_heads, 2, half_width, dtype=torch.float64, requires_grad=True)
    sub_keys = torch.randn(n_heads, 2, n_keys, half_width, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(n_heads, 40, top_k, dtype=torch.float64)
    scores, index = ProductKeySearch.apply(query, sub_keys, top_k)
    torch.autograd.backward(scores, upstream)
    grads = query.grad.clone(), sub_keys.grad.clone()
    query.grad = sub_keys.grad = None
    half_scores = torch.einsum("mhsc,hsnc->hmsn", query, sub_keys)  # (h, M, 2, n)
    first_top, first_index = half_scores[:, :, 0].topk(top_k, dim=-1)
    second_top, second_index = half_scores[:, :, 1].topk(top_k, dim=-1)
    all_sums = (first_top.unsqueeze(-1) + second_top.unsqueeze(-2)).flatten(-2)  # (h, M, k²)
    expected_scores, position = all_sums.topk(top_k, dim=-1)
    expected_index = (first_index.unsqueeze(-1) * n_keys + second_index.unsqueeze(-2)).flatten(-2).gather(-1, position)
    torch.testing.assert_close(index, expected_index, rtol=0, atol=0)
    torch.testing.assert_close(scores, expected_scores, rtol=1e-14, atol=1e-14)
    torch.autograd.backward(expected_scores, upstream)
    torch.testing.assert_close(grads[0], query.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[1], sub_keys.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("top_k,expected", [(1, 1), (2, 3), (4, 8), (16, 50)])
def test_candidate_pairs_count_the_ranks_with_few_enough_better_pairs(top_k: int, expected: int) -> None:
    """(a+1)(b+1) <= k: k=4 keeps (0,0..3), (1,0..1), (2,0), (3,0); k=16 keeps 16+8+5+4+3+2+2+2+8·1."""
    first_rank, second_rank = candidate_pairs(top_k, torch.device("cpu"))
    assert len(first_rank) == expected
    assert all((a + 1) * (b + 1) <= top_k for a, b in zip(first_rank.tolist(), second_rank.tolist()))


def plain_peer_forward(layer: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The PEER layer in plain autograd ops: every head's sub-key scores in one einsum, the
    per-half top-k and candidate sums of :func:`product_key_top_k`, and the materialising
    reference expert kernel. Returns the output (B, T, d) and the expert ids (M, h, k)."""
    retrieval = layer.retrieval
    query = retrieval.query_norm(retrieval.query(x)).reshape(-1, retrieval.n_heads, 2, retrieval.d_key // 2)
    half_scores = torch.einsum("mhsc,hsnc->mhsn", query, retrieval.sub_keys)  # (M, h, 2, n)
    key_scores, expert_index = product_key_top_k(half_scores, retrieval.top_k)  # (M, h, k)
    output = kernels.peer_experts(x.reshape(-1, layer.d_model), expert_index, router_scores(key_scores, layer.config.score),
                                  layer.down_table, layer.up_table, activation=layer.config.activation,
                                  gate_table=layer.gate_table, backend="reference")
    return output.view_as(x), expert_index


@pytest.mark.parametrize("statistics", QUERY_NORM_STATISTICS)
@pytest.mark.parametrize("glu", [False, True])
def test_peer_layer_equals_its_plain_formulation_to_fp32_rounding(statistics: str, glu: bool) -> None:
    """The fast search and torch expert path give the plain formulation's experts, output and
    every gradient up to fp32 rounding, with either query normalisation, in training mode."""
    torch.manual_seed(1)
    config = PEERConfig(n_experts=1024, n_heads=4, top_k=8, d_key=32, query_norm_statistics=statistics, glu=glu)
    layer = build_ffw(config, 48, n_layers=2)
    x = torch.randn(2, 40, 48, requires_grad=True)
    upstream = torch.randn(2, 40, 48)
    inputs = {"x": x, **dict(layer.named_parameters())}
    output = layer(x)
    grads = torch.autograd.grad(output, list(inputs.values()), upstream)
    expected, expected_index = plain_peer_forward(layer, x)
    expected_grads = torch.autograd.grad(expected, list(inputs.values()), upstream)
    with torch.no_grad():
        torch.testing.assert_close(layer.retrieval(x)[1], expected_index, rtol=0, atol=0)
    # Sums in another order: a few 2^-23 of the largest entry, up to ~35 for the query-side gradients,
    # where the prefix statistics of the first positions (few, close values) divide by a small deviation.
    for name, actual, wanted in zip(["output", *inputs], [output, *grads], [expected, *expected_grads]):
        scale = wanted.abs().max().item()
        torch.testing.assert_close(actual, wanted, rtol=0, atol=1e-5 * scale, msg=lambda text: f"{name}: {text}")


def test_search_under_autocast_computes_in_its_dtype_and_returns_gradients_in_the_inputs() -> None:
    """As autocast's bmm: bf16 scores from fp32 inputs, fp32 gradients equal to plain autograd's."""
    torch.manual_seed(0)
    query = torch.randn(30, 2, 2, 8, requires_grad=True)
    sub_keys = torch.randn(2, 2, 16, 8, requires_grad=True)
    upstream = torch.randn(2, 30, 4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores, index = ProductKeySearch.apply(query, sub_keys, 4)
        half_scores = torch.einsum("mhsc,hsnc->hmsn", query, sub_keys)  # (h, M, 2, n), bf16
    expected_scores, expected_index = product_key_top_k(half_scores, 4)
    assert scores.dtype == torch.bfloat16
    torch.testing.assert_close(index, expected_index, rtol=0, atol=0)
    torch.testing.assert_close(scores, expected_scores, rtol=0, atol=0)
    grads = torch.autograd.grad(scores, (query, sub_keys), upstream)
    expected_grads = torch.autograd.grad(expected_scores, (query, sub_keys), upstream)
    assert [grad.dtype for grad in grads] == [torch.float32, torch.float32]
    for actual, wanted in zip(grads, expected_grads):
        torch.testing.assert_close(actual, wanted, rtol=1e-2, atol=1e-2 * wanted.abs().max().item())
