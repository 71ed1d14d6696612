"""CPU tensors of tens of MiB, made every step, that fault in 2 MiB at a time.

glibc's malloc gives every block above its mmap threshold (at most 32 MiB) a
fresh ``mmap`` and unmaps it when freed, so a tensor that size made in every
step is faulted in again, one 4 KiB page at a time, in every step: about 25 ms
per 64 MiB on one core of the 2-core test machine, several times the work done
with it. A PEER layer's table gradients are (N, d) each (64 MiB at N = 256²,
d = 256). Advising the kernel to back such a block with transparent huge pages
(``madvise(MADV_HUGEPAGE)``) before it is first written makes that 32 faults of
2 MiB: the same 64 MiB allocated and filled in 4.7 ms instead of 28 ms (one
thread). PyTorch does this for every allocation of 2 MiB or more when the
process starts with ``THP_MEM_ALLOC_ENABLE=1``; :func:`empty_on_huge_pages`
does it for one tensor, whatever the environment.

The advice changes nothing but page size; where the system offers no
transparent huge pages (not Linux, or THP set to "never") the tensor is what
``torch.empty`` gives.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Callable

import torch

HUGE_PAGE_BYTES = 2 * 2**20
MADV_HUGEPAGE = 14  # <sys/mman.h>, Linux


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """libc's ``madvise``, or None where there is none to call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def empty_on_huge_pages(*shape: int, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """``torch.empty(shape)`` with its whole 2 MiB pages advised to be transparent huge pages.

    Only the huge pages lying wholly inside a CPU tensor are advised; a tensor smaller than
    that, or on another device, is returned as ``torch.empty`` gives it. Write it only after.
    """
    tensor = torch.empty(*shape, dtype=dtype, device=device)
    madvise = _madvise() if tensor.device.type == "cpu" else None
    if madvise is not None:
        start = tensor.data_ptr()
        first = -(-start // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
        last = (start + tensor.numel() * tensor.element_size()) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
        if last > first:
            madvise(first, last - first, MADV_HUGEPAGE)  # advice: a refusal leaves ordinary pages
    return tensor


M_TRIM_THRESHOLD = -1  # <malloc.h> mallopt parameters, glibc
M_MMAP_THRESHOLD = -3
KEPT_BYTES = 2**30


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks of up to 1 GiB for reuse instead of unmapping them.

    A training step makes and frees the same large tensors every step (a PEER layer's table
    gradients, its query-sized buffers). Above malloc's mmap threshold each is a fresh mapping,
    faulted in again every step (see the module docstring); with the threshold and the trim
    threshold at 1 GiB, freed blocks stay in the heap, which grows to a step's working size and
    is then reused, already mapped (a single block is not always reused at once: small
    allocations can split it). Measured: 20 steps each making three 64 MiB tensors fault in
    60 x 64 MiB before and 8–9 x 64 MiB after (tests/test_host_memory.py); a PEER layer's
    forward+backward at d = 256, N = 256², 2048 tokens on the 2-core test machine: 192–205 ms
    before, 176–185 ms after, with a smaller spread between repeated steps. Results are
    unchanged (only where memory comes from changes); a process keeps up to 1 GiB of freed
    memory. Call it once, early; returns whether glibc took both settings (False elsewhere,
    e.g. macOS or musl, where nothing changes).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, KEPT_BYTES)) & bool(mallopt(M_TRIM_THRESHOLD, KEPT_BYTES))
