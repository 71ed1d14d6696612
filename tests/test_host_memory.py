"""Tensors on huge pages fault in 2 MiB at a time (counted in minor page faults, not time)."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

import pytest
import torch

from kernels.host_memory import empty_on_huge_pages

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
PAGES = 64 * 2**20 // 4096  # 4 KiB pages in 64 MiB


def faults_to_fill(make: object) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    make().fill_(1.0)  # type: ignore[operator]
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not sys.platform.startswith("linux") or not THP_SETTING.exists()
                    or "[never]" in THP_SETTING.read_text(), reason="needs Linux transparent huge pages")
def test_a_fresh_64_mib_tensor_on_huge_pages_faults_in_2_mib_pages() -> None:
    if not os.environ.get("THP_MEM_ALLOC_ENABLE"):  # else PyTorch advises every large tensor itself
        assert faults_to_fill(lambda: torch.empty(16 * 2**20)) > PAGES // 2, "glibc maps 64 MiB afresh, 4 KiB a time"
    assert faults_to_fill(lambda: empty_on_huge_pages(16 * 2**20)) < PAGES // 16


def test_small_and_non_cpu_tensors_are_plain_empty_tensors() -> None:
    small = empty_on_huge_pages(3, 5, dtype=torch.float64)
    assert small.shape == (3, 5) and small.dtype == torch.float64
    assert empty_on_huge_pages(2, device="meta").device.type == "meta"
