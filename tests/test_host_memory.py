"""Tensors on huge pages fault in 2 MiB at a time (counted in minor page faults, not time)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.host_memory import empty_on_huge_pages

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
PAGES = 64 * 2**20 // 4096  # 4 KiB pages in 64 MiB


FAULTS_SCRIPT = """
import resource, sys, torch
from kernels.host_memory import empty_on_huge_pages, keep_freed_memory

def faults_to_fill(make):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    make().fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def faults_of_steps():  # 20 steps, each making and freeing three 64 MiB tensors
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        first, second = torch.ones(16 * 2**20), torch.ones(16 * 2**20)
        total = first + second
        del first, second, total
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

if sys.argv[1] == "steps":
    print(faults_of_steps())
elif sys.argv[1] == "steps-kept":
    assert keep_freed_memory()
    print(faults_of_steps())
else:
    print(faults_to_fill(lambda: torch.empty(16 * 2**20)), faults_to_fill(lambda: empty_on_huge_pages(16 * 2**20)))
"""

needs_huge_pages = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not THP_SETTING.exists() or "[never]" in THP_SETTING.read_text(),
    reason="needs Linux transparent huge pages")


def faults_in_fresh_process(mode: str) -> list[int]:
    """Minor page faults counted by FAULTS_SCRIPT in a new process (this one's malloc has been
    through earlier tests, perhaps with :func:`keep_freed_memory`)."""
    environment = {name: value for name, value in os.environ.items() if name != "THP_MEM_ALLOC_ENABLE"}
    output = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True,
                            check=True, env=environment).stdout
    return [int(count) for count in output.split()]


@needs_huge_pages
def test_a_fresh_64_mib_tensor_on_huge_pages_faults_in_2_mib_pages() -> None:
    plain, huge = faults_in_fresh_process("fresh")
    assert plain > PAGES // 2, "glibc maps 64 MiB afresh, 4 KiB a time"
    assert huge < PAGES // 16


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_freed_memory_is_reused_instead_of_faulted_in_every_step() -> None:
    (plain,) = faults_in_fresh_process("steps")
    (kept,) = faults_in_fresh_process("steps-kept")
    assert plain > 40 * PAGES  # 60 fresh mappings of 64 MiB
    assert kept < plain / 4  # measured: 8-9 x 64 MiB while the heap grows to its working size, then none


def test_small_and_non_cpu_tensors_are_plain_empty_tensors() -> None:
    small = empty_on_huge_pages(3, 5, dtype=torch.float64)
    assert small.shape == (3, 5) and small.dtype == torch.float64
    assert empty_on_huge_pages(2, device="meta").device.type == "meta"
