"""torch.distributed set-up from the environment a launcher leaves behind.

- torchrun (or any ``env://`` launcher): ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` are already set.
- a submitit job with several tasks (local or SLURM), or a bare ``srun`` with
  ``SLURM_NTASKS`` > 1: the variables are exported with
  ``submitit.helpers.TorchDistributedEnvironment`` (master = first host of the
  job, port derived from the job id).

One process (world size 1) needs no process group. Backend: NCCL when the
process has a CUDA device, gloo otherwise (the CPU tests use gloo).

Several processes share the model as ``train.parallelism`` says: DDP (the
trainer wraps the model) or FSDP2 (:func:`shard_for_training`); FSDP2 runs
on gloo/CPU as well as NCCL/CUDA in torch 2.13.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: global rank, local rank, world size, device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 writes metrics, checkpoints and the result."""
        return self.rank == 0

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of ``value`` over ranks (``value`` itself with one process)."""
        if self.world_size == 1:
            return value
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world_size

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def broadcast_from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if self.world_size == 1:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def all_ranks(self, condition: bool) -> bool:
        """Whether ``condition`` holds on every rank."""
        if self.world_size == 1:
            return condition
        flag = torch.tensor([1 if condition else 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def any_rank(self, condition: bool) -> bool:
        """Whether ``condition`` holds on some rank."""
        return not self.all_ranks(not condition)


def _export_job_environment() -> None:
    """Fill the env:// variables from a multi-task submitit job (local or SLURM) or srun."""
    if "RANK" in os.environ:
        return
    import submitit

    in_submitit_job = "SUBMITIT_EXECUTOR" in os.environ
    tasks = submitit.JobEnvironment().num_tasks if in_submitit_job else int(os.environ.get("SLURM_NTASKS", "1"))
    if tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def setup_distributed() -> DistributedContext:
    """Join the process group the environment describes (or run alone)."""
    _export_job_environment()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    initialized_here = False
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        initialized_here = True
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device,
                              initialized_here=initialized_here)


def teardown_distributed(context: DistributedContext) -> None:
    """Leave the process group if :func:`setup_distributed` joined it."""
    if context.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def gradient_sync(forward_model: torch.nn.Module, synchronize: bool) -> contextlib.AbstractContextManager:
    """The context of one micro-batch's backward: DDP skips its all-reduce when not
    ``synchronize`` (the gradients accumulate locally until the last micro-batch);
    FSDP and one process always reduce (FSDP keeps gradients sharded that way)."""
    if synchronize or not hasattr(forward_model, "no_sync"):
        return contextlib.nullcontext()
    return forward_model.no_sync()


def shard_for_training(model: torch.nn.Module) -> torch.nn.Module:
    """Shard ``model`` over the process group with FSDP2 (``fully_shard``), in place.

    Each transformer block is one FSDP unit (its parameters are gathered for its
    forward and backward, then freed), the rest (embedding, final norm, head) the
    root unit. Parameters, gradients and optimizer state are DTensors sharded on
    their first dimension, so a PEER/PKM table of N rows keeps N/W rows per rank.
    Returns ``model`` (FSDP2 changes the module's class, not its identity).
    """
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model
