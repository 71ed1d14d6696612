"""Decoder-only pre-norm transformer with a per-block FFW (nanoGPT layout).

token ids (B, T) -> embedding (+ learned positions) -> n_layers x Block ->
final norm -> LM head -> logits (B, T, V).

Block: x = x + Attention(Norm(x)); x = x + FFW(Norm(x)). Attention is causal
multi-head self-attention through ``F.scaled_dot_product_attention`` with
rotary (Su et al. 2021) or learned absolute positions. No linear layer has a
bias (the accounting in ``isoflop/flops.py`` assumes none). Norms are RMSNorm
(weight only, d params) or LayerNorm (weight and bias, 2·d).

Which blocks get the replacement FFW comes from ``ModelConfig.block_ffw(i)``;
the other blocks keep the backbone's dense FFW. Every FFW is built through
the registry (``models/registry.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import BackboneConfig, ModelConfig
from models.ffw.base import FFWLayer, residual_std

ROTARY_BASE = 10000.0


def make_norm(backbone: BackboneConfig) -> nn.Module:
    if backbone.norm == "rmsnorm":
        return nn.RMSNorm(backbone.d_model, eps=1e-6)
    return nn.LayerNorm(backbone.d_model)


def rotary_tables(positions: int, head_dim: int, device: torch.device) -> torch.Tensor:
    """The rotations e^(i·t·θ_j), θ_j = base^(-2j/D), as complex64 (T, D/2).

    Computed once per model forward and shared by every block's :func:`apply_rotary`.
    """
    inverse_frequency = ROTARY_BASE ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)
                                        / head_dim)  # (D/2,)
    angles = torch.arange(positions, device=device, dtype=torch.float32).unsqueeze(-1) * inverse_frequency
    return torch.complex(angles.cos(), angles.sin())  # (T, D/2)


def apply_rotary(x: torch.Tensor, rotations: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate pairs (x[2j], x[2j+1]) by angle t·θ_j, θ_j = base^(-2j/D) (Su et al. 2021, Eq. 34).

    Each pair is one complex number x[2j] + i·x[2j+1] multiplied by e^(i·t·θ_j): the
    product's real and imaginary parts are x[2j]·cos - x[2j+1]·sin and
    x[2j]·sin + x[2j+1]·cos, Eq. 34's rotation. One complex multiply reads the pairs
    where they lie (no strided even/odd slices) and is ~2.7x faster forward+backward
    on the CPU than the real-valued form at the tiny studies' shapes. It computes in
    float32 (float64 for float64 inputs) and returns ``x``'s dtype.
    Elementwise only (no matmul), so FlopCounterMode counts 0, as the accounting does.

    Args:
        x: (B, T, ..., D) queries and/or keys (e.g. (B, T, H, D), or (B, T, 2, H, D) for
            both at once), D even; any strides with the last one 1.
        rotations: complex (T, D/2) of :func:`rotary_tables`; computed here when None.
    Returns:
        x's shape, contiguous.
    """
    positions, head_dim = x.shape[1], x.shape[-1]
    if rotations is None:
        rotations = rotary_tables(positions, head_dim, x.device)
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    pairs = torch.view_as_complex(x.to(compute_dtype).unflatten(-1, (head_dim // 2, 2)))  # (B, T, ..., D/2)
    rotations = rotations.to(pairs.dtype).view(positions, *([1] * (x.dim() - 3)), head_dim // 2)  # (T, 1.., D/2)
    return torch.view_as_real(pairs * rotations).flatten(-2).to(x.dtype)  # x's shape


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: Q, K, V and output projections, 4·d² params."""

    def __init__(self, backbone: BackboneConfig) -> None:
        super().__init__()
        self.n_heads, self.rotary = backbone.n_heads, backbone.positions == "rotary"
        self.qkv = nn.Linear(backbone.d_model, 3 * backbone.d_model, bias=False)
        self.proj = nn.Linear(backbone.d_model, backbone.d_model, bias=False)
        nn.init.normal_(self.qkv.weight, std=0.02)
        nn.init.normal_(self.proj.weight, std=residual_std(backbone.n_layers))

    def forward(self, x: torch.Tensor, rotary: torch.Tensor | None = None) -> torch.Tensor:
        """Attention output (B, T, d) of ``x`` (B, T, d); ``rotary``: the forward's
        :func:`rotary_tables` (computed here when None and the positions are rotary)."""
        batch, positions, d_model = x.shape  # (B, T, d)
        head_dim = d_model // self.n_heads
        qkv = self.qkv(x).unflatten(-1, (3, self.n_heads, head_dim))  # (B, T, 3, H, D)
        query, key, value = qkv.unbind(2)  # (B, T, H, D) each
        if self.rotary:
            # query and key rotated in one multiply, in the (B, T, H, D) layout the projection wrote
            query, key = apply_rotary(qkv[:, :, :2], rotary).unbind(2)
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # (B, H, T, D)
        attended = F.scaled_dot_product_attention(query, key, value, is_causal=True)  # (B, H, T, D)
        return self.proj(attended.transpose(1, 2).reshape(batch, positions, d_model))  # (B, T, d)


class Block(nn.Module):
    """Pre-norm transformer block with a pluggable FFW."""

    def __init__(self, backbone: BackboneConfig, ffw: FFWLayer) -> None:
        super().__init__()
        self.attention_norm = make_norm(backbone)
        self.attention = CausalSelfAttention(backbone)
        self.ffw_norm = make_norm(backbone)
        self.ffw = ffw

    def forward(self, x: torch.Tensor, rotary: torch.Tensor | None = None) -> torch.Tensor:
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
                  if backbone.positions == "rotary" else None)  # complex (T, D/2), shared by the blocks
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
