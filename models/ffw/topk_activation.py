"""Top-K activation FFW (Csordás et al. 2023, "Approximating Two-Layer
Feedforward Networks for Efficient Transformers", §3.1, Eq. 10).

u = act(W_up x) is computed densely, all but its K largest entries are set to
0, and y = W_down u. The masking is done densely (as in the paper's
analysis), so FLOPs equal the dense layer's: 4·d·d_ff per token, all seen by
FlopCounterMode; the top-K selection and the scatter are not matmuls (0).
"""

from __future__ import annotations

import torch
from torch import nn

from models.ffw.base import ACTIVATION_FUNCTIONS, FFWLayer, init_linear, residual_std
from models.ffw.topk_activation_config import TopKActivationConfig
from models.registry import FFW_MODULES


@FFW_MODULES.register(TopKActivationConfig.family)
class TopKActivationFFW(FFWLayer):
    """Dense two-layer FFW keeping only the top-K hidden activations per token."""

    def __init__(self, config: TopKActivationConfig, d_model: int, n_layers: int,
                 sparse_tables: bool = False) -> None:
        super().__init__(config, d_model)
        if config.d_ff is None:
            raise ValueError("TopKActivationConfig.d_ff is unresolved; call resolve() first")
        self.up = nn.Linear(d_model, config.d_ff, bias=False)
        self.down = nn.Linear(config.d_ff, d_model, bias=False)
        init_linear(self.up, 0.02)
        init_linear(self.down, residual_std(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, d)
        hidden = ACTIVATION_FUNCTIONS[self.config.activation](self.up(x))  # (B, T, d_ff)
        kept_values, kept_index = hidden.topk(self.config.k, dim=-1)  # (B, T, K) each
        sparse_hidden = torch.zeros_like(hidden).scatter(-1, kept_index, kept_values)  # (B, T, d_ff)
        return self.down(sparse_hidden)  # (B, T, d)
