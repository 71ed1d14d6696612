"""Model configs: the backbone, the FFW family lookup, and the full model.

Torch-free. Every FFW family's config (and its cost formulas) lives in
``models/ffw/<family>_config.py`` beside its module ``models/ffw/<family>.py``
and registers itself (:func:`models.ffw.config_base.ffw_family`); importing
this module imports every such config module, so each family is known here
without being listed.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from numbers import Integral
from typing import Any

import models.ffw
from models.errors import UserError, require, require_choice, require_positive
from models.ffw.config_base import FFW_FAMILIES, FFWConfigBase
from models.ffw.dense_config import DENSE_ACTIVATIONS, DenseFFWConfig



def _register_every_family() -> None:
    """Import every ``models/ffw/*_config.py``; each registers its family in ``FFW_FAMILIES``."""
    for module in pkgutil.iter_modules(models.ffw.__path__):
        if module.name.endswith("_config"):
            importlib.import_module(f"models.ffw.{module.name}")


_register_every_family()


def ffw_config_class(values: object, where: str = "ffw") -> type[FFWConfigBase]:
    """The config class of the family named by ``values["family"]``, after checking
    that ``values`` is a mapping whose other keys are fields of that class.

    Raises :class:`UserError` naming the unknown family or key and the valid ones.
    """
    if not isinstance(values, Mapping):
        raise UserError(f"{where}={values!r}: an FFW layer is a mapping with a family key; compose one "
                        f"with +model/ffw@{where}=OPTION or set {where}.family")
    family = values.get("family")
    if family not in FFW_FAMILIES:
        raise UserError(f"{where}.family={family!r} is not a known FFW family; "
                        f"use one of {', '.join(FFW_FAMILIES.names())}")
    config_class = FFW_FAMILIES.get(family)
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(values) - known - {"family"})
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} for family {family}; "
                        f"valid keys: {', '.join(sorted(known))}")
    return config_class


def ffw_config_from_dict(values: Mapping[str, Any], where: str = "ffw") -> FFWConfigBase:
    """Build a family's config from a plain mapping with a ``family`` key (see :func:`ffw_config_class`)."""
    config_class = ffw_config_class(values, where)
    return config_class(**{name: value for name, value in values.items() if name != "family"})


SET_BY_PLANNER = {"omegaconf_ignore": True}
"""Field metadata of sizes the planner takes from other settings: OmegaConf leaves
such fields out of the study schema, so they are never ``model.*`` keys."""

SIZE_FIELDS = ("n_layers", "d_model", "n_heads", "vocab_size", "max_seq_len")
NORMS = ("rmsnorm", "layernorm")
POSITIONS = ("rotary", "learned")


@dataclass(frozen=True)
class BackboneConfig:
    """Decoder-only pre-norm transformer: the one owner of the backbone's settings,
    their defaults and their validation.

    A run's backbone has every size set (the planner fills them in). A study's
    ``model`` settings (:class:`isoflop.study_config.ModelTemplate`) are this
    class with the sizes left unset (``None``) for the ladder to choose.

    Attributes:
        n_layers: blocks (``None``: chosen by the ladder; a number pins it).
        d_model: residual width (``None``: chosen by the ladder).
        n_heads: attention heads; d_model must divide evenly (``None``: chosen by the ladder).
        vocab_size: tokenizer vocabulary (embedding rows, LM-head outputs); set by
            the planner from ``data``.
        max_seq_len: longest sequence (learned position table rows); set by the
            planner from ``train.seq_len``.
        ffw_multiplier: dense FFW width d_ff = ffw_multiplier · d_model.
        activation: dense FFW activation (``relu``, ``gelu``, ``swiglu``).
        norm: ``rmsnorm`` (weight only) or ``layernorm`` (weight and bias).
        positions: ``rotary`` (no parameters) or ``learned``.
        tie_embeddings: share the embedding and LM-head matrix.
    """

    n_layers: int | None = None
    d_model: int | None = None
    n_heads: int | None = None
    vocab_size: int | None = field(default=None, metadata=SET_BY_PLANNER)
    max_seq_len: int | None = field(default=None, metadata=SET_BY_PLANNER)
    ffw_multiplier: float = 4.0
    activation: str = "gelu"
    norm: str = "rmsnorm"
    positions: str = "rotary"
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in SIZE_FIELDS:
            value = getattr(self, name)
            require(value is None or (isinstance(value, Integral) and not isinstance(value, bool) and value > 0),
                    f"model.{name}", value, "must be an integer > 0",
                    "set a positive integer, or leave it null to have it chosen for each run")
        require_positive("model", ffw_multiplier=self.ffw_multiplier)
        require_choice("model.activation", self.activation, DENSE_ACTIVATIONS)
        require_choice("model.norm", self.norm, NORMS)
        require_choice("model.positions", self.positions, POSITIONS)
        if self.d_model is None or self.n_heads is None:
            return
        if self.d_model % self.n_heads:
            raise UserError(f"model.d_model={self.d_model}: must be divisible by n_heads={self.n_heads}; "
                            f"use d_model={self.n_heads * max(1, round(self.d_model / self.n_heads))} "
                            "or change n_heads")
        if self.positions == "rotary" and (self.d_model // self.n_heads) % 2:
            raise UserError(f"model.d_model={self.d_model} with n_heads={self.n_heads}: rotary positions "
                            "need an even head dimension; change d_model or n_heads")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def unset_sizes(self) -> list[str]:
        """Names of the sizes still ``None``."""
        return [name for name in SIZE_FIELDS if getattr(self, name) is None]

    def with_sizes(self, **sizes: int) -> "BackboneConfig":
        """A :class:`BackboneConfig` (never a subclass) with this one's settings and ``sizes``."""
        values = {item.name: getattr(self, item.name) for item in fields(BackboneConfig)}
        return BackboneConfig(**{**values, **sizes})

    def dense_ffw(self) -> DenseFFWConfig:
        """The FFW of the blocks that keep the dense layer."""
        return DenseFFWConfig(activation=self.activation).resolve(self.d_model, self.ffw_multiplier)


REPLACE_BLOCK_PLACEMENTS = ("middle", "all", "none")


def block_index_list(replace_blocks: object) -> tuple[int, ...]:
    """The block indices of a ``replace_blocks`` list, checked for form (any other
    value that is not one of :data:`REPLACE_BLOCK_PLACEMENTS` is refused)."""
    well_formed = isinstance(replace_blocks, (list, tuple)) and all(
        isinstance(index, Integral) and not isinstance(index, bool) and index >= 0 for index in replace_blocks)
    require(well_formed, "model.replace_blocks", replace_blocks,
            f"must be {', '.join(REPLACE_BLOCK_PLACEMENTS)} or a list of block indices >= 0", "pick one")
    return tuple(int(index) for index in replace_blocks)


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
    indices = block_index_list(replace_blocks)
    bad = [index for index in indices if index >= n_layers]
    if bad:
        raise UserError(f"model.replace_blocks={list(indices)}: index {bad[0]} is outside 0..{n_layers - 1}; "
                        "use indices of existing blocks")
    return tuple(sorted(set(indices)))


@dataclass(frozen=True)
class ModelConfig:
    """A complete model: backbone plus the FFW placed in the replaced blocks.

    Attributes:
        backbone: the transformer shape (every size set).
        ffw: the replacement FFW, resolved against the backbone; settings it
            leaves to the backbone (``FFWConfigBase.backbone_settings``) are
            filled in here.
        replace_blocks: ``middle``, ``all``, ``none`` or block indices.
    """

    backbone: BackboneConfig
    ffw: FFWConfigBase
    replace_blocks: str | tuple[int, ...] = "middle"

    def __post_init__(self) -> None:
        unset = self.backbone.unset_sizes()
        if unset:
            raise UserError(f"model.{unset[0]} is unset: a model needs every size of its backbone; set it")
        object.__setattr__(self, "ffw", self.ffw.with_backbone_settings(self.backbone))
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


__all__ = ["BackboneConfig", "ModelConfig", "FFW_FAMILIES", "ffw_config_class", "ffw_config_from_dict",
           "replaced_block_indices"]
