"""Peak FLOP/s of accelerators, for MFU and for cost estimates.

MFU = achieved training FLOP/s (the accounting's FLOPs per token x tokens/s)
/ the device's peak. GPU peaks are dense (no 2:4 sparsity) bf16 tensor-core
numbers from the vendors' datasheets; on CPU the peak is measured: a short
fp32 matmul on this machine with torch's current thread count, cached per
process. Nothing assumes an A100.
"""

from __future__ import annotations

import time
from functools import lru_cache

from isoflop.errors import UserError

# Lower-case substring of the device name -> dense bf16 peak FLOP/s.
# Ordered so the more specific name matches first (e.g. "h100 pcie" before "h100").
ACCELERATOR_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("gb200", 2.5e15),        # NVIDIA GB200 (per B200 GPU), datasheet 2.5 PFLOP/s dense bf16
    ("b200", 2.25e15),        # NVIDIA HGX B200 datasheet, 2.25 PFLOP/s dense bf16
    ("gh200", 989.4e12),      # NVIDIA GH200 (H100/H200 GPU), 989.4 TFLOP/s dense bf16
    ("h200", 989.4e12),       # NVIDIA H200 SXM datasheet
    ("h100 pcie", 756.0e12),  # NVIDIA H100 PCIe datasheet
    ("h100 nvl", 835.0e12),   # NVIDIA H100 NVL datasheet
    ("h100", 989.4e12),       # NVIDIA H100 SXM5 datasheet (also "H100 80GB HBM3")
    ("h800", 989.4e12),       # NVIDIA H800 SXM
    ("a100", 312.0e12),       # NVIDIA A100 (SXM and PCIe) datasheet
    ("a800", 312.0e12),       # NVIDIA A800
    ("l40s", 362.05e12),      # NVIDIA L40S datasheet
    ("l40", 181.05e12),       # NVIDIA L40 datasheet
    ("l4", 121.0e12),         # NVIDIA L4 datasheet
    ("a10g", 70.0e12),        # NVIDIA A10G (AWS), 70 TFLOP/s dense bf16
    ("a10", 125.0e12),        # NVIDIA A10 datasheet
    ("a6000", 154.8e12),      # NVIDIA RTX A6000 (sparsity excluded: 309.7 / 2)
    ("rtx 4090", 165.2e12),   # GeForce RTX 4090 (fp16/bf16 tensor, fp32 accumulate: 165.2)
    ("rtx 3090", 71.0e12),    # GeForce RTX 3090
    ("v100", 125.0e12),       # NVIDIA V100 SXM2 (fp16 tensor cores; no bf16)
    ("t4", 65.0e12),          # NVIDIA T4 (fp16 tensor cores; no bf16)
    ("mi300x", 1307.4e12),    # AMD Instinct MI300X datasheet
    ("mi250x", 383.0e12),     # AMD Instinct MI250X datasheet
    ("mi250", 362.1e12),      # AMD Instinct MI250
)


def lookup_peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a device by (part of) its name, or None if unknown."""
    name = " ".join(device_name.lower().replace("-", " ").split())
    for key, peak in ACCELERATOR_PEAK_FLOPS:
        if key in name:
            return peak
    return None


@lru_cache(maxsize=None)
def measured_cpu_peak_flops(sizes: tuple[int, ...] = (256, 512, 1024), seconds_per_size: float = 0.15) -> float:
    """Best FLOP/s of fp32 (n x n) @ (n x n) matmuls on this CPU (2·n³ FLOPs each),
    over ``sizes`` and repeated timings of about ``seconds_per_size`` each; cached
    per process. The best rate is the estimate because other load on the
    machine only ever slows a timing down (it still may underestimate on a busy
    machine).

    The operands come from a private generator: the global random state is left
    as it was, so measuring (e.g. right after a checkpoint restored the state)
    never shifts a run's random numbers."""
    import torch

    generator = torch.Generator().manual_seed(0)
    best_rate = 0.0
    for size in sizes:
        left = torch.randn(size, size, generator=generator)
        right = torch.randn(size, size, generator=generator)
        torch.mm(left, right)  # warm-up
        deadline = time.perf_counter() + seconds_per_size
        while True:
            start = time.perf_counter()
            torch.mm(left, right)
            best_rate = max(best_rate, 2.0 * size ** 3 / max(1e-9, time.perf_counter() - start))
            if time.perf_counter() > deadline:
                break
    return best_rate


def current_device_name() -> str:
    """``cpu`` or the CUDA device's name (e.g. ``NVIDIA H100 80GB HBM3``)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return "cpu"


def peak_flops(accelerator: str | None) -> float:
    """Peak FLOP/s of ``accelerator``.

    Args:
        accelerator: a device name (``H100``, ``NVIDIA A100-SXM4-80GB``, ...),
            ``cpu`` or None (the measured CPU peak), or ``auto`` (this
            process's device: the CUDA device if there is one, else the CPU).

    Raises:
        UserError: for a name not in :data:`ACCELERATOR_PEAK_FLOPS`.
    """
    if accelerator in (None, "", "cpu"):
        return measured_cpu_peak_flops()
    if accelerator == "auto":
        return peak_flops(current_device_name())
    peak = lookup_peak_flops(accelerator)
    if peak is None:
        known = ", ".join(key for key, _ in ACCELERATOR_PEAK_FLOPS)
        raise UserError(f"accelerator {accelerator!r} has no known peak FLOP/s (known: {known}, cpu); "
                        "set cluster.peak_flops to its dense bf16 peak")
    return peak
