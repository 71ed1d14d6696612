"""PEER: parameter-efficient expert retrieval (He 2024, "Mixture of A Million
Experts", §2, Algorithm 1).

N = n² singleton experts, expert i being one hidden neuron:
e_i(x) = act(u_i·x) v_i (Eq. 4; GLU experts: act(u_i·x)(w_i·x) v_i).
Each of h heads retrieves its top-k experts with product keys (Eq. 3, see
``models/ffw/product_keys.py``), turns the k key scores into router scores g
(softmax over the k — Eq. 5 —, sigmoid or ReLU) and
y = Σ_heads Σ_top-k g_i e_i(x) (Eq. 6–7). With k = 1 per head the layer is a
dense MLP with h hidden neurons assembled from the retrieved experts (Eq. 8).

The expert computation runs through ``kernels.peer_experts``, which never
materialises the gathered [tokens, h, k, d] rows on its fast paths.

FLOPs per token seen by FlopCounterMode (kernel backend "reference", as on
the meta device): query 2·d·h·d_key, sub-key scores 2·h·n·d_key, experts
h·k·(2·d + 2·d) (+2·d·h·k for GLU). Not seen (no matmul): the query
normalisation, the candidate sums, top-k selections, gathers, the score
function and the activation.
"""

from __future__ import annotations

import torch
from torch import nn

import kernels
from models.ffw.base import FFWLayer, residual_std
from models.ffw.peer_config import PEERConfig
from models.ffw.product_keys import ProductKeyRetrieval, router_scores
from models.registry import FFW_MODULES


@FFW_MODULES.register(PEERConfig.family)
class PEERFFW(FFWLayer):
    """PEER layer: product-key retrieval of h·k singleton experts per token.

    Args:
        config: resolved :class:`PEERConfig`.
        d_model: residual width d.
        n_layers: blocks of the model (sets the output table's init std).
        sparse_tables: expert tables get sparse COO gradients (for SparseAdam-style updates).
    """

    def __init__(self, config: PEERConfig, d_model: int, n_layers: int, sparse_tables: bool = False) -> None:
        super().__init__(config, d_model)
        self.sparse_tables = sparse_tables
        self.retrieval = ProductKeyRetrieval(d_model, config.n_heads, config.n_keys, config.d_key,
                                             config.top_k, config.query_norm)
        # Expert tables (N, d): u_i (down), v_i (up), w_i (GLU gate).
        self.down_table = nn.Parameter(torch.empty(config.n_experts, d_model))
        self.up_table = nn.Parameter(torch.empty(config.n_experts, d_model))
        self.gate_table = nn.Parameter(torch.empty(config.n_experts, d_model)) if config.glu else None
        # u·x ~ N(0, 1) for unit-variance x; the h·k weighted outputs sum to ~ the scale
        # of a GPT-2 residual projection.
        nn.init.normal_(self.down_table, std=d_model ** -0.5)
        nn.init.normal_(self.up_table, std=residual_std(n_layers))
        if self.gate_table is not None:
            nn.init.normal_(self.gate_table, std=d_model ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, d)
        tokens = x.reshape(-1, self.d_model)  # (M, d), M = B·T
        key_scores, expert_index = self.retrieval(x)  # (M, h, k) each
        scores = router_scores(key_scores, self.config.score)  # (M, h, k)
        self.record_routing(expert_index, scores)
        output = kernels.peer_experts(tokens, expert_index, scores, self.down_table, self.up_table,
                                      activation=self.config.activation, gate_table=self.gate_table,
                                      sparse_grad=self.sparse_tables)  # (M, d)
        return output.view_as(x)  # (B, T, d)

    def sparse_parameters(self) -> list[nn.Parameter]:
        if not self.sparse_tables:
            return []
        return [table for table in (self.down_table, self.up_table, self.gate_table) if table is not None]
