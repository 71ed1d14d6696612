"""Product-key retrieval is exact (Lample et al. 2019 §3.2) and PEER with one
expert per head is a dense MLP assembled from the retrieved experts (He 2024 Eq. 8)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import build_ffw
from models.ffw.peer_config import PEERConfig
from models.ffw.product_keys import ProductKeyRetrieval, product_key_top_k


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
    scores, index = product_key_top_k(first, second, 4)
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
