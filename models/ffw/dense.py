"""Dense FFW: ReLU, GELU (Vaswani et al. 2017 §3.3) or SwiGLU (Shazeer 2020).

FLOPs (FlopCounterMode sees all of them): 2 matmuls of 2·d·d_ff per token
(3 for SwiGLU); the activation and the SwiGLU product are elementwise (0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.ffw.base import ACTIVATION_FUNCTIONS, FFWLayer, init_linear, residual_std
from models.ffw.dense_config import DenseFFWConfig
from models.registry import FFW_MODULES


@FFW_MODULES.register(DenseFFWConfig.family)
class DenseFFW(FFWLayer):
    """y = W_down act(W_up x); SwiGLU: y = W_down (silu(W_gate x) * W_up x). No biases."""

    def __init__(self, config: DenseFFWConfig, d_model: int, n_layers: int, sparse_tables: bool = False) -> None:
        super().__init__(config, d_model)
        d_ff = config._d_ff()
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.gate = nn.Linear(d_model, d_ff, bias=False) if config.activation == "swiglu" else None
        self.down = nn.Linear(d_ff, d_model, bias=False)
        init_linear(self.up, 0.02)
        if self.gate is not None:
            init_linear(self.gate, 0.02)
        init_linear(self.down, residual_std(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, d)
        if self.gate is not None:
            hidden = F.silu(self.gate(x)) * self.up(x)  # (B, T, d_ff)
        else:
            hidden = ACTIVATION_FUNCTIONS[self.config.activation](self.up(x))  # (B, T, d_ff)
        return self.down(hidden)  # (B, T, d)
