"""Decoder-only pre-norm transformer with a per-block FFW (nanoGPT layout).

token ids (B, T) -> embedding (+ learned positions) -> n_layers x Block ->
final norm -> LM head -> logits (B, T, V).

Block: x = x + Attention(Norm(x)); x = x + FFW(Norm(x)). Attention is causal
multi-head self-attention through ``F.scaled_dot_product_attention`` with
rotary (Su et al. 2021; ``kernels/rotary.py``) or learned absolute positions; on the CPU in float32,
the same computation in C, which rotates the queries and keys as it reads them
(``kernels/causal_attention.py``). No linear layer has a
bias (the accounting in ``isoflop/flops.py`` assumes none). Norms are RMSNorm
(weight only, d params) or LayerNorm (weight and bias, 2·d).

Which blocks get the replacement FFW comes from ``ModelConfig.block_ffw(i)``;
the other blocks keep the backbone's dense FFW. Every FFW is built through
the registry (``models/registry.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.causal_attention import causal_attention
from kernels.rotary import rotary_tables
from models.config import BackboneConfig, ModelConfig
from models.ffw.base import FFWLayer, residual_std


def make_norm(backbone: BackboneConfig) -> nn.Module:
    if backbone.norm == "rmsnorm":
        return nn.RMSNorm(backbone.d_model, eps=1e-6)
    return nn.LayerNorm(backbone.d_model)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: Q, K, V and output projections, 4·d² params."""

    def __init__(self, backbone: BackboneConfig) -> None:
        super().__init__()
        self.n_heads, self.rotary = backbone.n_heads, backbone.positions == "rotary"
        self.qkv = nn.Linear(backbone.d_model, 3 * backbone.d_model, bias=False)
        self.proj = nn.Linear(backbone.d_model, backbone.d_model, bias=False)
        nn.init.normal_(self.qkv.weight, std=0.02)
        nn.init.normal_(self.proj.weight, std=residual_std(backbone.n_layers))

    def forward(self, x: torch.Tensor,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Attention output (B, T, d) of ``x`` (B, T, d); ``rotary``: the forward's
        :func:`rotary_tables` (computed here when None and the positions are rotary), with which
        ``causal_attention`` applies :func:`~kernels.rotary.apply_rotary` to the queries and keys."""
        batch, positions, d_model = x.shape  # (B, T, d)
        query, key, value = self.qkv(x).split(d_model, dim=-1)  # (B, T, d) each
        shape = (batch, positions, self.n_heads, d_model // self.n_heads)
        query, key, value = (t.view(shape).transpose(1, 2) for t in (query, key, value))  # (B, H, T, D)
        if not self.rotary:
            rotary = None
        elif rotary is None:
            rotary = rotary_tables(positions, d_model // self.n_heads, x.device)
        # (B, H, T, D); query and key rotated as apply_rotary rotates them (by the C kernels, which
        # read them rotated, on the CPU in fp32; by apply_rotary, then SDPA, elsewhere)
        attended = causal_attention(query, key, value, rotary)
        return self.proj(attended.transpose(1, 2).reshape(batch, positions, d_model))  # (B, T, d)


class Block(nn.Module):
    """Pre-norm transformer block with a pluggable FFW."""

    def __init__(self, backbone: BackboneConfig, ffw: FFWLayer) -> None:
        super().__init__()
        self.attention_norm = make_norm(backbone)
        self.attention = CausalSelfAttention(backbone)
        self.ffw_norm = make_norm(backbone)
        self.ffw = ffw

    def forward(self, x: torch.Tensor,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Block output (B, T, d); ``rotary``: the forward's :func:`rotary_tables` or None."""
        x = x + self.attention(self.attention_norm(x), rotary)  # (B, T, d)
        return x + self.ffw(self.ffw_norm(x))  # (B, T, d)


class TransformerLM(nn.Module):
    """The whole language model. Build it with ``models.build_model(config)``."""

    def __init__(self, config: ModelConfig, ffw_layers: list[FFWLayer]) -> None:
        super().__init__()
        backbone = config.backbone
        self.config = config
        self.token_embedding = nn.Embedding(backbone.vocab_size, backbone.d_model)
        self.position_embedding = (nn.Embedding(backbone.max_seq_len, backbone.d_model)
                                   if backbone.positions == "learned" else None)
        self.blocks = nn.ModuleList(Block(backbone, ffw) for ffw in ffw_layers)
        self.final_norm = make_norm(backbone)
        self.lm_head = nn.Linear(backbone.d_model, backbone.vocab_size, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        if self.position_embedding is not None:
            nn.init.normal_(self.position_embedding.weight, std=0.02)
        if backbone.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) for token ids (B, T)."""
        batch, positions = tokens.shape
        if positions > self.config.backbone.max_seq_len:
            raise ValueError(f"sequence of {positions} tokens exceeds max_seq_len="
                             f"{self.config.backbone.max_seq_len}; shorten it or raise max_seq_len")
        x = self.token_embedding(tokens)  # (B, T, d)
        if self.position_embedding is not None:
            x = x + self.position_embedding(torch.arange(positions, device=tokens.device))  # (B, T, d)
        backbone = self.config.backbone
        rotary = (rotary_tables(positions, backbone.d_model // backbone.n_heads, x.device)
                  if backbone.positions == "rotary" else None)  # (T, D/2) each, shared by the blocks
        for block in self.blocks:
            x = block(x, rotary)  # (B, T, d)
        return self.lm_head(self.final_norm(x))  # (B, T, V)

    def auxiliary_loss(self) -> torch.Tensor:
        """Sum of the weighted auxiliary losses of the last forward (0 when none): every
        block's FFW ``auxiliary_losses``, the terms of ``models.routing.auxiliary_loss_terms``."""
        terms = [value for block in self.blocks for value in block.ffw.auxiliary_losses.values()]
        if not terms:
            return torch.zeros((), device=self.lm_head.weight.device)
        return torch.stack([term.float() for term in terms]).sum()

    def sparse_parameters(self) -> list[nn.Parameter]:
        """PEER/PKM tables with sparse gradients (empty unless built with sparse_tables=True)."""
        return [parameter for block in self.blocks for parameter in block.ffw.sparse_parameters()]
