"""RunSpec: everything one training job needs, frozen and fully resolved.

A RunSpec pickles cleanly for submitit and round-trips through ``run.json``
(:meth:`RunSpec.write` / :meth:`RunSpec.read`, versioned as
:mod:`isoflop.record_format` describes). Its ``run_id`` is a
readable prefix plus a hash of the rest of the spec, so the same planned run
always gets the same id and any change to it gets a new one. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from isoflop.atomic_files import write_json_atomic
from isoflop.errors import UserError
from isoflop.record_format import RecordError, check_version, optional_field, without_unused_optional_fields
from isoflop.run_records import is_folder_name
from isoflop.study_config import EXECUTION_SETTINGS, SEED_LIMIT, DataConfig, TrainConfig
from models.config import ModelConfig
from models.errors import is_real

RUN_SPEC_VERSION = 1


@dataclass(frozen=True)
class RunSpec:
    """One planned run.

    Attributes:
        run_id: ``<method>-L<layers>-d<width>-<budget>-<hash8>``.
        study: the study's name.
        method: the method's name in the study (e.g. ``peer``).
        budget_flops: the isoFLOP budget this run spends (training FLOPs).
        model: the resolved model.
        train: the study's training settings (batch, sequence, optimiser...).
        data: corpus and evaluation sets.
        logger: ``none`` or ``wandb``.
        steps: optimizer steps = floor(budget / (flops_per_token_train · batch · seq)).
        tokens: training tokens = steps · batch · seq.
        realized_flops: tokens · flops_per_token_train (<= budget, within one step).
        learning_rate: peak learning rate from ``train.learning_rate(d_model)``.
        warmup_steps: linear warmup steps.
        micro_batch_size: sequences per forward/backward in one process.
        grad_accumulation_steps: micro-batches per optimizer step (one process).
        costs: flat accounting summary (``ModelCosts.summary()``).
        params_by_component: parameter counts by component.
        params_active_by_component: active parameter counts by component.
        forward_flops_by_component: forward FLOPs per token by component.
        seed: random seed of the run.
        cooldown_start_step: ``train.schedule == "wsd"``: the first step of the
            cooldown (the learning rate is constant from the end of the warm-up up to
            it); None: no cooldown (a trunk). A branch's fork step.
        fork_steps: a trunk's steps at which branches fork from it (a checkpoint is
            handed to them there; :mod:`isoflop.forks`); empty for every other run.
        trunk_id: a branch's trunk (it starts from the trunk's checkpoint at
            ``cooldown_start_step``; trained from scratch it reaches the same state).

    The fields after ``seed`` are written to ``run.json`` only when set, so the
    run.json and run_id of a run that does not use them are what they were
    before they existed.
    """

    run_id: str
    study: str
    method: str
    budget_flops: float
    model: ModelConfig
    train: TrainConfig
    data: DataConfig
    logger: str
    steps: int
    tokens: int
    realized_flops: float
    learning_rate: float
    warmup_steps: int
    micro_batch_size: int
    grad_accumulation_steps: int
    costs: dict = field(default_factory=dict)
    params_by_component: dict = field(default_factory=dict)
    params_active_by_component: dict = field(default_factory=dict)
    forward_flops_by_component: dict = field(default_factory=dict)
    seed: int = 0
    version: int = RUN_SPEC_VERSION
    cooldown_start_step: int | None = optional_field(None)
    fork_steps: tuple[int, ...] = optional_field(())
    trunk_id: str | None = optional_field(None)

    @property
    def batch_size(self) -> int:
        return self.train.batch_size

    @property
    def seq_len(self) -> int:
        return self.train.seq_len

    @property
    def flops_per_token_train(self) -> float:
        return float(self.costs["flops_per_token_train"])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the content of ``run.json``)."""
        values = without_unused_optional_fields(self, {f.name: getattr(self, f.name) for f in fields(self)})
        values["model"] = self.model.to_dict()
        values["train"] = without_unused_optional_fields(self.train, asdict(self.train))
        values["data"] = asdict(self.data)
        values["data"]["paths"] = list(self.data.paths)
        values["data"]["eval_datasets"] = [asdict(item) for item in self.data.eval_datasets]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "run.json") -> "RunSpec":
        """Inverse of :meth:`to_dict`; raises KeyError/TypeError on a malformed dict and
        :class:`~isoflop.record_format.RecordError` on a version this isoflop does not read."""
        check_version(values, "run spec", RUN_SPEC_VERSION, source)
        values = dict(values)
        values["model"] = ModelConfig.from_dict(values["model"])
        values["train"] = TrainConfig(**values["train"])
        values["data"] = DataConfig(**values["data"])  # it converts its eval_datasets dicts itself
        values["fork_steps"] = tuple(values.get("fork_steps", ()))
        spec = cls(**values)
        spec.check_numbers()
        return spec

    def check_numbers(self) -> None:
        """Raise a :class:`UserError` naming the field unless every number a trainer reads
        is in its range (a hand-edited or damaged run.json: ``"steps": -5``, ``"costs": {}``)."""
        def whole(value: Any, least: int) -> bool:
            return is_real(value) and float(value).is_integer() and value >= least

        def require_field(condition: bool, name: str, value: Any, rule: str) -> None:
            if not condition:
                raise UserError(f"{name}={value!r} {rule}; restore it or re-create it with 'isoflop submit'")

        require_field(isinstance(self.run_id, str) and is_folder_name(self.run_id), "run_id", self.run_id,
                      "is not a folder name")
        for name in ("steps", "micro_batch_size", "grad_accumulation_steps"):
            require_field(whole(getattr(self, name), 1), name, getattr(self, name), "must be a whole number >= 1")
        for name in ("tokens", "warmup_steps"):
            require_field(whole(getattr(self, name), 0), name, getattr(self, name), "must be a whole number >= 0")
        require_field(whole(self.seed, 0) and self.seed < SEED_LIMIT, "seed", self.seed, "must be in [0, 2**32)")
        for name in ("budget_flops", "learning_rate", "realized_flops"):
            require_field(is_real(getattr(self, name)) and getattr(self, name) > 0, name, getattr(self, name),
                          "must be a finite number > 0")
        require_field(isinstance(self.costs, dict) and is_real(self.costs.get("flops_per_token_train"))
                      and self.costs["flops_per_token_train"] > 0, "costs.flops_per_token_train",
                      self.costs.get("flops_per_token_train") if isinstance(self.costs, dict) else self.costs,
                      "must be a finite number > 0 (the accounting's training FLOPs per token)")
        for name, value in self.costs.items():
            require_field(is_real(value) and value >= 0, f"costs.{name}", value, "must be a finite number >= 0")

    def write(self, path: Path) -> None:
        """``run.json`` atomically."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def read(cls, path: Path) -> "RunSpec":
        """The spec of a ``run.json``; a missing, unreadable or malformed file is a UserError."""
        if not path.is_file():
            raise UserError(f"{path}: no such file; pass a run directory written by 'isoflop submit'")
        try:
            values = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise UserError(f"{path} is not readable JSON ({str(error).splitlines()[0]}); "
                            "restore it or re-create the sweep with 'isoflop submit'") from None
        try:
            if not isinstance(values, dict):
                raise TypeError("the top level is not an object")
            return cls.from_dict(values, str(path))
        except RecordError:
            raise
        except UserError as error:  # a config's own validation
            raise UserError(f"{path}: {error.message}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise UserError(f"{path} is not a valid run spec ({type(error).__name__}: {error}); "
                            "re-create it with 'isoflop submit'") from None

    @property
    def eval_every_steps(self) -> int:
        """Optimizer steps between evaluations during training (``train.eval_every_tokens``
        rounded to whole steps, at least 1); 0: only at the end."""
        every_tokens = self.train.eval_every_tokens
        return max(1, round(every_tokens / (self.batch_size * self.seq_len))) if every_tokens else 0

    def content_hash(self, leave_out: tuple[str, ...] = ()) -> str:
        """Hash of everything but the run_id, the fields ``leave_out`` and the execution
        settings (:data:`~isoflop.study_config.EXECUTION_SETTINGS`), 8 hex digits."""
        content = self.to_dict()
        for name in ("run_id", *leave_out):
            content.pop(name, None)
        for setting in EXECUTION_SETTINGS:
            group, _, key = setting.partition(".")
            if key and isinstance(content.get(group), dict):
                content[group].pop(key, None)
        canonical = json.dumps(content, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:8]

    def with_run_id(self) -> "RunSpec":
        """A copy whose run_id is the readable prefix plus :meth:`content_hash`."""
        backbone = self.model.backbone
        prefix = f"{self.method}-L{backbone.n_layers}-d{backbone.d_model}-{self.budget_flops:.0e}"
        return replace(self, run_id=f"{prefix.replace('+', '')}-{self.content_hash()}")
