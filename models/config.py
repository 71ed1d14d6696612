"""Model configs: the backbone, the FFW family registry, and the full model.

Torch-free. Every FFW family's config (and its cost formulas) lives in
``models/ffw/<family>_config.py`` beside its module ``models/ffw/<family>.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from isoflop.errors import UserError
from models.ffw.cost_model import FFWConfigBase, require_choice
from models.ffw.dense_config import DenseFFWConfig
from models.ffw.expert_choice_config import ExpertChoiceMoEConfig
from models.ffw.peer_config import PEERConfig
from models.ffw.pkm_config import PKMConfig
from models.ffw.token_choice_config import TokenChoiceMoEConfig
from models.ffw.topk_activation_config import TopKActivationConfig

FFW_CONFIGS: dict[str, type[FFWConfigBase]] = {
    config_class.family: config_class
    for config_class in (DenseFFWConfig, TopKActivationConfig, TokenChoiceMoEConfig,
                         ExpertChoiceMoEConfig, PKMConfig, PEERConfig)
}


def ffw_config_from_dict(values: dict[str, Any], where: str = "ffw") -> FFWConfigBase:
    """Build a family's config from a plain dict with a ``family`` key.

    Raises :class:`UserError` naming the unknown family or key and the valid ones.
    """
    values = dict(values)
    family = values.pop("family", None)
    if family not in FFW_CONFIGS:
        raise UserError(f"{where}.family={family!r} is not a known FFW family; "
                        f"use one of {', '.join(sorted(FFW_CONFIGS))}")
    config_class = FFW_CONFIGS[family]
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} for family {family}; "
                        f"valid keys: {', '.join(sorted(known))}")
    return config_class(**values)


@dataclass(frozen=True)
class BackboneConfig:
    """Decoder-only pre-norm transformer (shape fixed per run by the planner).

    Attributes:
        n_layers: blocks.
        d_model: residual width.
        n_heads: attention heads; d_model must divide evenly.
        vocab_size: tokenizer vocabulary (embedding rows, LM-head outputs).
        max_seq_len: longest sequence (learned position table rows).
        ffw_multiplier: dense FFW width d_ff = ffw_multiplier · d_model.
        activation: dense FFW activation (``relu``, ``gelu``, ``swiglu``).
        norm: ``rmsnorm`` (weight only) or ``layernorm`` (weight and bias).
        positions: ``rotary`` (no parameters) or ``learned``.
        tie_embeddings: share the embedding and LM-head matrix.
    """

    n_layers: int
    d_model: int
    n_heads: int
    vocab_size: int
    max_seq_len: int
    ffw_multiplier: float = 4.0
    activation: str = "gelu"
    norm: str = "rmsnorm"
    positions: str = "rotary"
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "vocab_size", "max_seq_len", "ffw_multiplier"):
            value = getattr(self, name)
            if not value > 0:
                raise UserError(f"model.{name}={value!r}: must be > 0; set a positive value")
        if self.d_model % self.n_heads:
            raise UserError(f"model.d_model={self.d_model}: must be divisible by n_heads={self.n_heads}; "
                            f"use d_model={self.n_heads * max(1, round(self.d_model / self.n_heads))} "
                            "or change n_heads")
        require_choice("backbone", "activation", self.activation, ("relu", "gelu", "swiglu"))
        require_choice("backbone", "norm", self.norm, ("rmsnorm", "layernorm"))
        require_choice("backbone", "positions", self.positions, ("rotary", "learned"))
        if self.positions == "rotary" and (self.d_model // self.n_heads) % 2:
            raise UserError(f"model.d_model={self.d_model} with n_heads={self.n_heads}: rotary positions "
                            "need an even head dimension; change d_model or n_heads")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def dense_ffw(self) -> DenseFFWConfig:
        """The FFW of the blocks that keep the dense layer."""
        return DenseFFWConfig(activation=self.activation).resolve(self.d_model, self.ffw_multiplier)


def replaced_block_indices(replace_blocks: str | list[int] | tuple[int, ...], n_layers: int) -> tuple[int, ...]:
    """Block indices (0-based) whose FFW is the replacement layer.

    ``middle``: block n_layers // 2 (the PEER paper: block 6 of 12); ``all``:
    every block (the sigma-MoE paper); ``none``: no block (a dense model); or
    an explicit list.
    """
    if replace_blocks == "middle":
        return (n_layers // 2,)
    if replace_blocks == "all":
        return tuple(range(n_layers))
    if replace_blocks == "none":
        return ()
    if isinstance(replace_blocks, str):
        raise UserError(f"replace_blocks={replace_blocks!r}: must be middle, all, none or a list of "
                        "block indices; pick one")
    indices = tuple(int(index) for index in replace_blocks)
    bad = [index for index in indices if not 0 <= index < n_layers]
    if bad:
        raise UserError(f"replace_blocks={list(indices)}: index {bad[0]} is outside 0..{n_layers - 1}; "
                        "use indices of existing blocks")
    return tuple(sorted(set(indices)))


@dataclass(frozen=True)
class ModelConfig:
    """A complete model: backbone plus the FFW placed in the replaced blocks.

    Attributes:
        backbone: the transformer shape.
        ffw: the replacement FFW (already resolved against the backbone).
        replace_blocks: ``middle``, ``all``, ``none`` or block indices.
    """

    backbone: BackboneConfig
    ffw: FFWConfigBase
    replace_blocks: str | tuple[int, ...] = "middle"

    def __post_init__(self) -> None:
        replaced_block_indices(self.replace_blocks, self.backbone.n_layers)

    @property
    def replaced_blocks(self) -> tuple[int, ...]:
        return replaced_block_indices(self.replace_blocks, self.backbone.n_layers)

    def block_ffw(self, block_index: int) -> FFWConfigBase:
        """The FFW config of block ``block_index``."""
        if block_index in self.replaced_blocks:
            return self.ffw
        return self.backbone.dense_ffw()

    def to_dict(self) -> dict[str, Any]:
        replace_blocks = self.replace_blocks
        return {"backbone": asdict(self.backbone), "ffw": self.ffw.to_dict(),
                "replace_blocks": replace_blocks if isinstance(replace_blocks, str) else list(replace_blocks)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        replace_blocks = values.get("replace_blocks", "middle")
        if not isinstance(replace_blocks, str):
            replace_blocks = tuple(replace_blocks)
        return cls(backbone=BackboneConfig(**values["backbone"]),
                   ffw=ffw_config_from_dict(values["ffw"]), replace_blocks=replace_blocks)


__all__ = ["BackboneConfig", "ModelConfig", "FFW_CONFIGS", "ffw_config_from_dict",
           "replaced_block_indices"]
