"""Typed settings of a study: what the Hydra tree composes into.

Merge order (Meta Lingua style): dataclass defaults, then ``conf/config.yaml``
and its groups, then the sweep file (``sweeps/<name>.yaml``), then command-line
``key=value`` overrides. Every component owns its settings dataclass; each
``__post_init__`` raises a :class:`UserError` naming field, value, rule and fix.
Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from isoflop.errors import UserError
from models.config import ffw_config_from_dict
from models.ffw.config_base import FFWConfigBase


def _require(condition: bool, where: str, value: object, rule: str, fix: str) -> None:
    if not condition:
        raise UserError(f"{where}={value!r}: {rule}; {fix}")


@dataclass(frozen=True)
class ModelTemplate:
    """Backbone settings shared by every size of the ladder. See
    :class:`models.config.BackboneConfig` for the meaning of each field.

    ``n_layers``, ``d_model`` and ``n_heads`` are normally left unset (null)
    and chosen by the ladder; setting one pins it for every run (e.g.
    ``model.d_model=512`` varies depth only).
    """

    n_layers: int | None = None
    d_model: int | None = None
    n_heads: int | None = None
    ffw_multiplier: float = 4.0
    activation: str = "gelu"
    norm: str = "rmsnorm"
    positions: str = "rotary"
    tie_embeddings: bool = False
    replace_blocks: Any = "middle"

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads"):
            value = getattr(self, name)
            _require(value is None or value > 0, f"model.{name}", value, "must be > 0 or null",
                     "set a positive value or leave it to the ladder")
        if self.d_model is not None and self.n_heads is not None and self.d_model % self.n_heads:
            _require(False, "model.d_model", self.d_model, f"must be divisible by n_heads={self.n_heads}",
                     f"use d_model={self.n_heads * max(1, round(self.d_model / self.n_heads))} or change n_heads")
        _require(self.ffw_multiplier > 0, "model.ffw_multiplier", self.ffw_multiplier, "must be > 0",
                 "use e.g. 4")


@dataclass(frozen=True)
class LadderConfig:
    """How backbone sizes are chosen around each budget's compute-optimal estimate.

    Candidate shapes: ``shapes`` (explicit ``[n_layers, d_model, n_heads]``
    triples) or, when empty, n_layers in [min_layers, max_layers] with
    d_model = aspect_ratio·n_layers rounded to a multiple of head_dim and
    n_heads = d_model / head_dim. For each (method, budget) the planner
    keeps ``sizes_below`` candidates with tokens/param above
    ``tokens_per_param`` (the D = 20·N estimate of Hoffmann et al. 2022) and
    ``sizes_above`` below it, walking outwards from the estimate and taking
    a candidate only when its active non-embedding parameters differ from
    the previous pick by at least ``size_ratio`` (an isoFLOP parabola needs
    a spread of sizes, not neighbours).
    """

    shapes: list = field(default_factory=list)
    min_layers: int = 2
    max_layers: int = 48
    aspect_ratio: int = 64
    head_dim: int = 64
    sizes_below: int = 3
    sizes_above: int = 3
    size_ratio: float = 1.5
    tokens_per_param: float = 20.0
    min_steps: int = 100

    def __post_init__(self) -> None:
        _require(self.sizes_below >= 1, "ladder.sizes_below", self.sizes_below, "must be >= 1",
                 "use 2 or more so the optimum is bracketed")
        _require(self.sizes_above >= 1, "ladder.sizes_above", self.sizes_above, "must be >= 1",
                 "use 2 or more so the optimum is bracketed")
        _require(self.size_ratio >= 1, "ladder.size_ratio", self.size_ratio, "must be >= 1",
                 "use e.g. 1.5 (1 keeps every candidate)")
        _require(self.tokens_per_param > 0, "ladder.tokens_per_param", self.tokens_per_param,
                 "must be > 0", "use 20 (Chinchilla)")
        _require(self.min_steps >= 1, "ladder.min_steps", self.min_steps, "must be >= 1", "use e.g. 100")
        _require(1 <= self.min_layers <= self.max_layers, "ladder.min_layers", self.min_layers,
                 f"must be in [1, max_layers={self.max_layers}]", "lower min_layers")
        _require(self.head_dim > 0 and self.aspect_ratio > 0, "ladder.head_dim", self.head_dim,
                 "head_dim and aspect_ratio must be > 0", "set positive values")
        for shape in self.shapes:
            _require(len(shape) == 3 and all(int(v) > 0 for v in shape), "ladder.shapes", list(shape),
                     "each shape is [n_layers, d_model, n_heads] with positive ints", "fix that entry")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (AdamW, warmup + cosine; Loshchilov & Hutter 2019).

    Learning rate per model size: lr = lr_base · (lr_reference_d_model / d_model)
    ** lr_width_exponent, capped at lr_max (a width-scaling rule in the spirit of
    muP for Adam, Yang et al. 2022); the resolved value is recorded per run.
    """

    batch_size: int = 128
    seq_len: int = 2048
    micro_batch_size: int | None = None
    lr_base: float = 1e-3
    lr_reference_d_model: int = 512
    lr_width_exponent: float = 0.5
    lr_max: float = 1e-2
    warmup_fraction: float = 0.02
    min_lr_fraction: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    precision: str = "auto"
    compile: bool = False
    sparse_tables: bool = False
    checkpoint_every_steps: int = 500
    log_every_steps: int = 10
    eval_tokens: int = 1_048_576
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "seq_len", "lr_base", "lr_max", "checkpoint_every_steps",
                     "log_every_steps", "eval_tokens", "lr_reference_d_model"):
            _require(getattr(self, name) > 0, f"train.{name}", getattr(self, name), "must be > 0",
                     "set a positive value")
        if self.micro_batch_size is not None:
            _require(self.micro_batch_size > 0 and self.batch_size % self.micro_batch_size == 0,
                     "train.micro_batch_size", self.micro_batch_size,
                     f"must divide batch_size={self.batch_size}", "pick a divisor of the batch size")
        _require(0 <= self.warmup_fraction < 1, "train.warmup_fraction", self.warmup_fraction,
                 "must be in [0, 1)", "use e.g. 0.02")
        _require(0 <= self.min_lr_fraction <= 1, "train.min_lr_fraction", self.min_lr_fraction,
                 "must be in [0, 1]", "use e.g. 0.1")
        _require(self.precision in ("auto", "fp32", "bf16"), "train.precision", self.precision,
                 "must be auto, fp32 or bf16", "use auto (bf16 on CUDA, fp32 on CPU)")

    def learning_rate(self, d_model: int) -> float:
        """Peak learning rate for a backbone of width ``d_model`` (rule in the class docstring)."""
        scaled = self.lr_base * (self.lr_reference_d_model / d_model) ** self.lr_width_exponent
        return float(min(scaled, self.lr_max))


@dataclass(frozen=True)
class EvalDatasetConfig:
    """One evaluation corpus (PEER Table 1). ``source``: ``hub`` (``path`` is the
    dataset name, e.g. ``wikitext``, with ``subset``) or ``files`` (``path`` is a
    local file or glob: .txt, .jsonl, .parquet)."""

    name: str
    source: str = "hub"
    path: str = ""
    subset: str | None = None
    split: str = "validation"
    text_field: str = "text"

    def __post_init__(self) -> None:
        _require(self.source in ("hub", "files"), f"data.eval_datasets[{self.name}].source",
                 self.source, "must be hub or files", "pick one")


@dataclass(frozen=True)
class DataConfig:
    """The training corpus and the evaluation sets.

    ``source``: ``offline`` (the Python standard library sources of the running
    interpreter — no download), ``hub`` (``name``/``subset`` streamed with
    ``datasets``, e.g. allenai/c4 en), or ``files`` (``paths``: .txt, .jsonl,
    .parquet). ``tokenizer``: ``bytes`` (vocab 256 + end-of-document) or a
    Hugging Face tokenizer name (``vocab_size`` required then).
    """

    source: str = "offline"
    name: str = ""
    subset: str | None = None
    split: str = "train"
    validation_split: str | None = None
    text_field: str = "text"
    paths: list = field(default_factory=list)
    tokenizer: str = "bytes"
    vocab_size: int | None = None
    validation_fraction: float = 0.01
    allow_multiple_epochs: bool = False
    eval_datasets: list = field(default_factory=list)

    def __post_init__(self) -> None:
        _require(self.source in ("offline", "hub", "files"), "data.source", self.source,
                 "must be offline, hub or files", "pick one")
        _require(self.source != "hub" or bool(self.name), "data.name", self.name,
                 "a hub source needs a dataset name", "set data.name=allenai/c4")
        _require(self.source != "files" or bool(self.paths), "data.paths", self.paths,
                 "a files source needs paths", "set data.paths=[corpus.txt]")
        _require(self.tokenizer == "bytes" or (self.vocab_size or 0) > 0, "data.vocab_size",
                 self.vocab_size, f"tokenizer {self.tokenizer} needs its vocab size",
                 "set data.vocab_size")
        _require(0 < self.validation_fraction < 1, "data.validation_fraction",
                 self.validation_fraction, "must be in (0, 1)", "use e.g. 0.01")
        converted = tuple(item if isinstance(item, EvalDatasetConfig) else EvalDatasetConfig(**item)
                          for item in self.eval_datasets)
        object.__setattr__(self, "eval_datasets", converted)
        object.__setattr__(self, "paths", tuple(self.paths))

    @property
    def resolved_vocab_size(self) -> int:
        """Embedding rows: 257 for bytes (256 byte values + end-of-document)."""
        return 257 if self.tokenizer == "bytes" else int(self.vocab_size or 0)


@dataclass(frozen=True)
class ClusterConfig:
    """Where jobs run (submitit). ``executor``: debug (in-process), local
    (processes on this machine; the default), slurm (job arrays)."""

    executor: str = "local"
    max_parallel: int = 1
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    mem_gb: float | None = None
    timeout_min: int = 60
    constraint: str | None = None
    array_parallelism: int = 64
    additional_parameters: dict = field(default_factory=dict)
    max_requeues: int = 5
    accelerator: str = "cpu"
    peak_flops: float | None = None
    assumed_mfu: float = 0.4

    def __post_init__(self) -> None:
        _require(self.executor in ("debug", "local", "slurm"), "cluster.executor", self.executor,
                 "must be debug, local or slurm", "pick cluster=debug|local|slurm")
        for name in ("max_parallel", "nodes", "tasks_per_node", "cpus_per_task", "timeout_min",
                     "array_parallelism"):
            _require(getattr(self, name) > 0, f"cluster.{name}", getattr(self, name), "must be > 0",
                     "set a positive value")
        _require(0 < self.assumed_mfu <= 1, "cluster.assumed_mfu", self.assumed_mfu,
                 "must be in (0, 1]", "use e.g. 0.4")


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: methods x budgets x ladder, and how each run trains.

    Attributes:
        name: study name (the sweep directory's name).
        budgets: training FLOPs per run, one isoFLOP curve each.
        methods: method name -> the FFW that replaces the backbone's (the
            ``dense`` method keeps the dense FFW everywhere).
        logger: ``none`` or ``wandb``.
    """

    name: str
    budgets: list
    methods: dict
    model: ModelTemplate = field(default_factory=ModelTemplate)
    ladder: LadderConfig = field(default_factory=LadderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logger: str = "none"

    def __post_init__(self) -> None:
        _require(bool(self.name) and "/" not in self.name, "name", self.name,
                 "must be a non-empty name without '/'", "set name=my_study")
        _require(len(self.budgets) > 0, "budgets", self.budgets, "needs at least one budget",
                 "pass --budget 6e18")
        budgets = []
        for budget in self.budgets:
            try:
                value = float(budget)
            except (TypeError, ValueError):
                raise UserError(f"budgets: {budget!r} is not a number; pass FLOPs such as 6e18") from None
            _require(math.isfinite(value) and value > 0, "budget", budget, "must be a finite number > 0 FLOPs",
                     "pass e.g. --budget 6e18")
            budgets.append(value)
        object.__setattr__(self, "budgets", tuple(sorted(set(budgets))))
        _require(len(self.methods) > 0, "methods", self.methods, "needs at least one method",
                 "add e.g. methods.dense")
        methods: dict[str, FFWConfigBase] = {}
        for method_name, ffw in self.methods.items():
            methods[method_name] = ffw if isinstance(ffw, FFWConfigBase) else \
                ffw_config_from_dict(dict(ffw), where=f"methods.{method_name}")
        object.__setattr__(self, "methods", methods)
        _require(self.logger in ("none", "wandb"), "logger", self.logger, "must be none or wandb",
                 "use logger=wandb or logger=none")
