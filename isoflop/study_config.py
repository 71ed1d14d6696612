"""Typed settings of a study: what the Hydra tree composes into.

Merge order (Meta Lingua style): dataclass defaults, then ``conf/config.yaml``
and its groups, then the sweep file (``sweeps/<name>.yaml``), then command-line
``key=value`` overrides. The dataclasses own every default: the YAML files
under ``conf/`` hold only what differs from them (``tests/test_config_defaults.py``
holds them to that). Each ``__post_init__`` raises a :class:`UserError` naming
field, value, rule and fix. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from isoflop.record_format import optional_field
from models.config import (
    REPLACE_BLOCK_PLACEMENTS,
    BackboneConfig,
    block_index_list,
    ffw_config_from_dict,
    replaced_block_indices,
)
from models.errors import (
    is_real,
    require,
    require_choice,
    require_fraction,
    require_non_negative,
    require_positive,
    setting_error,
)
from models.ffw.config_base import FFWConfigBase

EXECUTION_SETTINGS = ("cluster", "train.parallelism")
"""Settings (a group, or one dotted key) that say where and how jobs run, not what they
compute: changing one neither changes a run's id (:meth:`isoflop.run_spec.RunSpec.content_hash`)
nor counts as a change of the study on resubmission (:func:`isoflop.sweep_dir.study_changes`)."""

SEED_LIMIT = 2 ** 32
"""Seeds must lie in [0, 2**32): ``numpy.random.seed`` refuses anything else."""
MAX_BUDGET_FLOPS = 1e30
"""The largest training budget a study may plan, in FLOPs. The largest training runs
to date used about 1e26 FLOPs; four orders of magnitude more is no experiment but a
typo or a unit mistake (and would plan runs of ~1e20 steps). Every count a plan
derives from a budget (realized FLOPs, tokens) stays below it, hence within what
``isoflop analyze`` accepts (``analysis.collect.MAX_PLAUSIBLE_COUNT``, 1e40)."""
BUDGET_EXAMPLE = "6e18"
SCHEDULES = ("cosine", "wsd")
COOLDOWN_SHAPES = ("1-sqrt", "linear")
STRATEGIES = ("independent", "cooldown_branches")


def budget_problem(budget: object, flag: str = "--budget") -> tuple[str, str] | None:
    """What is wrong with a training budget in FLOPs, as (rule, fix naming ``flag``), or None
    when it is valid: a finite number > 0 and at most :data:`MAX_BUDGET_FLOPS`. The one rule
    for every way a budget arrives (``--budget``, the sweep's ``budgets:`` list, a
    ``budgets=[...]`` override, ``isoflop analyze --predict``)."""
    if not is_real(budget) or budget <= 0:  # type: ignore[operator]
        return "must be a finite positive number of FLOPs", f"pass e.g. {flag} {BUDGET_EXAMPLE}"
    if budget > MAX_BUDGET_FLOPS:  # type: ignore[operator]
        rule = (f"is above the largest budget planned, {MAX_BUDGET_FLOPS:.0e} FLOPs "
                "(the largest training runs to date used ~1e26)")
        return rule, f"pass a budget of at most {MAX_BUDGET_FLOPS:.0e} FLOPs, e.g. {flag} {BUDGET_EXAMPLE}"
    return None


@dataclass(frozen=True)
class ModelTemplate(BackboneConfig):
    """The study's ``model`` settings: a :class:`~models.config.BackboneConfig`
    (its fields, defaults and validation) whose sizes the ladder chooses,
    plus where each method's FFW goes.

    ``n_layers``, ``d_model`` and ``n_heads`` are normally left unset (null)
    and chosen by the ladder; setting one pins it for every run (e.g.
    ``model.d_model=512`` varies depth only). ``vocab_size`` and
    ``max_seq_len`` are not study settings: the planner takes them from
    ``data`` and ``train.seq_len``.

    Attributes:
        replace_blocks: ``middle``, ``all``, ``none`` or a list of block
            indices (typed ``Any``: OmegaConf 2.3 cannot type a field that
            holds a string or a list).
    """

    replace_blocks: Any = "middle"

    @property
    def pins_backbone(self) -> bool:
        """True when ``n_layers``, ``d_model`` and ``n_heads`` are all pinned: one
        backbone for every run (a study that varies only the FFW, He 2024 Fig. 3)."""
        return None not in (self.n_layers, self.d_model, self.n_heads)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("vocab_size", "max_seq_len"):
            require(getattr(self, name) is None, f"model.{name}", getattr(self, name),
                    "is set by the planner (from data and train.seq_len)", "leave it unset")
        if self.n_layers is not None:
            replaced_block_indices(self.replace_blocks, self.n_layers)
        elif self.replace_blocks not in REPLACE_BLOCK_PLACEMENTS:
            block_index_list(self.replace_blocks)


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
    a spread of sizes, not neighbours). Runs with fewer than ``min_steps``
    optimizer steps are dropped (with the reason).

    ``backbones_from`` names a method: the shapes are chosen for that method
    as above, and every method is planned on those same backbones at each
    budget (a comparison at equal backbones, hence equal total parameters for
    layers of the dense FFW's size, as in Csordás et al. 2023). ``None``: each
    method gets its own ladder.
    """

    shapes: list[list[int]] = field(default_factory=list)
    min_layers: int = 2
    max_layers: int = 48
    aspect_ratio: int = 64
    head_dim: int = 64
    sizes_below: int = 3
    sizes_above: int = 3
    size_ratio: float = 1.5
    tokens_per_param: float = 20.0
    min_steps: int = 100
    backbones_from: str | None = None

    def __post_init__(self) -> None:
        for name in ("sizes_below", "sizes_above"):
            require(getattr(self, name) >= 1, f"ladder.{name}", getattr(self, name), "must be >= 1",
                    "use 2 or more so the optimum is bracketed")
        require(is_real(self.size_ratio) and self.size_ratio >= 1, "ladder.size_ratio", self.size_ratio,
                "must be a finite number >= 1", "use e.g. 1.5 (1 keeps every candidate)")
        require(is_real(self.tokens_per_param) and self.tokens_per_param > 0, "ladder.tokens_per_param",
                self.tokens_per_param, "must be a finite number > 0", "use 20 (Chinchilla)")
        require(self.min_steps >= 1, "ladder.min_steps", self.min_steps, "must be >= 1", "use e.g. 100")
        require(1 <= self.min_layers <= self.max_layers, "ladder.min_layers", self.min_layers,
                f"must be in [1, max_layers={self.max_layers}]", "lower min_layers")
        require_positive("ladder", head_dim=self.head_dim, aspect_ratio=self.aspect_ratio)
        for shape in self.shapes:
            require(len(shape) == 3 and all(is_real(v) and v > 0 for v in shape), "ladder.shapes", list(shape),
                    "each shape is [n_layers, d_model, n_heads] with positive ints", "fix that entry")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (AdamW, Loshchilov & Hutter 2019; a warm-up + cosine or a
    warmup-stable-decay learning-rate schedule).

    Learning rate per model size: lr = lr_base · (lr_reference_d_model / d_model)
    ** lr_width_exponent, capped at lr_max (a width-scaling rule in the spirit of
    muP for Adam, Yang et al. 2022); the resolved value is recorded per run.

    Attributes:
        batch_size: sequences per optimizer step (global).
        seq_len: tokens per sequence.
        micro_batch_size: sequences per forward/backward; ``None``: the whole
            batch in one pass, else gradient accumulation.
        lr_base, lr_reference_d_model, lr_width_exponent, lr_max: the rule above.
        warmup_fraction: linear warmup, as a fraction of the run's steps (of a
            trunk's shortest branch, with ``strategy: cooldown_branches``).
        min_lr_fraction: the cosine (or the WSD cooldown) decays to this fraction of the peak.
        schedule: ``cosine`` (warm-up, then cosine decay over the rest of the run) or
            ``wsd`` (warmup-stable-decay, Hägele et al. 2024: warm-up, constant peak,
            then a cooldown over the last ``cooldown_fraction`` of the run's steps).
        cooldown_fraction: ``wsd``: fraction of the run's steps (and tokens) in the
            cooldown, in (0, 1]; 0.2 matches a cosine run of the same length (Hägele et al. 2024).
        cooldown_shape: ``wsd``: ``1-sqrt`` (lr falls as 1 - sqrt(progress), the shape
            Hägele et al. 2024 found best) or ``linear``.
        eval_every_tokens: training tokens between evaluations of the validation loss
            during training (``kind: eval`` lines of metrics.jsonl); 0: only at the end.
        weight_decay: AdamW decoupled weight decay (0 turns it off).
        beta1, beta2: AdamW moment decay rates, in [0, 1).
        grad_clip: largest global gradient L2 norm (0 turns clipping off).
        precision: ``auto`` (bf16 on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
        compile: ``torch.compile`` the model.
        sparse_tables: PEER/PKM tables updated only in the rows a step touches.
        parallelism: how several processes share the model: ``ddp`` (every
            rank holds the whole model and optimizer state; gradients are
            all-reduced) or ``fsdp`` (PyTorch FSDP2 ``fully_shard``: each
            transformer block's parameters, gradients and optimizer state are
            sharded over the ranks and gathered for its forward and backward,
            so PEER's and PKM's tables are not replicated). One process: the same.
            ``fsdp`` does not combine with ``sparse_tables``.
        checkpoint_every_steps: steps between checkpoints.
        log_every_steps: steps between metrics.jsonl lines.
        eval_tokens: tokens per evaluation dataset.
        seed: random seed of every run, in [0, 2**32).
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
    parallelism: str = "ddp"
    checkpoint_every_steps: int = 500
    log_every_steps: int = 10
    eval_tokens: int = 1_048_576
    seed: int = 0
    schedule: str = optional_field("cosine")
    cooldown_fraction: float = optional_field(0.2)
    cooldown_shape: str = optional_field("1-sqrt")
    eval_every_tokens: int = optional_field(0)

    def __post_init__(self) -> None:
        require_positive("train", batch_size=self.batch_size, seq_len=self.seq_len, lr_base=self.lr_base,
                         lr_max=self.lr_max, checkpoint_every_steps=self.checkpoint_every_steps,
                         log_every_steps=self.log_every_steps, eval_tokens=self.eval_tokens,
                         lr_reference_d_model=self.lr_reference_d_model)
        if self.micro_batch_size is not None:
            require(self.micro_batch_size > 0 and self.batch_size % self.micro_batch_size == 0,
                    "train.micro_batch_size", self.micro_batch_size,
                    f"must divide batch_size={self.batch_size}", "pick a divisor of the batch size")
        require(is_real(self.lr_width_exponent), "train.lr_width_exponent", self.lr_width_exponent,
                "must be a finite number", "use e.g. 0.5")
        require_fraction("train.warmup_fraction", self.warmup_fraction, "use e.g. 0.02")
        require_fraction("train.min_lr_fraction", self.min_lr_fraction, "use e.g. 0.1", include_one=True)
        require_fraction("train.beta1", self.beta1, "use e.g. 0.9")
        require_fraction("train.beta2", self.beta2, "use e.g. 0.95")
        require_non_negative("train", "use e.g. 0.1 (0 turns weight decay off)", weight_decay=self.weight_decay)
        require_non_negative("train", "use e.g. 1.0 (0 turns clipping off)", grad_clip=self.grad_clip)
        require(0 <= self.seed < SEED_LIMIT, "train.seed", self.seed, "must be in [0, 2**32)", "use e.g. 0")
        require_choice("train.precision", self.precision, ("auto", "fp32", "bf16"))
        require_choice("train.parallelism", self.parallelism, ("ddp", "fsdp"))
        require(not (self.parallelism == "fsdp" and self.sparse_tables), "train.sparse_tables",
                self.sparse_tables, "sparse row gradients cannot be sharded by FSDP (train.parallelism=fsdp)",
                "set train.sparse_tables=false, or train.parallelism=ddp")
        require_choice("train.schedule", self.schedule, SCHEDULES)
        require_choice("train.cooldown_shape", self.cooldown_shape, COOLDOWN_SHAPES)
        require_fraction("train.cooldown_fraction", self.cooldown_fraction, "use e.g. 0.2", include_zero=False,
                         include_one=True)
        require(self.schedule != "wsd" or self.warmup_fraction + self.cooldown_fraction <= 1,
                "train.cooldown_fraction", self.cooldown_fraction,
                f"plus train.warmup_fraction={self.warmup_fraction} must be at most 1 (warm-up and cooldown "
                "cannot overlap)", "lower one of them")
        require(isinstance(self.eval_every_tokens, int) and not isinstance(self.eval_every_tokens, bool)
                and self.eval_every_tokens >= 0, "train.eval_every_tokens", self.eval_every_tokens,
                "must be an integer >= 0", "use e.g. 1000000 (0: evaluate only at the end)")

    def cooldown_steps(self, steps: int) -> int:
        """``wsd``: optimizer steps in the cooldown of a ``steps``-step run:
        cooldown_fraction · steps rounded to the nearest step, at least 1 and at most ``steps``."""
        return min(steps, max(1, round(self.cooldown_fraction * steps)))

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
        require_choice(f"data.eval_datasets[{self.name}].source", self.source, ("hub", "files"))


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
    paths: list[str] = field(default_factory=list)
    tokenizer: str = "bytes"
    vocab_size: int | None = None
    validation_fraction: float = 0.01
    allow_multiple_epochs: bool = False
    eval_datasets: list[EvalDatasetConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        require_choice("data.source", self.source, ("offline", "hub", "files"))
        require(self.source != "hub" or bool(self.name), "data.name", self.name,
                "a hub source needs a dataset name", "set data.name=allenai/c4")
        require(self.source != "files" or bool(self.paths), "data.paths", self.paths,
                "a files source needs paths", "set data.paths=[corpus.txt]")
        require_positive("data", vocab_size=self.vocab_size)
        require(self.tokenizer == "bytes" or self.vocab_size is not None, "data.vocab_size",
                self.vocab_size, f"tokenizer {self.tokenizer} needs its vocab size", "set data.vocab_size")
        require_fraction("data.validation_fraction", self.validation_fraction, "use e.g. 0.01",
                         include_zero=False)
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
    """Where jobs run (submitit). The defaults are the ``local`` executor's.

    Attributes:
        executor: ``debug`` (in-process), ``local`` (processes on this
            machine) or ``slurm`` (job arrays).
        max_parallel: local executor: runs training at once.
        partition, account, qos, constraint: sbatch options (``None``: the site's default).
        nodes, gpus_per_node, cpus_per_task, mem_gb, timeout_min: resources per job.
        tasks_per_node: one task per GPU; more than one runs torch.distributed (DDP) inside the job.
        array_parallelism: SLURM array tasks running at once.
        additional_parameters: any other sbatch option, e.g. ``{mail-type: FAIL}``.
        max_requeues: cap on timeout requeues.
        accelerator: device name for peak FLOP/s (MFU and cost estimates;
            ``isoflop/hardware.py``).
        peak_flops: peak FLOP/s of one device; ``None``: from the accelerator table.
        assumed_mfu: model FLOPs utilisation assumed by the cost estimate.
        checkpoint_write_gbps: write bandwidth (GB/s, 1e9 bytes) assumed for one
            job saving a checkpoint to the sweep's file system; ``submit
            --dry-run`` warns when a run's checkpoint would not be saved within
            the time-limit signal's lead time (``isoflop bench checkpoint``
            measures it on a machine).
        keep_fork_checkpoints: ``strategy: cooldown_branches``: also keep each
            trunk's fork checkpoints in ``trunks/<trunk_id>/forks/`` (hard links);
            by default a fork checkpoint lives on only as the starting point of the
            branches that fork there (``isoflop.forks``).
    """

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
    timeout_min: int = 1440
    constraint: str | None = None
    array_parallelism: int = 64
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    max_requeues: int = 5
    accelerator: str = "cpu"
    peak_flops: float | None = None
    assumed_mfu: float = 0.4
    checkpoint_write_gbps: float = 1.0
    keep_fork_checkpoints: bool = False

    def __post_init__(self) -> None:
        require(self.executor in ("debug", "local", "slurm"), "cluster.executor", self.executor,
                "must be debug, local or slurm", "pick cluster=debug|local|slurm")
        require_positive("cluster", max_parallel=self.max_parallel, nodes=self.nodes,
                         tasks_per_node=self.tasks_per_node, cpus_per_task=self.cpus_per_task,
                         timeout_min=self.timeout_min, array_parallelism=self.array_parallelism,
                         mem_gb=self.mem_gb, peak_flops=self.peak_flops,
                         checkpoint_write_gbps=self.checkpoint_write_gbps)
        require_non_negative("cluster", "set 0 or more", gpus_per_node=self.gpus_per_node,
                             max_requeues=self.max_requeues)
        require_fraction("cluster.assumed_mfu", self.assumed_mfu, "use e.g. 0.4", include_zero=False,
                         include_one=True)


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: methods x budgets x ladder, and how each run trains.

    Attributes:
        name: study name (the sweep directory's name).
        budgets: training FLOPs per run, one isoFLOP curve each.
        methods: method name -> the FFW that replaces the backbone's (a family
            config, or a mapping with a ``family`` key). Settings an FFW leaves
            to the backbone are taken from ``model`` here, so the ``dense``
            method keeps the backbone's dense FFW everywhere.
        logger: ``none`` or ``wandb``.
        strategy: ``independent`` (every run trains from scratch with its own
            schedule) or ``cooldown_branches`` (needs ``train.schedule: wsd``): per
            method one ladder of shapes shared by the budgets, one constant-learning-rate
            trunk per shape, and per budget a branch that forks from it and cools
            down (:mod:`isoflop.branch_planner`).
    """

    name: str
    budgets: list[float]
    methods: dict[str, Any]
    model: ModelTemplate = field(default_factory=ModelTemplate)
    ladder: LadderConfig = field(default_factory=LadderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logger: str = "none"
    strategy: str = "independent"

    def __post_init__(self) -> None:
        from isoflop.run_records import FOLDER_NAME_RULE, is_folder_name

        require(is_folder_name(self.name), "name", self.name, f"{FOLDER_NAME_RULE} (it names the sweep folder)",
                "set name=my_study")
        require(len(self.budgets) > 0, "budgets", self.budgets, "needs at least one budget", "pass --budget 6e18")
        for budget in self.budgets:
            problem = budget_problem(budget)
            if problem is not None:
                raise setting_error("budget", budget, *problem)
        object.__setattr__(self, "budgets", tuple(sorted({float(budget) for budget in self.budgets})))
        require(len(self.methods) > 0, "methods", self.methods, "needs at least one method",
                "add e.g. methods.dense")
        methods: dict[str, FFWConfigBase] = {}
        for method_name, ffw in self.methods.items():
            if not isinstance(ffw, FFWConfigBase):
                ffw = ffw_config_from_dict(ffw, where=f"methods.{method_name}")
            methods[method_name] = ffw.with_backbone_settings(self.model)
        object.__setattr__(self, "methods", methods)
        require(self.ladder.backbones_from in (None, *methods), "ladder.backbones_from", self.ladder.backbones_from,
                "must name a method of the study", f"use one of {', '.join(methods)} or null")
        require_choice("logger", self.logger, ("none", "wandb"))
        require_choice("strategy", self.strategy, STRATEGIES)
        require(self.strategy != "cooldown_branches" or self.train.schedule == "wsd", "strategy", self.strategy,
                f"needs the warmup-stable-decay schedule (train.schedule is {self.train.schedule!r})",
                "set train.schedule=wsd")
