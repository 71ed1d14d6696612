"""CVMM kernels: Triton (TRITON_INTERPRET=1 on CPU) and PyTorch paths vs the reference."""

from __future__ import annotations

import pytest
import torch
from kernel_support import (  # sets TRITON_INTERPRET
    BACKENDS, DEVICE, HAS_CUDA, TOLERANCE, assert_close, grads_of, to_bf16,
)
from torch.utils.flop_counter import FlopCounterMode

import kernels


def make_index(rows: int, experts: int, used: list[int] | None, generator: torch.Generator) -> torch.Tensor:
    """(rows,) unsorted expert ids drawn from `used` (default: all experts)."""
    pool = torch.tensor(used if used is not None else list(range(experts)))
    return pool[torch.randint(0, len(pool), (rows,), generator=generator)]


CVMM_CASES = [
    # rows, d_in, d_out, experts, used experts (None = all)
    (70, 40, 24, 6, [0, 2, 5]),  # empty experts at the start, middle and end of the range
    (1, 16, 16, 3, None),  # R = 1
    (100, 70, 33, 1, None),  # one expert, several K blocks
    (45, 32, 32, 8, [3]),  # every row on one expert of many
]


def assert_matches_reference(function: object, tensors: dict, backend: str) -> None:
    """Outputs and gradients of ``function`` under ``backend`` equal the reference's."""
    expected = grads_of(function, tensors, backend="reference")
    actual = grads_of(function, tensors, backend=backend)
    tolerance = TOLERANCE if backend == "triton" else 1e-5
    for name in expected:
        assert_close(actual[name], expected[name], tolerance, f"{backend} {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CVMM_CASES, ids=[f"R{c[0]}-{c[1]}x{c[2]}-E{c[3]}" for c in CVMM_CASES])
def test_cvmm_matches_reference(case: tuple, backend: str) -> None:
    rows, d_in, d_out, experts, used = case
    generator = torch.Generator().manual_seed(0)
    device = DEVICE if backend == "triton" else torch.device("cpu")
    tensors = {
        "x_rows": torch.randn(rows, d_in, generator=generator).to(device),
        "expert_index": make_index(rows, experts, used, generator).to(device),
        "weights": torch.randn(experts, d_in, d_out, generator=generator).to(device),
    }
    assert_matches_reference(kernels.cvmm, tensors, backend)


REDUCE_CASES = [
    # tokens, top_k, d_in, d_out, experts, used
    (35, 2, 40, 24, 6, [1, 4]),
    (1, 1, 16, 20, 4, None),  # T = 1, K = 1
    (20, 4, 50, 30, 16, None),  # a token may pick the same expert twice
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", REDUCE_CASES, ids=[f"T{c[0]}K{c[1]}-{c[2]}x{c[3]}-E{c[4]}" for c in REDUCE_CASES])
def test_weighted_reduce_matches_reference(case: tuple, backend: str) -> None:
    tokens, top_k, d_in, d_out, experts, used = case
    generator = torch.Generator().manual_seed(0)
    device = DEVICE if backend == "triton" else torch.device("cpu")
    tensors = {
        "h_rows": torch.randn(tokens * top_k, d_in, generator=generator).to(device),
        "expert_index": make_index(tokens * top_k, experts, used, generator).to(device),
        "gates": torch.rand(tokens, top_k, generator=generator).to(device),
        "weights": torch.randn(experts, d_in, d_out, generator=generator).to(device),
    }
    assert_matches_reference(kernels.cvmm_weighted_reduce, tensors, backend)


def test_reference_matches_explicit_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    h, gates = torch.randn(6, 5, generator=generator), torch.rand(3, 2, generator=generator)
    weights, index = torch.randn(4, 5, 7, generator=generator), torch.tensor([3, 0, 0, 0, 2, 3])
    out = kernels.cvmm_weighted_reduce(h, index, gates, weights, backend="reference")
    expected = torch.stack([sum(gates[t, j] * h[2 * t + j] @ weights[index[2 * t + j]] for j in range(2))
                            for t in range(3)])
    assert_close(out, expected, 1e-5, "reference")


def test_reference_flops_on_meta() -> None:
    rows, d_in, d_out, experts, top_k = 256, 64, 48, 8, 4
    with torch.device("meta"):
        x, weights = torch.randn(rows, d_in), torch.randn(experts, d_in, d_out)
        index, gates = torch.randint(0, experts, (rows,)), torch.rand(rows // top_k, top_k)
        with FlopCounterMode(display=False) as counter:
            out = kernels.cvmm(x, index, weights)
        assert out.shape == (rows, d_out) and counter.get_total_flops() == 2 * rows * d_in * d_out
        with FlopCounterMode(display=False) as counter:
            out = kernels.cvmm_weighted_reduce(x, index, gates, weights)
        assert out.shape == (rows // top_k, d_out) and counter.get_total_flops() == 2 * rows * d_in * d_out


def test_bad_inputs_raise_with_a_message() -> None:
    x, weights = torch.randn(8, 4), torch.randn(3, 4, 5)
    with pytest.raises(ValueError, match="d_in"):
        kernels.cvmm(x, torch.zeros(8, dtype=torch.long), torch.randn(3, 5, 5))
    with pytest.raises(TypeError, match="int64"):
        kernels.cvmm(x, torch.zeros(8, dtype=torch.int32), weights)
    with pytest.raises(ValueError, match="gates"):
        kernels.cvmm_weighted_reduce(x, torch.zeros(8, dtype=torch.long), torch.rand(3, 2), weights)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (bf16 Triton kernels)")
def test_triton_bf16_against_fp32_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    tokens, top_k, d_model, d_expert, experts = 512, 4, 256, 128, 16
    up = {"x_rows": torch.randn(tokens * top_k, d_model, generator=generator).to(DEVICE),
          "expert_index": torch.randint(0, experts, (tokens * top_k,), generator=generator).to(DEVICE),
          "weights": (torch.randn(experts, d_model, d_expert, generator=generator) / d_model**0.5).to(DEVICE)}
    expected = grads_of(kernels.cvmm, up, backend="reference")
    actual = grads_of(kernels.cvmm, to_bf16(up), backend="triton")
    for name in expected:
        assert_close(actual[name], expected[name], 3e-2, f"bf16 cvmm {name}")
    down = {"h_rows": up["x_rows"][:, :d_expert], "expert_index": up["expert_index"],
            "gates": torch.rand(tokens, top_k, generator=generator).to(DEVICE), "weights": up["weights"].transpose(1, 2)}
    expected = grads_of(kernels.cvmm_weighted_reduce, down, backend="reference")
    actual = grads_of(kernels.cvmm_weighted_reduce, to_bf16(down), backend="triton")
    for name in expected:
        assert_close(actual[name], expected[name], 3e-2, f"bf16 weighted reduce {name}")
