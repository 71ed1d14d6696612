"""The base of every FFW family's config, the family registry, and the shared
pieces of the families' cost formulas (torch-free).

Adding a family is one registration: its ``models/ffw/<family>_config.py``
decorates its config class with :func:`ffw_family`, naming the module that
holds its ``nn.Module`` (imported only when a model is built, so planning
never imports torch). ``models.config`` imports every ``*_config.py`` of
``models/ffw/``, so the family is then known to the planner, the Hydra
schema (``methods.NAME.family``) and the builder.

Conventions used by every family (see ``isoflop/flops.py`` for the whole
model):

- FLOPs are matmul FLOPs: 2 per multiply-add. Elementwise work (activations,
  softmax, normalisation), top-k selection, sorting and gathers count 0. This
  is what ``torch.utils.flop_counter.FlopCounterMode`` measures, and the tests
  hold each formula to that measurement.
- Costs are per token, for one forward pass.
- ``params`` counts every trainable parameter of the layer; ``params_active``
  counts those a single token's forward pass reads (expected value where the
  routing makes it vary, e.g. expert choice).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, ClassVar, TypeVar

from models import errors
from models.errors import UserError
from models.registry import Registry

@dataclass(frozen=True)
class FFWCosts:
    """Parameter counts and forward FLOPs per token of one FFW layer, by component.

    Component names are stable keys (e.g. ``"experts"``, ``"router"``,
    ``"query"``, ``"keys"``) so the breakdown can be logged and compared.
    ``flop_counter_invisible`` names components whose FLOPs are real arithmetic
    but done by ops that FlopCounterMode does not count.
    """

    params: dict[str, int]
    params_active: dict[str, int]
    forward_flops_per_token: dict[str, float]
    flop_counter_invisible: tuple[str, ...] = field(default=())

    @property
    def n_params(self) -> int:
        return sum(self.params.values())

    @property
    def n_params_active(self) -> int:
        return sum(self.params_active.values())

    @property
    def forward_flops(self) -> float:
        return float(sum(self.forward_flops_per_token.values()))


@dataclass(frozen=True)
class FFWConfigBase:
    """Base of every family's config. Subclasses set ``family``, register with
    :func:`ffw_family`, and implement :meth:`resolve` (fill sizes that depend
    on the backbone) and :meth:`costs`.

    ``backbone_settings`` names fields that, left ``None``, take the value of
    the backbone's field of the same name when the layer is placed in a
    model (the dense FFW's activation follows ``model.activation``).
    """

    family: ClassVar[str] = ""
    module_path: ClassVar[str] = ""
    backbone_settings: ClassVar[tuple[str, ...]] = ()

    def resolve(self, d_model: int, ffw_multiplier: float) -> "FFWConfigBase":
        """Return a copy with every size that defaults to the backbone filled in."""
        return self

    def with_backbone_settings(self, backbone: Any) -> "FFWConfigBase":
        """A copy whose unset ``backbone_settings`` take ``backbone``'s values."""
        unset = {name: getattr(backbone, name) for name in self.backbone_settings if getattr(self, name) is None}
        return replace(self, **unset) if unset else self

    def costs(self, d_model: int) -> FFWCosts:  # pragma: no cover - abstract
        raise NotImplementedError

    def summary(self) -> str:
        """A short human-readable description for plan tables."""
        return self.family

    @property
    def causal(self) -> bool:
        """Whether a token's output ignores later tokens of its sequence in training
        as well as evaluation (False marks a layer kept only to reproduce a paper)."""
        return True

    @property
    def sequences_per_routing_group(self) -> int:
        """Sequences whose tokens the layer routes together (expert choice); a
        forward's batch must be a multiple of it. 1: each sequence on its own."""
        return 1

    def to_dict(self) -> dict:
        return {"family": self.family, **asdict(self)}


FFWConfigClass = TypeVar("FFWConfigClass", bound=type[FFWConfigBase])

FFW_FAMILIES: Registry[type[FFWConfigBase]] = Registry("FFW family")
"""Family key -> config class, filled by :func:`ffw_family` (``models.config``
imports every family's config module)."""


def ffw_family(module_path: str) -> Callable[[FFWConfigClass], FFWConfigClass]:
    """Class decorator registering a family's config class under its ``family``
    key, with ``module_path``, the module whose import registers the family's
    ``nn.Module`` in :data:`models.registry.FFW_MODULES`."""

    def register(config_class: FFWConfigClass) -> FFWConfigClass:
        config_class.module_path = module_path
        return FFW_FAMILIES.register(config_class.family)(config_class)

    return register


def config_error(family: str, field_name: str, value: object, rule: str, fix: str) -> UserError:
    """Build the one-line error for an invalid config value: field, value, rule, fix."""
    return errors.setting_error(f"ffw {family}.{field_name}", value, rule, fix)


def require_positive(family: str, **values: float | int | None) -> None:
    """Raise a :class:`UserError` for the first value that is set and not a finite number > 0."""
    errors.require_positive(f"ffw {family}", **values)


def require_choice(family: str, field_name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a :class:`UserError` unless ``value`` is one of ``choices``."""
    errors.require_choice(f"ffw {family}.{field_name}", value, choices)


def product_key_count(family: str, n_experts: int, top_k: int, d_key: int) -> int:
    """Validate a product-key memory and return the sub-key count per half.

    Product keys (Lample et al. 2019, §3.2) index N = n² slots by two halves of
    n sub-keys each, so N must be a perfect square, each half takes d_key/2
    dimensions, and the per-half top-k needs k <= n.
    """
    n_keys = math.isqrt(n_experts)
    if n_keys * n_keys != n_experts:
        lower, upper = n_keys * n_keys, (n_keys + 1) ** 2
        raise config_error(
            family, "n_experts", n_experts, "product keys need a perfect-square count",
            f"use {lower} or {upper}",
        )
    if d_key % 2:
        raise config_error(family, "d_key", d_key, "must be even (split into two halves)",
                           f"use {d_key + 1}")
    if top_k > n_keys:
        raise config_error(
            family, "top_k", top_k, f"must be <= sqrt(n_experts) = {n_keys}",
            f"lower top_k or raise n_experts to at least {top_k * top_k}",
        )
    return n_keys


def product_key_retrieval_costs(d_model: int, n_heads: int, n_keys: int, d_key: int,
                                query_batchnorm: bool) -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
    """Costs of the product-key retrieval shared by PEER and PKM (``models/ffw/product_keys.py``).

    Params: query d·h·d_key, sub-keys h·n·d_key (two halves of n keys x
    d_key/2 per head), query BatchNorm 2·h·d_key (scale and shift) if used.
    FLOPs/token: query 2·d·h·d_key; sub-key scores 2·h·n·d_key. BatchNorm,
    candidate combination, top-k and gathers: 0 matmul FLOPs.

    Returns:
        params ``{"query", "keys"}``, the BatchNorm params (``{"query_batchnorm"}``,
        empty without it; kept apart so callers list it after their own
        components) and FLOPs ``{"query", "keys"}``, all read by every token.
    """
    head_key_dims = n_heads * d_key
    params = {"query": d_model * head_key_dims, "keys": n_heads * n_keys * d_key}
    batchnorm_params = {"query_batchnorm": 2 * head_key_dims} if query_batchnorm else {}
    flops = {"query": 2.0 * d_model * head_key_dims, "keys": 2.0 * n_heads * n_keys * d_key}
    return params, batchnorm_params, flops


QUERY_NORM_STATISTICS = ("prefix", "batch")
"""Statistics of the product-key query normalisation (``models/ffw/product_keys.py``):
``prefix`` (causal, the default) or ``batch`` (the paper's BatchNorm, not causal in training)."""


class ProductKeyConfig(FFWConfigBase):
    """Base of the product-key families' configs (PEER, PKM), which define the
    fields ``n_experts``, ``n_heads``, ``top_k``, ``d_key``, ``query_batchnorm``
    (normalise the queries, Lample §3.3) and ``query_norm_statistics``
    (one of :data:`QUERY_NORM_STATISTICS`)."""

    n_experts: int
    n_heads: int
    top_k: int
    d_key: int
    query_batchnorm: bool
    query_norm_statistics: str

    @property
    def n_keys(self) -> int:
        """Sub-keys per half, sqrt(N)."""
        return product_key_count(self.family, self.n_experts, self.top_k, self.d_key)

    @property
    def query_norm(self) -> str | None:
        """The query normalisation the module builds, None without one."""
        return self.query_norm_statistics if self.query_batchnorm else None

    @property
    def causal(self) -> bool:
        return self.query_norm != "batch"

    def query_norm_summary(self) -> str:
        """The query normalisation for :meth:`summary`, marked when not causal."""
        if self.query_norm is None:
            return "qnorm=off"
        return f"qnorm={self.query_norm}" + ("" if self.causal else " NON-CAUSAL")


def resolve_int(value: int | None, default: float) -> int:
    """``value`` if set, else ``default`` rounded to an int (at least 1)."""
    return int(value) if value is not None else max(1, int(round(default)))
