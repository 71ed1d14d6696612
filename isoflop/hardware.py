"""Peak FLOP/s of accelerators, for MFU and for cost estimates.

MFU = achieved training FLOP/s (the accounting's FLOPs per token x tokens/s)
/ the device's peak. GPU peaks are dense (no 2:4 sparsity) bf16 tensor-core
numbers from the vendors' datasheets; on CPU the peak is measured: a short
fp32 matmul on this machine with torch's current thread count
(:func:`measured_cpu_peak_flops`), once per machine (:func:`cpu_peak_flops`).
Nothing assumes an A100.
"""

from __future__ import annotations

import json
import platform
import time
from functools import lru_cache
from pathlib import Path

from isoflop.atomic_files import write_atomic
from isoflop.errors import UserError

CPU_PEAK_FILE = "cpu_peak_flops.json"

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


@lru_cache(maxsize=None)
def cpu_peak_flops() -> float:
    """This machine's CPU peak FLOP/s for MFU: :func:`measured_cpu_peak_flops`, measured once per
    machine and kept in ``cpu_peak_flops.json`` of the cache folder (:mod:`isoflop.token_cache`:
    ``$ISOFLOP_CACHE_DIR`` or ``~/.cache/isoflop``), keyed by host, CPU model, torch version and
    thread count. So every run of a study on one machine divides by the same number, and no run
    after the first spends its ~0.5 s measuring (a `tiny` study's 46 runs each did). Delete the
    file to measure again. With the cache off (``ISOFLOP_CACHE_DIR=off``), an unreadable file or an
    unwritable folder, it is measured per process as before."""
    import torch

    from isoflop.token_cache import cache_root

    key = "|".join((platform.node(), _cpu_model(), torch.__version__, f"threads={torch.get_num_threads()}"))
    root = cache_root()
    path = root / CPU_PEAK_FILE if root is not None else None
    known: dict[str, float] = {}
    if path is not None:
        try:
            loaded = json.loads(path.read_text())
            known = {name: float(value) for name, value in loaded.items() if float(value) > 0}
        except (OSError, ValueError, TypeError, AttributeError):
            known = {}  # missing or corrupt: measured and written again below
    if key in known:
        return known[key]
    peak = measured_cpu_peak_flops()
    if path is not None:
        try:
            write_atomic(path, json.dumps({**known, key: peak}, indent=1, sort_keys=True) + "\n")
        except OSError:
            pass
    return peak


def _cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
            ``cpu`` or None (the measured CPU peak, :func:`cpu_peak_flops`), or ``auto`` (this
            process's device: the CUDA device if there is one, else the CPU).

    Raises:
        UserError: for a name not in :data:`ACCELERATOR_PEAK_FLOPS`.
    """
    if accelerator in (None, "", "cpu"):
        return cpu_peak_flops()
    if accelerator == "auto":
        return peak_flops(current_device_name())
    peak = lookup_peak_flops(accelerator)
    if peak is None:
        known = ", ".join(key for key, _ in ACCELERATOR_PEAK_FLOPS)
        raise UserError(f"accelerator {accelerator!r} has no known peak FLOP/s (known: {known}, cpu); "
                        "set cluster.peak_flops to its dense bf16 peak")
    return peak
