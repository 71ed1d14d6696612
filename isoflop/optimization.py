"""Optimizers, the learning-rate schedule and gradient clipping of a run.

AdamW (Loshchilov & Hutter 2019) on every dense parameter: weight decay on
matrices (dim >= 2), none on norms, biases and BatchNorm. With
``train.sparse_tables`` the PEER/PKM expert tables (``model.sparse_parameters()``)
get sparse COO gradients and :class:`torch.optim.SparseAdam`, which updates
only the rows a step touched (and applies no weight decay).

Optimizer-state memory of the PEER study's tables (He 2024: N = 1024² experts,
tables U and V of N x d each, so 2·N·d parameters; fp32 = 4 bytes each)::

    d      table params   params   + dense grads   + Adam m, v    total
    512    1.07e9         4.3 GB   4.3 GB          8.6 GB         17.2 GB
    1024   2.15e9         8.6 GB   8.6 GB          17.2 GB        34.4 GB
    2048   4.29e9         17.2 GB  17.2 GB         34.4 GB        68.7 GB

Dense AdamW triples the tables' memory (params + two moments), quadruples it
with the dense gradient. SparseAdam keeps the same dense moments (it allocates
exp_avg and exp_avg_sq like the parameter) but its gradient holds only the
touched rows (at most micro-batch tokens x heads x top-k rows, and at most N)
and each step reads and writes only those rows, so the saving is the gradient
and the per-step update bandwidth, not the moments. GLU experts add a third
table (x 1.5 everywhere).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from isoflop.run_spec import RunSpec


def build_optimizers(model: nn.Module, spec: RunSpec) -> tuple[torch.optim.Optimizer,
                                                                torch.optim.Optimizer | None]:
    """(AdamW on the dense parameters, SparseAdam on the sparse tables or None)."""
    train = spec.train
    sparse = list(model.sparse_parameters()) if train.sparse_tables else []
    sparse_ids = {id(parameter) for parameter in sparse}
    decay, no_decay = [], []
    for parameter in model.parameters():
        if not parameter.requires_grad or id(parameter) in sparse_ids:
            continue
        (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    dense_optimizer = torch.optim.AdamW(groups, lr=spec.learning_rate, betas=(train.beta1, train.beta2),
                                        eps=1e-8)
    sparse_optimizer = (torch.optim.SparseAdam(sparse, lr=spec.learning_rate,
                                               betas=(train.beta1, train.beta2), eps=1e-8)
                        if sparse else None)
    return dense_optimizer, sparse_optimizer


def learning_rate_at(step: int, spec: RunSpec) -> float:
    """Learning rate of optimizer step ``step`` (0-based): a pure function of the step and the spec.

    Both schedules start with a linear warm-up over ``spec.warmup_steps`` to the
    peak ``spec.learning_rate``. Then ``train.schedule``:

    - ``cosine``: cosine decay to ``min_lr_fraction`` x peak at the last step
      (Loshchilov & Hutter 2017, without restarts).
    - ``wsd`` (warmup-stable-decay; Hägele et al. 2024, "Scaling Laws and
      Compute-Optimal Training Beyond Fixed Training Durations"): the peak until
      ``spec.cooldown_start_step``, then a cooldown over the remaining steps to
      ``min_lr_fraction`` x peak at the last step, shaped by ``train.cooldown_shape``
      (:func:`cooldown_factor`). A trunk has no cooldown (``cooldown_start_step``
      None): the peak to its end, so up to its fork step a branch's rate equals its trunk's.
    """
    peak, warmup = spec.learning_rate, spec.warmup_steps
    if step < warmup:
        return peak * (step + 1) / warmup
    floor = spec.train.min_lr_fraction
    if spec.train.schedule == "wsd":
        start = spec.cooldown_start_step
        if start is None or step < start:
            return peak
        progress = min(1.0, (step - start + 1) / max(1, spec.steps - start))
        return peak * (floor + (1.0 - floor) * cooldown_factor(progress, spec.train.cooldown_shape))
    progress = min(1.0, (step - warmup) / max(1, spec.steps - warmup - 1))
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def cooldown_factor(progress: float, shape: str) -> float:
    """Share of the way from the floor to the peak left at cooldown ``progress`` in (0, 1]:
    ``1-sqrt``: 1 - sqrt(progress), the cooldown Hägele et al. 2024 introduce and
    find better than a linear one of equal length; ``linear``: 1 - progress. Each reaches 0 (the floor) at
    progress 1, the cooldown's last step."""
    return 1.0 - math.sqrt(progress) if shape == "1-sqrt" else 1.0 - progress


def set_learning_rate(optimizers: list[torch.optim.Optimizer | None], learning_rate: float) -> None:
    for optimizer in optimizers:
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate


def clip_gradients(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale all gradients (dense and sparse) so their joint L2 norm is at most
    ``max_norm`` (no clipping when ``max_norm`` <= 0); returns the norm before,
    a float32 scalar tensor left on the device (no host sync; read it only when needed)."""
    squares = []
    for parameter in parameters:
        gradient = parameter.grad
        if gradient is None:
            continue
        if gradient.is_sparse:
            gradient = gradient.coalesce()
            parameter.grad = gradient
            squares.append(gradient.values().float().pow(2).sum())
        else:
            squares.append(gradient.float().pow(2).sum())
    if not squares:
        return torch.zeros(())
    total_norm = torch.stack(squares).sum().sqrt()
    if max_norm > 0:
        scale = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
        for parameter in parameters:
            if parameter.grad is not None:
                if parameter.grad.is_sparse:
                    parameter.grad = parameter.grad * scale.to(parameter.grad.dtype)
                else:
                    parameter.grad.mul_(scale.to(parameter.grad.dtype))
    return total_norm


def all_reduce_sparse_gradients(parameters: list[nn.Parameter], world_size: int) -> None:
    """Average sparse (row) gradients over ranks by gathering every rank's
    touched rows (DDP's NCCL path does not reduce sparse gradients, so the
    sparse tables stay outside DDP). Rows touched on several ranks are summed
    by coalescing; the result is divided by the world size like DDP's mean."""
    import torch.distributed as dist

    for parameter in parameters:
        gradient = parameter.grad
        if gradient is None:
            gradient = torch.sparse_coo_tensor(torch.empty(1, 0, dtype=torch.long, device=parameter.device),
                                               torch.empty(0, *parameter.shape[1:], device=parameter.device),
                                               parameter.shape)
        gradient = gradient.coalesce()
        indices, values = gradient.indices()[0], gradient.values()  # (nnz,), (nnz, d)
        gathered_counts = [torch.zeros(1, dtype=torch.long, device=indices.device) for _ in range(world_size)]
        dist.all_gather(gathered_counts, torch.tensor([indices.numel()], device=indices.device))
        counts: list[int] = torch.cat(gathered_counts).tolist()  # rows per rank, one host sync
        longest = max(counts)
        padded_indices = torch.zeros(longest, dtype=torch.long, device=indices.device)
        padded_values = torch.zeros(longest, *values.shape[1:], dtype=values.dtype, device=values.device)
        padded_indices[:indices.numel()] = indices
        padded_values[:indices.numel()] = values
        gathered_indices = [torch.empty_like(padded_indices) for _ in range(world_size)]
        gathered_values = [torch.empty_like(padded_values) for _ in range(world_size)]
        dist.all_gather(gathered_indices, padded_indices)
        dist.all_gather(gathered_values, padded_values)
        all_indices = torch.cat([part[:count] for part, count in zip(gathered_indices, counts)])
        all_values = torch.cat([part[:count] for part, count in zip(gathered_values, counts)])
        parameter.grad = torch.sparse_coo_tensor(all_indices.unsqueeze(0), all_values / world_size,
                                                 parameter.shape).coalesce()
