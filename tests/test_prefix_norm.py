"""The prefix query normalisation's hand-written forward and backward (models/ffw/prefix_norm.py).

The reference is the plain autograd formulation it replaces (transposed copy, ``cumsum`` along
T, elementwise ops), kept here: the Function must equal it to rounding in forward and in every
gradient, at the benchmark's shape, under bf16 autocast and where the variance is clamped.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models.ffw.prefix_norm import PrefixNormFunction, PrefixQueryNorm, scan_

EPS = 1e-5


def reference_prefix_norm(query: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The autograd formulation: (B, F, T) copy, running sums by ``cumsum``, clamp, rsqrt."""
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    by_feature = query.transpose(1, 2).to(dtype).contiguous()  # (B, F, T)
    count = torch.arange(1, by_feature.shape[-1] + 1, device=query.device, dtype=dtype)
    mean, mean_square = torch.stack([by_feature, by_feature * by_feature]).cumsum(dim=-1) / count
    scale = torch.rsqrt((mean_square - mean * mean).clamp_min(0.0) + EPS)
    normalized = (by_feature - mean) * scale * weight.view(-1, 1) + bias.view(-1, 1)
    return normalized.transpose(1, 2).to(query.dtype)


def affine(width: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A learned scale and shift away from their (1, 0) initialisation, so both gradients are tested."""
    generator = torch.Generator().manual_seed(seed)
    weight = (1 + 0.5 * torch.randn(width, generator=generator, dtype=dtype)).requires_grad_(True)
    bias = (0.5 * torch.randn(width, generator=generator, dtype=dtype)).requires_grad_(True)
    return weight, bias


def outputs_and_gradients(norm, query: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          upstream: torch.Tensor) -> list[torch.Tensor]:
    """y and dL/d(query, weight, bias) for L = sum(y * upstream)."""
    leaves = [tensor.detach().clone().requires_grad_(True) for tensor in (query, weight, bias)]
    output = norm(*leaves)
    output.backward(upstream)
    return [output.detach(), *(leaf.grad for leaf in leaves)]


def hand_written(query: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return PrefixNormFunction.apply(query, weight, bias, EPS)


@pytest.mark.parametrize("length", [1, 2, 3, 7, 16, 17, 127, 128])
def test_scan_equals_cumsum_from_either_end(length: int) -> None:
    values = torch.randn(3, length, 2, 5, dtype=torch.float64)
    forward, backward = values.clone(), values.clone()
    scan_(forward)
    scan_(backward, reverse=True)
    torch.testing.assert_close(forward, values.cumsum(1))
    torch.testing.assert_close(backward, values.flip(1).cumsum(1).flip(1))


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 1, 2), (1, 2, 3), (3, 5, 2), (2, 10, 4), (1, 17, 3)])
def test_gradcheck_float64(shape: tuple[int, int, int]) -> None:
    query = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    weight, bias = affine(shape[-1], torch.float64, seed=sum(shape))
    assert torch.autograd.gradcheck(hand_written, (query, weight, bias))


def test_equals_autograd_reference_at_the_benchmark_shape() -> None:
    """B = 1, T = 2048, F = h·d_key = 8·256 (``isoflop bench layers``), fp32: equal to rounding.

    Where two early positions are nearly equal the variance is a small difference of large sums
    and both fp32 formulations are off by far more than one rounding (the first positions'
    gradients by ~2% of the largest); so each is measured against the float64 evaluation, and
    the hand-written one must be as accurate as the reference, at worst and on average.
    """
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 2048, 2048, generator=generator) * 3 + 1
    upstream = torch.randn(query.shape, generator=generator)
    weight, bias = affine(query.shape[-1], torch.float32, seed=1)
    found = outputs_and_gradients(hand_written, query, weight, bias, upstream)
    expected = outputs_and_gradients(reference_prefix_norm, query, weight, bias, upstream)
    exact = outputs_and_gradients(reference_prefix_norm, *(tensor.double() for tensor in (query, weight, bias)),
                                  upstream.double())
    for name, got, want, truth in zip(("output", "query grad", "weight grad", "bias grad"), found, expected, exact):
        assert got.dtype == want.dtype == torch.float32, name
        rounding = 1e-7 * truth.abs().max()
        error, reference_error = (got.double() - truth).abs(), (want.double() - truth).abs()
        assert error.max() <= 1.5 * reference_error.max() + rounding, name
        assert error.mean() <= 1.5 * reference_error.mean() + rounding, name
        assert (got - want).abs().mean() <= 1e-6 * truth.abs().max(), name


def test_clamped_variance_stops_its_gradient_as_clamp_min_does() -> None:
    """Constant prefixes, whose S2/n - m² rounds below 0 at some positions, match the reference.

    There r = eps^-1/2 ≈ 316 and the variance is rounding noise of either sign in either
    formulation, so the query gradient (∝ r) agrees to ~1e-3 of its largest value, the output
    and the parameter gradients to rounding.
    """
    values = torch.tensor([0.1, 0.3, 0.7, 1.1, 1.7])
    query = values.repeat(1, 12, 1).clone()  # (1, 12, 5): every feature constant over time...
    query[0, 8:] += torch.linspace(0.5, 2.0, 5)  # ...until position 8
    by_feature = query.transpose(1, 2)
    count = torch.arange(1, 13, dtype=torch.float32)
    variance = by_feature.square().cumsum(-1) / count - (by_feature.cumsum(-1) / count) ** 2
    assert (variance < 0).any(), "the example must round some variance below 0"
    weight, bias = affine(5, torch.float32, seed=2)
    upstream = torch.randn(query.shape, generator=torch.Generator().manual_seed(3))
    found = outputs_and_gradients(hand_written, query, weight, bias, upstream)
    expected = outputs_and_gradients(reference_prefix_norm, query, weight, bias, upstream)
    for got, want, relative in zip(found, expected, (1e-5, 1e-3, 1e-5, 1e-5)):
        torch.testing.assert_close(got, want, rtol=0.0, atol=relative * want.abs().max().item())


def test_first_position_is_the_shift() -> None:
    """At t = 0 the variance is 0: the normalised query is 0 and y = b."""
    weight, bias = affine(6, torch.float32, seed=4)
    output = hand_written(torch.randn(3, 4, 6), weight, bias)
    torch.testing.assert_close(output[:, 0], bias.detach().expand(3, 6))


def test_bf16_autocast_output_dtype_and_values() -> None:
    """bf16 input (as under autocast): statistics in fp32, output and query gradient in bf16."""
    generator = torch.Generator().manual_seed(5)
    query = torch.randn(2, 64, 32, generator=generator).to(torch.bfloat16)
    upstream = torch.randn(query.shape, generator=generator).to(torch.bfloat16)
    weight, bias = affine(32, torch.float32, seed=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        found = outputs_and_gradients(hand_written, query, weight, bias, upstream)
        expected = outputs_and_gradients(reference_prefix_norm, query, weight, bias, upstream)
    assert [tensor.dtype for tensor in found] == [torch.bfloat16, torch.bfloat16, torch.float32, torch.float32]
    for got, want in zip(found, expected):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2 * want.abs().max().item())


def test_runs_on_meta_without_counted_flops() -> None:
    """FLOP counting runs models on the meta device: no matmul, so nothing is counted."""
    norm = PrefixQueryNorm(16, eps=EPS).to("meta")
    query = torch.empty(2, 33, 16, device="meta", requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        output = norm(query)
        output.sum().backward()
    assert output.shape == query.shape and output.device.type == "meta"
    assert counter.get_total_flops() == 0


def test_module_parameters_receive_gradients() -> None:
    norm = PrefixQueryNorm(8)
    assert isinstance(norm.weight, nn.Parameter) and norm.weight.shape == (8,)
    norm(torch.randn(2, 5, 8)).square().sum().backward()
    assert norm.weight.grad is not None and norm.bias.grad is not None
    assert norm.weight.grad.abs().sum() > 0
