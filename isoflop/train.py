"""The training loop: one RunSpec in, ``result.json`` out. Read it top to bottom.

``run(spec, run_dir)`` trains the run described by ``spec`` in ``run_dir`` and
returns its :class:`~isoflop.run_records.RunResult`. It depends on nothing but
its arguments (no Hydra, no working directory). A :class:`Trainer` does the
work in four stages, its methods in the order they run:

1. set-up (``__init__``): seeds, data, model, optimizers, and the newest good
   checkpoint in ``run_dir/checkpoints/`` restored last (nothing between that
   and the first step draws a random number, so a resumed run continues the
   uninterrupted run's random streams bit for bit);
2. ``train``: optimizer steps until ``spec.steps`` (``step``), each logged to
   ``metrics.jsonl`` (``log_step``) and checkpointed every
   ``train.checkpoint_every_steps``; the validation loss every
   ``train.eval_every_tokens`` (``evaluate_periodically``); a trunk's checkpoint at
   each of its fork steps handed to its branches (``hand_off_fork``); a NaN/inf
   loss stops the loop before its update (status ``diverged``);
3. ``evaluate``: the held-out split and every evaluation corpus;
4. ``finish``: ``result.json``, written atomically.

Global batch = ``spec.batch_size`` sequences of ``spec.seq_len`` tokens per
optimizer step. With W processes (torch.distributed DDP, set up from the
environment by :mod:`isoflop.distributed`) each rank takes batch/W sequences,
split into micro-batches of at most ``spec.micro_batch_size`` and accumulated.

Preemption signals wait for the end of the step in flight
(:class:`~isoflop.preemption.Preemption`): a checkpoint is only ever taken
between steps, and during the final evaluation.
"""

from __future__ import annotations

import contextlib
import math
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from isoflop import checkpoint, forks
from isoflop.data import load_training_data
from isoflop.distributed import (
    DistributedContext, gradient_sync, setup_distributed, shard_for_training, teardown_distributed,
)
from isoflop.errors import UserError, file_system_error, is_user_file_system_error
from isoflop.evaluation import evaluate_all, validation_loss
from isoflop.hardware import cpu_peak_flops, current_device_name, lookup_peak_flops
from isoflop.metrics_log import MetricsLogger, Throughput
from isoflop.optimization import (
    all_reduce_sparse_gradients, build_optimizers, clip_gradients, learning_rate_at, set_learning_rate,
)
from isoflop.preemption import Preemption
from isoflop.run_lock import exclusive_writer
from isoflop.run_records import EvalScores, ParamCounts, RunResult
from isoflop.planner import per_rank_micro_batch_size
from isoflop.run_spec import RunSpec
from isoflop.sweep_dir import RunDir
from kernels.host_memory import keep_freed_memory


def run(spec: RunSpec, run_dir: str | Path) -> RunResult:
    """Train ``spec`` in ``run_dir`` (resuming from its checkpoints); a completed run is returned as is.

    One process trains a run folder at a time (:func:`isoflop.run_lock.exclusive_writer`);
    a full disk or an unwritable folder is a :class:`UserError` naming the folder.
    """
    keep_freed_memory()  # each step's large tensors reuse the last step's memory (kernels.host_memory)
    run_dir = RunDir(Path(run_dir).resolve())
    finished = run_dir.result()
    if finished is not None and finished.status == "completed":
        return finished
    try:
        run_dir.path.mkdir(parents=True, exist_ok=True)
        with Preemption() as preemption:  # from here on, preemption signals wait for a step boundary
            context = setup_distributed()
            try:
                with exclusive_writer(run_dir.path, context):
                    return train_to_the_end(spec, run_dir, context, preemption)
            finally:
                teardown_distributed(context)
    except OSError as error:
        if not is_user_file_system_error(error):
            raise
        raise file_system_error(error, f"write the run folder {run_dir.path}") from None


def train_to_the_end(spec: RunSpec, run_dir: RunDir, context: DistributedContext,
                     preemption: Preemption) -> RunResult:
    """Set up, train, evaluate and finish one run (the four stages of :class:`Trainer`)."""
    trainer = Trainer(spec, run_dir, context)
    try:
        preemption.save_with(trainer.save_checkpoint)
        diverged_at_step = trainer.train(at_step_boundary=trainer.step_boundary_handler(preemption))
        preemption.release()  # the evaluation changes nothing a checkpoint holds
        return trainer.finish(diverged_at_step, trainer.evaluate(diverged_at_step is None))
    finally:
        trainer.close()


@dataclass
class RunningTotals:
    """The loop's running numbers, saved in every checkpoint: training seconds over
    all attempts, the sum and count of step losses since the last log line, and
    the mean loss of the last logged interval (nats/token)."""

    elapsed_s: float = 0.0
    interval_loss_sum: float = 0.0
    interval_steps: int = 0
    last_interval_loss: float = math.nan


@dataclass(frozen=True)
class StepReport:
    """What one optimizer step reports: mean loss (nats/token), learning rate, and the
    gradient norm before clipping (a device tensor, read only when logged)."""

    loss: float
    learning_rate: float
    grad_norm: torch.Tensor


class Trainer:
    """One run's training; its methods read in the order they run (module docstring)."""

    # ---- 1. set-up ------------------------------------------------------------------------------

    def __init__(self, spec: RunSpec, run_dir: RunDir, context: DistributedContext) -> None:
        self.spec, self.run_dir, self.context = spec, run_dir, context
        seed_random_generators(spec.seed)
        self.micro_batch_size, self.accumulation_steps = micro_batching(
            spec.batch_size, spec.micro_batch_size, context.world_size)
        self.data = load_training_data(spec.data, spec.seq_len, spec.seed, spec.tokens)
        from models import build_model

        self.model = build_model(spec.model, device=context.device, sparse_tables=spec.train.sparse_tables)
        self.sharded = spec.train.parallelism == "fsdp" and context.world_size > 1
        if self.sharded:  # FSDP2 replaces the parameters: the optimizers must hold the sharded ones
            shard_for_training(self.model)
        self.dense_optimizer, self.sparse_optimizer = build_optimizers(self.model, spec)
        self.optimizers = [optimizer for optimizer in (self.dense_optimizer, self.sparse_optimizer)
                           if optimizer is not None]
        self.trainable = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        self.sparse_parameters = list(self.model.sparse_parameters()) if spec.train.sparse_tables else []
        self.forward_model = wrapped_for_training(self.model, self.sparse_parameters, context, spec.train.compile,
                                                  self.sharded)
        self.autocast = autocast_for(spec.train.precision, context.device)
        self.device_name = current_device_name()  # setup_distributed made context.device the current one
        peak = cpu_peak_flops() if self.device_name == "cpu" else lookup_peak_flops(self.device_name)
        self.throughput = Throughput(spec.batch_size * spec.seq_len, spec.flops_per_token_train, peak,
                                     context.world_size)
        self.step = 0  # optimizer steps done
        self.saved_step: int | None = None  # the step of the last checkpoint this process took part in
        self.totals = RunningTotals()
        resumed = checkpoint.load_for_resume(run_dir.path, spec.run_id, context, self.state_dict(),
                                             self.optimizer_state_templates(), sharded=self.sharded)
        self.logger = MetricsLogger(run_dir.path, run_id=spec.run_id, total_steps=spec.steps,
                                    logger=spec.logger, config=spec.to_dict(), enabled=context.is_main)
        if resumed is not None:
            try:
                self.load_state_dict(resumed)  # last: from here to the first step nothing draws random numbers
            except BaseException:
                self.logger.close()
                raise
            self.logger.log({"kind": "resume", "step": self.step})

    # ---- 2. the loop ----------------------------------------------------------------------------

    def train(self, at_step_boundary: Callable[[], None]) -> int | None:
        """Optimizer steps until ``spec.steps``; returns the step whose loss diverged, or None."""
        self.model.train()
        self.throughput.restart(self.step)
        if self.step in self.spec.fork_steps:  # resumed at a fork step: the hand-off may not have happened
            self.hand_off_fork()
        while self.step < self.spec.steps:
            step_start = time.perf_counter()
            report = self.train_step()
            if report is None:  # not finite: stopped before the update, the state as it was
                return self.step + 1
            self.step += 1
            self.totals.elapsed_s += time.perf_counter() - step_start
            self.totals.interval_loss_sum += report.loss
            self.totals.interval_steps += 1
            if self.step % self.spec.train.log_every_steps == 0 or self.step == self.spec.steps:
                self.log_step(report)
            self.evaluate_periodically()
            if self.step in self.spec.fork_steps:
                self.hand_off_fork()
            elif self.step % self.spec.train.checkpoint_every_steps == 0 and self.step < self.spec.steps:
                self.save_checkpoint()
            at_step_boundary()  # a preemption signal held during the step is handled here
        return None

    def train_step(self) -> StepReport | None:
        """One optimizer step on this rank's part of the next global batch; None (and
        no update) when the mean loss is not finite."""
        spec, context = self.spec, self.context
        learning_rate = learning_rate_at(self.step, spec)
        set_learning_rate(self.optimizers, learning_rate)
        batch = torch.from_numpy(self.data.train.next_batch(spec.batch_size, context.rank, context.world_size))
        batch = batch.to(context.device, dtype=torch.long)  # (per_rank, T + 1)
        step_loss = torch.zeros((), device=context.device)
        for micro_step in range(self.accumulation_steps):
            micro = batch[micro_step * self.micro_batch_size:(micro_step + 1) * self.micro_batch_size]
            inputs, targets = micro[:, :-1], micro[:, 1:]  # (b, T), (b, T)
            last = micro_step == self.accumulation_steps - 1
            with gradient_sync(self.forward_model, last or context.world_size == 1):
                with self.autocast():  # forward and loss only; backward runs outside autocast
                    logits = self.forward_model(inputs)  # (b, T, V)
                    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
                    loss = loss + self.model.auxiliary_loss()
                (loss / self.accumulation_steps).backward()
            step_loss += loss.detach() / self.accumulation_steps
        loss_value = float(context.all_reduce_mean(step_loss).item())
        if not math.isfinite(loss_value):
            return None
        if context.world_size > 1 and self.sparse_parameters:
            all_reduce_sparse_gradients(self.sparse_parameters, context.world_size)
        grad_norm = clip_gradients(self.trainable, spec.train.grad_clip)
        for optimizer in self.optimizers:
            optimizer.step()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        return StepReport(loss_value, learning_rate, grad_norm)

    def log_step(self, report: StepReport) -> None:
        """A metrics.jsonl line and the progress display, over the interval since the last one."""
        tokens_per_s, seconds_per_step = self.throughput.measure(self.step)
        mfu = self.throughput.utilization(tokens_per_s)
        interval_loss = self.totals.interval_loss_sum / self.totals.interval_steps
        self.totals.interval_loss_sum, self.totals.interval_steps = 0.0, 0
        self.totals.last_interval_loss = interval_loss
        tokens = self.step * self.throughput.tokens_per_step
        self.logger.log({"step": self.step, "tokens": tokens, "flops": tokens * self.spec.flops_per_token_train,
                         "loss": report.loss, "interval_loss": interval_loss, "lr": report.learning_rate,
                         "grad_norm": float(report.grad_norm.item()), "tokens_per_s": tokens_per_s, "mfu": mfu,
                         "elapsed_s": self.totals.elapsed_s})
        self.logger.progress(self.step, report.loss, tokens_per_s, mfu, seconds_per_step)
        self.throughput.restart(self.step)

    def evaluate_periodically(self) -> None:
        """Every ``spec.eval_every_steps`` steps: the validation loss as a ``kind: eval``
        line of metrics.jsonl, on rank 0 (every rank evaluates with FSDP, whose forward needs
        them all; no random number is drawn; training is unchanged)."""
        every = self.spec.eval_every_steps
        if every and self.step % every == 0 and self.step < self.spec.steps and (self.context.is_main
                                                                                  or self.sharded):
            loss = validation_loss(self.model, self.spec, self.data, self.context.device, self.autocast)
            if self.context.is_main:
                self.log_evaluation(loss)

    def log_evaluation(self, loss: float | None) -> None:
        """A ``kind: eval`` line: the validation loss (nats/token) after ``self.step`` steps."""
        tokens = self.step * self.throughput.tokens_per_step
        self.logger.log({"kind": "eval", "step": self.step, "tokens": tokens,
                         "flops": tokens * self.spec.flops_per_token_train, "validation_loss": loss})

    def hand_off_fork(self) -> None:
        """A trunk at one of its fork steps: checkpoint, then hand the checkpoint to the
        branches that fork here (:func:`isoflop.forks.hand_off`, rank 0)."""
        self.save_checkpoint()
        if self.context.is_main:
            forks.hand_off(self.spec, self.run_dir.path, self.step)

    # ---- 3. evaluation --------------------------------------------------------------------------

    def evaluate(self, completed: bool) -> tuple[dict[str, EvalScores], dict, list[str]]:
        """(scores by corpus, routing statistics, notes) of a completed run, on rank 0 (on every
        rank with FSDP, whose forward needs them all); empty otherwise. With periodic
        evaluation, the final validation loss is also an ``eval`` line of metrics.jsonl."""
        if not completed or not (self.context.is_main or self.sharded):
            return {}, {}, []
        evaluation = evaluate_all(self.model, self.spec, self.data, self.context.device, self.autocast)
        if self.spec.eval_every_steps and self.context.is_main:
            self.log_evaluation(evaluation[0]["validation"].loss)
        return evaluation

    # ---- 4. finish ------------------------------------------------------------------------------

    def finish(self, diverged_at_step: int | None,
               evaluation: tuple[dict[str, EvalScores], dict, list[str]]) -> RunResult:
        """The run's result, written to ``result.json`` by rank 0."""
        spec, costs = self.spec, self.spec.costs
        scores, routing, notes = evaluation
        tokens = self.step * self.throughput.tokens_per_step
        elapsed = self.totals.elapsed_s
        tokens_per_s = tokens / elapsed if elapsed > 0 else 0.0
        final_train_loss = self.totals.last_interval_loss if diverged_at_step is None else math.nan
        result = RunResult(
            run_id=spec.run_id, study=spec.study, method=spec.method, budget_flops=spec.budget_flops,
            status="completed" if diverged_at_step is None else "diverged", diverged_at_step=diverged_at_step,
            steps=self.step, tokens=tokens, realized_flops=tokens * spec.flops_per_token_train,
            flops_per_token_train=spec.flops_per_token_train,
            params=ParamCounts(total=costs.get("n_params_total"), active=costs.get("n_params_active"),
                               embedding=costs.get("n_params_embedding"),
                               non_embedding=costs.get("n_params_non_embedding"),
                               active_non_embedding=costs.get("n_params_active_non_embedding")),
            final_train_loss=final_train_loss if math.isfinite(final_train_loss) else None,
            eval=scores, routing=routing, wall_time_s=elapsed, tokens_per_s=tokens_per_s,
            mfu=self.throughput.utilization(tokens_per_s), code_version=code_version(),
            data=self.data.describe(), device=self.device_name, world_size=self.context.world_size,
            notes=tuple(notes))
        if self.context.is_main:
            result.write(self.run_dir.result_json)
            self.logger.summary({"final_train_loss": result.final_train_loss, "status": result.status})
        self.context.barrier()
        return result

    def close(self) -> None:
        self.logger.close()

    # ---- checkpoints ----------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Checkpoint after ``self.step`` steps, once per step (rank 0 writes; with FSDP every
        rank writes its shards; see :mod:`isoflop.checkpoint`)."""
        if self.saved_step == self.step:
            return
        checkpoint.save(self.run_dir.path, self.step, self.spec.run_id, self.state_dict(), self.context,
                        sharded=self.sharded)
        self.saved_step = self.step

    def step_boundary_handler(self, preemption: Preemption) -> Callable[[], None]:
        """What the loop calls between steps: hand held preemption signals on. With FSDP the
        ranks first agree whether any of them holds one, and all checkpoint together at that
        boundary (the save is collective; SLURM's handler runs on rank 0 only)."""
        if not self.sharded:
            return preemption.at_step_boundary

        def agree_then_hand_on() -> None:
            if self.context.any_rank(preemption.holds_signal()):
                self.save_checkpoint()
            preemption.at_step_boundary()

        return agree_then_hand_on

    def optimizer_state_templates(self) -> dict:
        """Per optimizer, the parameter that each state entry (by index) is shaped like: where
        a resumed checkpoint's optimizer moments are allocated (device and sharding)."""
        return {name: {"state": dict(enumerate(parameter for group in optimizer.param_groups
                                               for parameter in group["params"]))}
                for name, optimizer in (("dense_optimizer", self.dense_optimizer),
                                        ("sparse_optimizer", self.sparse_optimizer)) if optimizer is not None}

    def state_dict(self) -> dict:
        """Everything exact resume needs; the learning rate is a function of the step."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "dense_optimizer": self.dense_optimizer.state_dict(),
            "sparse_optimizer": self.sparse_optimizer.state_dict() if self.sparse_optimizer is not None else None,
            "scheduler": {"kind": self.spec.train.schedule, "step": self.step},
            "data": self.data.train.state_dict(),
            "rng": checkpoint.random_generator_states(),
            "totals": asdict(self.totals),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s ``state``; the random generators last."""
        self.model.load_state_dict(state["model"])
        self.dense_optimizer.load_state_dict(state["dense_optimizer"])
        if self.sparse_optimizer is not None and state["sparse_optimizer"] is not None:
            self.sparse_optimizer.load_state_dict(state["sparse_optimizer"])
        self.data.train.load_state_dict(state["data"])
        self.totals = RunningTotals(**state["totals"])
        self.step = int(state["step"])
        checkpoint.set_random_generator_states(state["rng"])


def micro_batching(batch_size: int, micro_batch_size: int, world_size: int) -> tuple[int, int]:
    """(sequences per micro-batch, micro-batches per step) of one rank
    (:func:`isoflop.planner.per_rank_micro_batch_size`, the rule the planner checks routing groups with)."""
    if batch_size % world_size:
        raise UserError(f"train.batch_size={batch_size} is not divisible by the {world_size} "
                        "processes; use a multiple of the process count")
    micro = per_rank_micro_batch_size(batch_size, micro_batch_size, world_size)
    return micro, batch_size // world_size // micro


def wrapped_for_training(model: torch.nn.Module, sparse_parameters: list[torch.nn.Parameter],
                         context: DistributedContext, compile_model: bool,
                         sharded: bool = False) -> torch.nn.Module:
    """The module the loop calls: with several processes DDP (the sparse tables left to
    :func:`all_reduce_sparse_gradients`) or, when ``sharded``, the model itself (sharded
    in place by :func:`isoflop.distributed.shard_for_training` before its optimizers
    were built), compiled if asked."""
    forward_model = model
    if context.world_size > 1 and not sharded:
        from torch.nn.parallel import DistributedDataParallel

        if sparse_parameters:
            sparse_ids = {id(parameter) for parameter in sparse_parameters}
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                model, [name for name, parameter in model.named_parameters() if id(parameter) in sparse_ids])
        forward_model = DistributedDataParallel(
            model, device_ids=[context.device] if context.device.type == "cuda" else None)
    return torch.compile(forward_model) if compile_model else forward_model


def autocast_for(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast for ``precision`` bf16 (or auto on CUDA), else none (fp32)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def seed_random_generators(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def code_version() -> str:
    """The git commit of the isoflop source tree, or the package version."""
    from isoflop import __version__

    source_root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source_root, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        return commit or __version__
    except (OSError, subprocess.SubprocessError):
        return __version__
