"""Causal per-feature normalisation of product-key queries with prefix statistics.

Each query feature f of the token at position t of a sequence is normalised with the mean
and variance of that feature over the positions 0..t of the same sequence (n_t = t + 1):

    S1_t = sum_{s<=t} x_s,   S2_t = sum_{s<=t} x_s²,
    m_t = S1_t / n_t,        v_t = max(S2_t / n_t - m_t², 0),
    r_t = (v_t + eps)^(-1/2),   x̂_t = (x_t - m_t) r_t,   y_t = x̂_t w + b.

This replaces Lample et al. (2019, §3.3)'s query BatchNorm by a causal one (see
:mod:`models.ffw.product_keys`). :class:`PrefixNormFunction` computes it in the queries'
own (B, T, F) layout, F contiguous, with a hand-written backward; the running sums along T
are blocked scans (:func:`scan_`) of whole rows, so no transposing copy is made (on the
2-core test machine a (2048, 2048) transposing copy took ~55 ms, a whole forward+backward
of this Function ~100 ms, and the (B, F, T) layout needs four such copies).

For float32 on the CPU, forward and backward run instead as one C pass over T each
(``kernels/prefix_norm.c``, built by :mod:`kernels.compiled`), which adds in the blocked
scan's order and rounds as the torch ops do (fused multiply-adds exactly where torch's
``addcmul`` fuses them): its outputs and gradients equal the torch path's bit for bit, in
about 24 ms instead of 38 ms at (1, 2048, 2048) on the 2-core machine. Other dtypes, other
devices, ``ISOFLOP_COMPILED_KERNELS=off`` or no C compiler: the torch path below.

No matmul: ``FlopCounterMode`` sees none of it, as the accounting assumes.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from kernels import compiled
from kernels.host_memory import empty_on_huge_pages


@functools.cache
def scan_block(length: int) -> int:
    """The block length C that :func:`scan_` uses for T = ``length`` rows: the fewest ops."""
    return min(range(1, length + 1), key=lambda size: size + length // size + length % size)


def scan_(sums: torch.Tensor, reverse: bool = False) -> None:
    """In place: running sums along dim 1 of ``sums`` (B, T, ...), inclusive, from the start
    (S_t = sum_{s<=t}) or, with ``reverse``, from the end (R_t = sum_{s>=t}).

    The first T - T mod C rows are cut into blocks of C: C - 1 row additions scan every block
    at once, then one addition per block carries the earlier (or later) blocks' total into it,
    and the last T mod C rows are added one at a time; C minimises that count of ops (about
    2·sqrt(T), e.g. 94 for T = 2048), and each element is added about twice. On the CPU,
    ``torch.cumsum`` is a scalar loop: along T of (1, 2048, 2048) it took ~60 ms on the 2-core
    test machine, these scans of both sums together ~15 ms.
    """
    length = sums.shape[1]
    block = scan_block(length)
    n_blocks = length // block
    blocks = sums[:, :n_blocks * block].unflatten(1, (n_blocks, block))  # (B, T/C, C, ...)
    rest = sums[:, n_blocks * block:]  # (B, T mod C, ...)
    if reverse:
        for row in range(rest.shape[1] - 2, -1, -1):
            rest[:, row].add_(rest[:, row + 1])
        if rest.shape[1]:
            blocks[:, -1, -1].add_(rest[:, 0])
        for row in range(block - 2, -1, -1):
            blocks[:, :, row].add_(blocks[:, :, row + 1])
        for index in range(n_blocks - 2, -1, -1):
            blocks[:, index].add_(blocks[:, index + 1, :1])  # the later blocks' total
    else:
        for row in range(1, block):
            blocks[:, :, row].add_(blocks[:, :, row - 1])
        for index in range(1, n_blocks):
            blocks[:, index].add_(blocks[:, index - 1, -1:])  # the earlier blocks' total
        for row in range(rest.shape[1]):
            rest[:, row].add_(rest[:, row - 1] if row else blocks[:, -1, -1])


class PrefixNormFunction(torch.autograd.Function):
    """y = (x - m) r w + b with prefix statistics (module docstring), forward and backward by hand.

    ``apply(query (B, T, F), weight (F,), bias (F,), eps)`` returns y (B, T, F) in the query's
    dtype; the statistics and every intermediate are float32 (float64 for float64 input), as
    autocast leaves elementwise ops. Saved for backward: the query itself, m and r (float32)
    and where the variance was clamped (bool): 4·3 + 1 bytes per element for float32 input.
    The two running sums of forward (and the two of backward) share one (B, T, 2, F) buffer,
    so one :func:`scan_` covers both, on transparent huge pages (:mod:`kernels.host_memory`).

    Backward (g = dL/dy, n_t = t + 1), by the chain rule through x̂, m, v and the sums:
      dL/dw = sum_{b,t} g x̂,  dL/db = sum_{b,t} g,
      a_t = g_t w r_t                                 (dL/dx̂ · dx̂/dx, the direct path),
      c_t = dL/dv_t = -1/2 a_t r_t x̂_t · [S2_t/n_t - m_t² >= 0]   (dr/dv = -r³/2; the clamp
            passes the gradient where its input is >= 0, as ``clamp_min``'s backward does),
      dL/dm_t = -a_t - 2 m_t c_t,
      dL/dS1_t = dL/dm_t / n_t,   dL/dS2_t = c_t / n_t,
      dL/dx_s = a_s + sum_{t>=s} dL/dS1_t + 2 x_s sum_{t>=s} dL/dS2_t,
    the last two being the two reverse running sums. Twice-differentiating is not supported.
    """

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                eps: float) -> torch.Tensor:
        if compiled_pass(query):
            out, mean, scale, clamped = compiled_forward(query, weight, bias, eps)
            ctx.save_for_backward(query, weight, mean, scale, clamped)
            ctx.bias_dtype = bias.dtype
            return out
        dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
        x = query.to(dtype)
        batch, length, width = x.shape
        stats = empty_on_huge_pages(batch, length, 2, width, dtype=dtype, device=x.device)  # S1, S2
        mean, variance = stats.unbind(2)  # (B, T, F) views
        mean.copy_(x)
        torch.mul(x, x, out=variance)
        scan_(stats)
        stats.div_(torch.arange(1, length + 1, dtype=dtype, device=x.device).view(-1, 1, 1))  # m_t, S2_t / n_t
        variance.addcmul_(mean, mean, value=-1)
        clamped = variance < 0  # (B, T, F) where the clamp stops the variance's gradient
        scale = variance.clamp_min_(0.0).add_(eps).rsqrt_()  # r, in the variance's memory
        normalized = torch.sub(x, mean).mul_(scale)  # x̂
        output = torch.addcmul(bias.to(dtype), normalized, weight.to(dtype), out=normalized)
        ctx.save_for_backward(query, weight, mean, scale, clamped)
        ctx.bias_dtype = bias.dtype
        return output.to(query.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        query, weight, mean, scale, clamped = ctx.saved_tensors
        if compiled_pass(query) and mean.is_contiguous():
            grad_query, weighted = compiled_backward(query, grad_output, weight, mean, scale, clamped)
            grad_weight, grad_bias = weighted.sum((0, 1)), grad_output.float().sum((0, 1))
            return grad_query, grad_weight.to(weight.dtype), grad_bias.to(ctx.bias_dtype), None
        dtype = mean.dtype
        x, grad = query.to(dtype), grad_output.to(dtype)
        batch, length, width = x.shape
        grad_bias = grad.sum((0, 1))
        normalized = torch.sub(x, mean).mul_(scale)  # x̂
        direct = torch.mul(grad, weight.to(dtype)).mul_(scale)  # a = g w r
        reciprocal_count = 1.0 / torch.arange(1, length + 1, dtype=dtype, device=x.device).unsqueeze(-1)  # 1/n_t
        sums = empty_on_huge_pages(batch, length, 2, width, dtype=dtype, device=x.device)
        grad_first, grad_second = sums.unbind(2)  # dL/dS1, dL/dS2: (B, T, F) views
        torch.mul(direct, scale, out=grad_second).mul_(normalized).masked_fill_(clamped, 0.0)  # -2 c_t
        grad_second.mul_(reciprocal_count * -0.5)  # dL/dS2_t = c_t / n_t
        torch.mul(direct, -reciprocal_count, out=grad_first).addcmul_(mean, grad_second, value=-2)  # dL/dS1_t
        grad_weight = normalized.mul_(grad).sum((0, 1))
        scan_(sums, reverse=True)
        grad_query = direct.add_(grad_first).addcmul_(x, grad_second, value=2)
        return grad_query.to(query.dtype), grad_weight.to(weight.dtype), grad_bias.to(ctx.bias_dtype), None


@functools.cache
def _compiled_functions() -> tuple[Any, Any] | None:
    """``prefix_norm_forward`` and ``prefix_norm_backward`` of ``kernels/prefix_norm.c``, or None."""
    library = compiled.load("prefix_norm")
    if library is None:
        return None
    sizes = [ctypes.c_int64] * 4  # batch, length, width, block
    forward, backward = library.prefix_norm_forward, library.prefix_norm_backward
    forward.argtypes = [ctypes.c_void_p, *sizes, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float,
                        *[ctypes.c_void_p] * 4]
    backward.argtypes = [ctypes.c_void_p] * 6 + sizes + [ctypes.c_void_p] * 2
    forward.restype = backward.restype = ctypes.c_int
    return forward, backward


def compiled_pass(query: torch.Tensor) -> bool:
    """Whether the C pass (:mod:`kernels.compiled`) computes this query's normalisation: float32 on the CPU."""
    return (query.device.type == "cpu" and query.dtype == torch.float32 and query.numel() > 0
            and compiled.enabled() and _compiled_functions() is not None)


def compiled_forward(query: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output, m, r, clamped) of :class:`PrefixNormFunction`'s forward from ``kernels/prefix_norm.c``:
    one pass over T, bit-identical to the torch path (same blocked sums, same roundings)."""
    x = query.contiguous()
    batch, length, width = x.shape
    weight, bias = (parameter.detach().float().contiguous() for parameter in (weight, bias))
    output, mean, scale = (torch.empty_like(x) for _ in range(3))
    clamped = torch.empty(x.shape, dtype=torch.bool)
    failed = _compiled_functions()[0](x.data_ptr(), batch, length, width, scan_block(length), weight.data_ptr(),
                                      bias.data_ptr(), eps, output.data_ptr(), mean.data_ptr(), scale.data_ptr(),
                                      clamped.data_ptr())
    if failed:
        raise MemoryError("prefix_norm_forward could not allocate its work memory")
    return output, mean, scale, clamped


def compiled_backward(query: torch.Tensor, grad_output: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                      scale: torch.Tensor, clamped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dquery and x̂·g (to be summed over B, T for dL/dw) from ``kernels/prefix_norm.c``, bit-identical
    to the torch path of :meth:`PrefixNormFunction.backward`."""
    x, grad = query.contiguous(), grad_output.float().contiguous()
    batch, length, width = x.shape
    weight = weight.detach().float().contiguous()
    grad_query, weighted = torch.empty_like(x), torch.empty_like(x)
    failed = _compiled_functions()[1](x.data_ptr(), grad.data_ptr(), weight.data_ptr(), mean.data_ptr(),
                                      scale.data_ptr(), clamped.data_ptr(), batch, length, width, scan_block(length),
                                      grad_query.data_ptr(), weighted.data_ptr())
    if failed:
        raise MemoryError("prefix_norm_backward could not allocate its work memory")
    return grad_query, weighted


class PrefixQueryNorm(nn.Module):
    """Per-feature normalisation with statistics of the sequence's positions up to t (causal).

    Args:
        features: F = h·d_key, each normalised on its own (like BatchNorm1d(F)).
        eps: added to the variance.
    """

    def __init__(self, features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        """Normalised ``query`` (B, T, F), in its dtype; statistics in float32 (float64 for float64 input)."""
        return PrefixNormFunction.apply(query, self.weight, self.bias, self.eps)
