"""The training loop: one RunSpec in, ``result.json`` out. Read it top to bottom.

``run(spec, run_dir)`` trains the run described by ``spec`` (resuming from
``run_dir/checkpoints/`` when a good checkpoint is there), logs to
``run_dir/metrics.jsonl``, evaluates on the held-out split and every
configured evaluation corpus, and writes ``run_dir/result.json`` atomically.
It depends on nothing but its arguments (no Hydra, no working directory).

Global batch = ``spec.batch_size`` sequences of ``spec.seq_len`` tokens per
optimizer step. With W processes (torch.distributed DDP, set up from the
environment by :mod:`isoflop.distributed`) each rank takes batch/W sequences,
split into micro-batches of at most ``spec.micro_batch_size`` and accumulated.

Preemption: the submission code calls :func:`checkpoint_active_run` from
submitit's ``checkpoint()``, i.e. inside the SIGUSR2/SIGTERM (or SIGUSR1)
handler, then requeues the job and exits. So that the handler only ever sees a
consistent state, those signals are blocked (``signal.pthread_sigmask``) from
the start of :func:`run` and unblocked only between optimizer steps (and
during the final evaluation): a signal that arrives mid-step waits, pending,
until the step has finished. Threads started while the signals are blocked
inherit the mask, so the signals reach the main thread. A thread that existed
before (e.g. torch's intra-op pool, created by earlier work in the same
process) may still take the signal and Python then runs the handler in the
main thread mid-step; for that case each step starts by snapshotting the small
part of the state the step changes before its update (data position, RNG
states, model buffers such as BatchNorm statistics, running totals), and a
checkpoint taken mid-step saves the state at the start of the step: the
parameters and optimizer states change only in the update at the step's end.
Only a signal handled during that update is declined (returns False; the last
periodic checkpoint is used).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from isoflop import checkpoint
from isoflop.data import TrainingData, load_training_data
from isoflop.distributed import DistributedContext, setup_distributed, teardown_distributed
from isoflop.errors import UserError
from isoflop.evaluation import evaluate_all
from isoflop.hardware import current_device_name, lookup_peak_flops, measured_cpu_peak_flops
from isoflop.metrics_log import MetricsLogger, finite_or_null
from isoflop.optimization import (
    all_reduce_sparse_gradients, build_optimizers, clip_gradients, learning_rate_at, set_learning_rate,
)
from isoflop.planner import per_rank_micro_batch_size
from isoflop.run_spec import RunSpec
from isoflop.sweep_dir import read_json, write_atomic

PREEMPTION_SIGNALS = {signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM}


@dataclass
class TrainingState:
    """Everything a checkpoint holds, and what :func:`checkpoint_active_run` saves."""

    spec: RunSpec
    run_dir: Path
    context: DistributedContext
    model: torch.nn.Module  # the bare TransformerLM (not DDP, not compiled)
    dense_optimizer: torch.optim.Optimizer
    sparse_optimizer: torch.optim.Optimizer | None
    data: TrainingData
    step: int = 0  # optimizer steps done
    totals: dict = field(default_factory=lambda: {"elapsed_s": 0.0, "interval_loss_sum": 0.0,
                                                  "interval_steps": 0, "last_interval_loss": math.nan})
    in_step: bool = False  # between the start of a step and its update's end
    in_update: bool = False  # parameters/optimizer states being changed
    step_start_snapshot: dict = field(default_factory=dict)

    def snapshot(self) -> None:
        """What a mid-step checkpoint needs of the state at the start of this step."""
        self.step_start_snapshot = {
            "data": self.data.train.state_dict(), "rng": rng_states(), "totals": dict(self.totals),
            "buffers": {name: buffer.detach().clone() for name, buffer in self.model.named_buffers()}}


_ACTIVE: TrainingState | None = None


def checkpoint_active_run() -> bool:
    """Save a checkpoint of the run training in this process, synchronously.

    Returns False when no run is active (or, rarely, when called in the middle
    of an optimizer step, whose state would be inconsistent). Other ranks than
    0 return True without writing: rank 0's state is the same.
    """
    state = _ACTIVE
    if state is None:
        return False
    if state.in_update:
        print("isoflop train: warning: checkpoint requested during a parameter update; keeping the last "
              "periodic one", flush=True)
        return False
    if state.context.is_main:
        save_checkpoint(state)
    return True


def rng_states() -> dict:
    """Python, numpy, torch CPU and CUDA random states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def save_checkpoint(state: TrainingState) -> Path:
    """Checkpoint after ``state.step`` steps (see :mod:`isoflop.checkpoint`); called
    mid-step, it saves the state at the start of the step (module docstring)."""
    model_state = state.model.state_dict()
    if state.in_step:
        snapshot = state.step_start_snapshot
        model_state.update({name: snapshot["buffers"][name] for name in snapshot["buffers"]
                            if name in model_state})
        data_state, rng, totals = snapshot["data"], snapshot["rng"], snapshot["totals"]
    else:
        data_state, rng, totals = state.data.train.state_dict(), rng_states(), dict(state.totals)
    payload = {
        "step": state.step,
        "model": model_state,
        "dense_optimizer": state.dense_optimizer.state_dict(),
        "sparse_optimizer": state.sparse_optimizer.state_dict() if state.sparse_optimizer else None,
        "scheduler": {"kind": "warmup_cosine", "step": state.step},  # the lr is a function of the step
        "data": data_state,
        "rng": rng,
        "totals": totals,
    }
    return checkpoint.save(state.run_dir, state.step, state.spec.run_id, payload)


def restore_checkpoint(state: TrainingState, payload: dict) -> None:
    state.model.load_state_dict(payload["model"])
    state.dense_optimizer.load_state_dict(payload["dense_optimizer"])
    if state.sparse_optimizer is not None and payload["sparse_optimizer"] is not None:
        state.sparse_optimizer.load_state_dict(payload["sparse_optimizer"])
    state.data.train.load_state_dict(payload["data"])
    random.setstate(payload["rng"]["python"])
    np.random.set_state(payload["rng"]["numpy"])
    torch.set_rng_state(payload["rng"]["torch"])
    if payload["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    state.totals = dict(payload["totals"])
    state.step = int(payload["step"])


def load_resume_checkpoint(run_dir: Path, run_id: str, context: DistributedContext) -> dict | None:
    """The newest good checkpoint of the run (see :func:`isoflop.checkpoint.load_latest`), or None.

    The main rank reads first and is the only one to tidy the folder (leftover
    ``.tmp`` folders, corrupt checkpoints set aside); the other ranks read after
    a barrier, so no rank sees a folder another one is renaming. The barrier is
    passed even when the main rank fails, so the others fail too instead of waiting.
    """
    if not context.is_main:
        context.barrier()
        return checkpoint.load_latest(run_dir, run_id, map_location=context.device, clean_up=False)
    try:
        return checkpoint.load_latest(run_dir, run_id, map_location=context.device)
    finally:
        context.barrier()


def _set_signals_blocked(blocked: bool) -> set[signal.Signals] | None:
    """Block (or unblock) the preemption signals in the main thread; returns the
    previous signal mask, or None where nothing was changed (another thread, or
    no ``pthread_sigmask`` on this platform)."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_sigmask"):
        return signal.pthread_sigmask(signal.SIG_BLOCK if blocked else signal.SIG_UNBLOCK, PREEMPTION_SIGNALS)
    return None


def run(spec: RunSpec, run_dir: str | Path) -> dict:
    """Train ``spec`` in ``run_dir`` (resuming if possible); return the result dict."""
    global _ACTIVE
    run_dir = Path(run_dir).resolve()
    existing = read_json(run_dir / "result.json")
    if existing is not None and existing.get("status") == "completed":
        return existing
    run_dir.mkdir(parents=True, exist_ok=True)
    previous_mask = _set_signals_blocked(True)
    context = setup_distributed()
    logger = None
    try:
        # ---- data, model, optimizers -------------------------------------------------------
        random.seed(spec.seed)
        np.random.seed(spec.seed)
        torch.manual_seed(spec.seed)
        world_size, batch_size, seq_len = context.world_size, spec.batch_size, spec.seq_len
        if batch_size % world_size:
            raise UserError(f"train.batch_size={batch_size} is not divisible by the {world_size} "
                            "processes; use a multiple of the process count")
        per_rank = batch_size // world_size  # sequences per rank per step
        micro_batch = per_rank_micro_batch_size(batch_size, spec.micro_batch_size, world_size)
        accumulation = per_rank // micro_batch
        data = load_training_data(spec.data, seq_len, spec.seed, spec.tokens)
        from models import build_model

        model = build_model(spec.model, device=context.device, sparse_tables=spec.train.sparse_tables)
        dense_optimizer, sparse_optimizer = build_optimizers(model, spec)
        optimizers = [dense_optimizer] + ([sparse_optimizer] if sparse_optimizer is not None else [])
        state = TrainingState(spec, run_dir, context, model, dense_optimizer, sparse_optimizer, data)
        resumed = load_resume_checkpoint(run_dir, spec.run_id, context)
        if resumed is not None:
            restore_checkpoint(state, resumed)
        sparse_parameters = list(model.sparse_parameters()) if spec.train.sparse_tables else []
        forward_model: torch.nn.Module = model
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            if sparse_parameters:  # reduced by hand (all_reduce_sparse_gradients)
                sparse_ids = {id(parameter) for parameter in sparse_parameters}
                DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                    model, [name for name, parameter in model.named_parameters() if id(parameter) in sparse_ids])
            forward_model = DistributedDataParallel(
                model, device_ids=[context.device] if context.device.type == "cuda" else None)
        if spec.train.compile:
            forward_model = torch.compile(forward_model)
        use_bf16 = spec.train.precision == "bf16" or (spec.train.precision == "auto"
                                                       and context.device.type == "cuda")
        autocast = (lambda: torch.autocast(context.device.type, dtype=torch.bfloat16)) if use_bf16 \
            else contextlib.nullcontext
        parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]

        # ---- logging and MFU ---------------------------------------------------------------
        device_name = current_device_name()  # setup_distributed made context.device the current one
        peak = measured_cpu_peak_flops() if device_name == "cpu" else lookup_peak_flops(device_name)
        logger = MetricsLogger(run_dir, run_id=spec.run_id, total_steps=spec.steps, logger=spec.logger,
                               config=spec.to_dict(), enabled=context.is_main)
        if resumed is not None:
            logger.log({"kind": "resume", "step": state.step})
        tokens_per_step = batch_size * seq_len
        flops_per_token = spec.flops_per_token_train

        def model_flops_utilization(tokens_per_s: float) -> float | None:
            """Achieved training FLOP/s over the peak of all ``world_size`` devices (None: unknown peak)."""
            return flops_per_token * tokens_per_s / (peak * world_size) if peak else None

        status, diverged_at_step = "completed", None
        _ACTIVE = state

        # ---- the loop ----------------------------------------------------------------------
        model.train()
        interval_start, interval_first_step = time.perf_counter(), state.step
        while state.step < spec.steps:
            _set_signals_blocked(True)
            state.snapshot()
            state.in_step = True
            step_start = time.perf_counter()
            learning_rate = learning_rate_at(state.step, spec)
            set_learning_rate(optimizers, learning_rate)
            batch = torch.from_numpy(data.train.next_batch(batch_size, context.rank, world_size))
            batch = batch.to(context.device, dtype=torch.long)  # (per_rank, T + 1)
            step_loss = torch.zeros((), device=context.device)
            for micro_step in range(accumulation):
                micro = batch[micro_step * micro_batch:(micro_step + 1) * micro_batch]
                inputs, targets = micro[:, :-1], micro[:, 1:]  # (b, T), (b, T)
                last = micro_step == accumulation - 1
                sync = contextlib.nullcontext() if (last or world_size == 1) else forward_model.no_sync()
                with sync:
                    with autocast():  # forward and loss only; backward runs outside autocast
                        logits = forward_model(inputs)  # (b, T, V)
                        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
                        loss = loss + model.auxiliary_loss()
                    (loss / accumulation).backward()
                step_loss += loss.detach() / accumulation
            step_loss = context.all_reduce_mean(step_loss)
            loss_value = float(step_loss.item())
            if not math.isfinite(loss_value):  # stop before the update; the state stays as it was
                status, diverged_at_step = "diverged", state.step + 1
                state.in_step = False
                break
            if world_size > 1 and sparse_parameters:
                all_reduce_sparse_gradients(sparse_parameters, world_size)
            state.in_update = True
            grad_norm = clip_gradients(parameters, spec.train.grad_clip)  # a device tensor: read when logged
            for optimizer in optimizers:
                optimizer.step()
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.totals["elapsed_s"] += time.perf_counter() - step_start
            state.totals["interval_loss_sum"] += loss_value
            state.totals["interval_steps"] += 1
            state.in_step = state.in_update = False

            if state.step % spec.train.log_every_steps == 0 or state.step == spec.steps:
                seconds = max(1e-9, time.perf_counter() - interval_start)
                tokens_per_s = (state.step - interval_first_step) * tokens_per_step / seconds
                mfu = model_flops_utilization(tokens_per_s)
                interval_loss = state.totals["interval_loss_sum"] / state.totals["interval_steps"]
                state.totals.update(interval_loss_sum=0.0, interval_steps=0, last_interval_loss=interval_loss)
                logger.log({"step": state.step, "tokens": state.step * tokens_per_step,
                            "flops": state.step * tokens_per_step * flops_per_token, "loss": loss_value,
                            "interval_loss": interval_loss, "lr": learning_rate,
                            "grad_norm": float(grad_norm.item()),
                            "tokens_per_s": tokens_per_s, "mfu": mfu,
                            "elapsed_s": state.totals["elapsed_s"]})
                logger.progress(state.step, loss_value, tokens_per_s,
                                mfu, seconds / max(1, state.step - interval_first_step))
                interval_start, interval_first_step = time.perf_counter(), state.step
            if state.step % spec.train.checkpoint_every_steps == 0 and state.step < spec.steps \
                    and context.is_main:
                save_checkpoint(state)
            _set_signals_blocked(False)  # a pending preemption signal is handled here, between steps

        # ---- evaluation and result ---------------------------------------------------------
        _set_signals_blocked(False)
        evaluation, routing, eval_notes = ({}, {}, [])
        if status == "completed" and context.is_main:
            evaluation, routing, eval_notes = evaluate_all(model, spec, data, context.device, autocast)
        elapsed = state.totals["elapsed_s"]
        trained_tokens = state.step * tokens_per_step
        tokens_per_s = trained_tokens / elapsed if elapsed > 0 else 0.0
        costs = spec.costs
        result = {
            "run_id": spec.run_id, "study": spec.study, "method": spec.method,
            "budget_flops": spec.budget_flops, "status": status, "diverged_at_step": diverged_at_step,
            "steps": state.step, "tokens": trained_tokens,
            "realized_flops": trained_tokens * flops_per_token, "flops_per_token_train": flops_per_token,
            "params": {"total": costs.get("n_params_total"), "active": costs.get("n_params_active"),
                       "embedding": costs.get("n_params_embedding"),
                       "non_embedding": costs.get("n_params_non_embedding"),
                       "active_non_embedding": costs.get("n_params_active_non_embedding")},
            "final_train_loss": state.totals["last_interval_loss"] if status == "completed" else None,
            "eval": evaluation, "routing": routing, "wall_time_s": elapsed, "tokens_per_s": tokens_per_s,
            "mfu": model_flops_utilization(tokens_per_s),
            "code_version": code_version(), "data": data.describe(), "device": device_name,
            "world_size": world_size, "notes": eval_notes,
        }
        if context.is_main:
            write_result(run_dir, result)
            logger.summary({"final_train_loss": result["final_train_loss"], "status": status})
        context.barrier()
        return result
    finally:
        _ACTIVE = None
        if logger is not None:
            logger.close()
        teardown_distributed(context)
        if previous_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def write_result(run_dir: Path, result: dict) -> None:
    """``result.json`` atomically (:func:`isoflop.sweep_dir.write_atomic`), NaN/inf as null."""
    write_atomic(run_dir / "result.json", json.dumps(finite_or_null(result), indent=2, allow_nan=False))


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
