"""torch.distributed set-up from the environment a launcher leaves behind.

- torchrun (or any ``env://`` launcher): ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` are already set.
- submitit / SLURM with several tasks: ``SLURM_NTASKS`` > 1; the variables are
  exported with ``submitit.helpers.TorchDistributedEnvironment`` (master =
  first host of the job, port derived from the job id).

One process (world size 1) needs no process group. Backend: NCCL when the
process has a CUDA device, gloo otherwise (the CPU tests use gloo).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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


def _export_slurm_environment() -> None:
    """Fill the env:// variables from a multi-task submitit/SLURM job."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def setup_distributed() -> DistributedContext:
    """Join the process group the environment describes (or run alone)."""
    _export_slurm_environment()
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
