"""Product-key memory (Lample et al. 2019, "Large Memory Layers with Product
Keys"; ReLU scores: Csordás et al. 2023 §6.2).

h heads each retrieve the top-k of N = n² value rows by product keys
(``models/ffw/product_keys.py``), weight them by softmax (Lample Eq. 2) or
ReLU of the key scores, and the weighted rows of all heads are summed:
y = Σ_heads Σ_top-k g_i v_i. With d_value != d an output projection maps
d_value -> d.

The value read is one ``F.embedding_bag`` (weighted sum of h·k rows per
token, never materialising [tokens, h·k, d_value]; sparse gradients with
sparse tables). Its 2·h·k·d_value FLOPs per token are real arithmetic but
FlopCounterMode does not count embedding_bag, so ``PKMConfig.costs`` lists
``values`` in ``flop_counter_invisible``. Also not seen: the query
normalisation, candidate sums, top-k, gathers, the score function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.ffw.base import FFWLayer, init_linear, residual_std
from models.ffw.pkm_config import PKMConfig
from models.ffw.product_keys import ProductKeyRetrieval, router_scores
from models.registry import FFW_MODULES


@FFW_MODULES.register(PKMConfig.family)
class PKMFFW(FFWLayer):
    """Product-key memory layer with h heads and N = n² values."""

    def __init__(self, config: PKMConfig, d_model: int, n_layers: int, sparse_tables: bool = False) -> None:
        super().__init__(config, d_model)
        self.sparse_tables = sparse_tables
        d_value = config.d_value or d_model
        self.retrieval = ProductKeyRetrieval(d_model, config.n_heads, config.n_keys, config.d_key,
                                             config.top_k, config.query_norm)
        self.values = nn.Parameter(torch.empty(config.n_experts, d_value))  # (N, d_value)
        nn.init.normal_(self.values, std=d_value ** -0.5)  # Lample et al. 2019 §3.3 / XLM init
        self.output = nn.Linear(d_value, d_model, bias=False) if d_value != d_model else None
        if self.output is not None:
            init_linear(self.output, residual_std(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, d)
        key_scores, value_index = self.retrieval(x)  # (M, h, k) each
        scores = router_scores(key_scores, self.config.score)  # (M, h, k)
        self.record_routing(value_index, scores)
        read = F.embedding_bag(value_index.flatten(1), self.values, mode="sum",
                               per_sample_weights=scores.flatten(1).to(self.values.dtype),
                               sparse=self.sparse_tables)  # (M, d_value)
        if self.output is not None:
            read = self.output(read)  # (M, d)
        return read.view_as(x)  # (B, T, d)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.values] if self.sparse_tables else []
