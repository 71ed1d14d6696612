"""Causal multi-head self-attention of CPU float32 tensors, forward and backward in C: what
``F.scaled_dot_product_attention(query, key, value, is_causal=True)`` computes, 2.2-4x faster
at this project's shapes, with the rotary embedding of the queries and keys read into it.

The models (``models/transformer.py``) attend over B = 16 sequences of T = 128 tokens with 2 to
8 heads of D = d_model / n_heads = 6 to 20 features (odd ones too): few FLOPs (25 M for the
forward at (16, 3, 128, 16)), yet PyTorch's CPU kernel
(``_scaled_dot_product_flash_attention_for_cpu``, blocked for long sequences and wide heads)
takes 0.96 ms forward and 2.0 ms backward there on one thread of the 2-core test machine,
about a quarter of a training step. ``causal_attention.c`` (built by :mod:`kernels.compiled`)
computes each (batch, head) on one thread, in vectors of 16 keys (8 without AVX-512) for 8 or
4 queries at a time, and only up to the causal diagonal; its header says how. Measured side
by side (best of interleaved repetitions; forward without gradients, forward + backward of
leaf inputs):

    one thread          SDPA fwd   C fwd   ratio   SDPA fwd+bwd   C fwd+bwd   ratio
    (16, 2, 128, 8)     0.75 ms    0.24    3.1x    2.61 ms        0.66        4.0x
    (16, 3, 128, 16)    0.96       0.41    2.4x    2.93           1.23        2.4x
    (16, 2, 128, 20)    0.81       0.36    2.2x    2.55           1.07        2.4x
    (16, 5, 128, 16)    1.62       0.66    2.4x    4.88           2.10        2.3x
    (16, 8, 128, 16)    2.51       1.05    2.4x    8.00           3.60        2.2x

With two threads the forward + backward ratios are 3.0-4.7x (SDPA gains less from the second
core), and a whole training step of a 4-layer d_model = 48, 3-head dense model (vocabulary 512)
took 9% (one thread) to 8% (two) less time. (AVX-512 on the AMD Zen 5 test machine; the AVX2
kernels take ~1.5x as long.)

Formulas, with s = q . k / sqrt(D) over the keys up to the query's position, m = max s and
l = sum e^(s - m): out = sum_j e^(s_j - m) v_j / l; backward (Dao et al. 2022, FlashAttention,
Algorithm 2) computes P = e^(s - m) / l again from the saved m and 1/l of each query, then
dP = dO V^T, dS = P o (dP - rowsum(dO o out)), dQ = dS K / sqrt(D), dK = dS^T Q / sqrt(D) and
dV = P^T dO. Saved for backward: the inputs, out, and m and 1/l (8 bytes per query). Keeping P
itself (T²/2 floats per (batch, head)) made backward alone 1.6x faster but whole training steps
no faster (medians of interleaved steps, one and two threads), so it is not kept.

Rotary positions (``rotary``, the (cos, signed_sin) tables of
``kernels.rotary.rotary_tables``): the C rotates the queries and keys as it copies them into
its work memory, x[d] cos[d] + x[d ^ 1] signed_sin[d], and its backward turns the gradients g of
the rotated ones into those of the inputs, g[d] cos[d] + g[d ^ 1] signed_sin[d ^ 1]: two
products and their sum, each rounded, as ``apply_rotary`` and its autograd backward (g * cos
plus the swapped g * signed_sin) round them (sums commute; nothing is fused: see read_row in
the C). So the output and the three gradients are bit for bit those of
``causal_attention(apply_rotary(query, rotary), apply_rotary(key, rotary), value)``:
tests/test_causal_attention.py compares them with ``torch.equal`` at D = 2 to 26, T = 1 to 128,
odd head counts, inputs strided as the model makes them, and whole models' logits and parameter
gradients. That saves PyTorch's rotation of q and k (a flipped copy, products and a sum, forward
and backward), which took as long as the attention's own forward; in the C it costs nothing
measurable. Measured side by side (inputs the views of one projection, as the model makes them;
otherwise as above):

    one thread          unfused fwd   fused fwd   ratio   unfused fwd+bwd   fused fwd+bwd   ratio
    (16, 2, 128, 8)     0.60 ms       0.26        2.3x    1.20 ms           0.70            1.7x
    (16, 3, 128, 16)    0.86          0.42        2.0x    2.07              1.39            1.5x

(unfused: ``apply_rotary``, then the C), and whole training steps took 9% less time (medians of
interleaved steps, one thread: 32.1 -> 29.2 ms for a 3-layer d_model = 48, 3-head dense model,
6.4 -> 5.8 ms for a 1-layer d_model = 16 one; 12% less with two threads for the first).

The results are SDPA's to float32 rounding, not bit for bit (another order of sums, and e^x
by a polynomial within 1.2 ulp): outputs and gradients differ from a float64 reference about as
much as SDPA's own do (~1e-6 of their largest value at the shapes above; within 4x SDPA's error
in tests/test_causal_attention.py), and do not depend on the thread count (each head is one
thread's, summed in a fixed order). Other devices (the ``meta`` tensors of
``models/verify.py``'s FLOP count included, so that count is unchanged), other dtypes, unequal
shapes, T > MAX_LENGTH, ``ISOFLOP_COMPILED_KERNELS=off``, no C compiler, or a CPU with neither
AVX-512 nor AVX2 + FMA (there the C, not vectorised, is 3-6x slower than SDPA):
``apply_rotary`` (where ``rotary`` is given) and SDPA themselves, as the models computed before.
Tables the C does not read (odd D, not (T, D), on another device, or requiring gradients):
``apply_rotary``, then the C. The C backward cannot be differentiated again
(``once_differentiable``). Heads are shared among PyTorch's OpenMP threads
(:mod:`kernels.compiled`).
"""

from __future__ import annotations

import ctypes
import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from kernels import compiled
from kernels.host_memory import empty_on_huge_pages
from kernels.rotary import apply_rotary

MAX_LENGTH = 1024  # longer sequences take SDPA: the C loops are not blocked for the caches (1.15x at T = 4096)


@functools.cache
def _functions() -> tuple[Any, Any] | None:
    """``causal_attention_forward`` and ``causal_attention_backward`` of ``kernels/causal_attention.c``, or None
    (also where they would not run vectorised: neither AVX-512 nor AVX2 + FMA)."""
    library = compiled.load("causal_attention")
    if library is None or not library.causal_attention_vectorised():
        return None
    sizes = [ctypes.c_int64] * 4  # batch, heads, length, dim
    forward, backward = library.causal_attention_forward, library.causal_attention_backward
    forward.argtypes = [ctypes.c_void_p] * 6 + sizes + [ctypes.c_float] + [ctypes.c_void_p] * 2
    backward.argtypes = [ctypes.c_void_p] * 8 + sizes + [ctypes.c_float] + [ctypes.c_void_p] * 4
    forward.restype = backward.restype = ctypes.c_int
    return forward, backward


def uses_compiled(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether :func:`causal_attention` runs the C kernels for these inputs (building them if needed)."""
    return (all(tensor.device.type == "cpu" and tensor.dtype == torch.float32 for tensor in (query, key, value))
            and query.dim() == 4 and query.shape == key.shape == value.shape and query.numel() > 0
            and query.shape[2] <= MAX_LENGTH and compiled.enabled() and _functions() is not None)


def _strides(*tensors: torch.Tensor) -> ctypes.Array:
    """The (b, h, t, d) element strides of each tensor, one after another."""
    return (ctypes.c_int64 * (4 * len(tensors)))(*(stride for tensor in tensors for stride in tensor.stride()))


def _address(table: torch.Tensor | None) -> int | None:
    """A rotary table's data pointer, or None (NULL: no rotation)."""
    return None if table is None else table.data_ptr()


def _fused_tables(query: torch.Tensor,
                  rotary: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The rotary tables as the C kernels read them, float32 (T, D) and contiguous (as ``apply_rotary``
    converts them: ``.to(x.dtype)``), or None where the C cannot rotate (odd D, tables of another shape, on
    another device or to be differentiated): ``apply_rotary`` then rotates."""
    length, dim = query.shape[2:]
    tables = tuple(rotary)
    if (dim % 2 or len(tables) != 2
            or any(table.device.type != "cpu" or table.shape != (length, dim) for table in tables)
            or (torch.is_grad_enabled() and any(table.requires_grad for table in tables))):
        return None
    return tables[0].to(torch.float32).contiguous(), tables[1].to(torch.float32).contiguous()


def _forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cos: torch.Tensor | None = None,
             sin: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """out (B, H, T, D) and stats (B, H, T, 2: each query's m log2 e and 1/l) from ``causal_attention_forward``,
    the queries and keys rotated by the tables cos and sin ((T, D) float32, contiguous) where given."""
    batch, heads, length, dim = query.shape
    out = torch.empty(query.shape, dtype=torch.float32)
    stats = torch.empty(batch, heads, length, 2, dtype=torch.float32)
    failed = _functions()[0](query.data_ptr(), key.data_ptr(), value.data_ptr(), _strides(query, key, value),
                             _address(cos), _address(sin), batch, heads, length, dim, 1.0 / math.sqrt(dim),
                             out.data_ptr(), stats.data_ptr())
    if failed:
        raise MemoryError("causal_attention_forward could not allocate its work memory")
    return out, stats


class CausalAttentionFunction(torch.autograd.Function):
    """softmax(Q K^T / sqrt(D), keys up to the query's position) V by the C kernels (module docstring).

    ``apply(query, key, value, cos, sin)``: query, key, value (B, H, T, D) float32 on the CPU, any strides;
    cos, sin the rotary tables ((T, D) float32, contiguous, D even) that rotate the queries and keys first,
    or None and None (no rotation). The tables get no gradient.
    """

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cos: torch.Tensor | None,
                sin: torch.Tensor | None) -> torch.Tensor:
        out, stats = _forward(query, key, value, cos, sin)
        ctx.save_for_backward(query, key, value, out, stats, cos, sin)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        query, key, value, out, stats, cos, sin = ctx.saved_tensors
        batch, heads, length, dim = query.shape
        grad_out = grad_out.float()
        grads = empty_on_huge_pages(3, *query.shape).unbind(0)  # dQ, dK, dV
        failed = _functions()[1](query.data_ptr(), key.data_ptr(), value.data_ptr(), out.data_ptr(),
                                 grad_out.data_ptr(), _strides(query, key, value, grad_out), _address(cos),
                                 _address(sin), batch, heads, length, dim, 1.0 / math.sqrt(dim), stats.data_ptr(),
                                 *(grad.data_ptr() for grad in grads))
        if failed:
            raise MemoryError("causal_attention_backward could not allocate its work memory")
        return (*grads, None, None)


def causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention(apply_rotary(query, rotary), apply_rotary(key, rotary), value,
    is_causal=True)`` (no rotation where ``rotary`` is None), see the module docstring.

    Args:
        query, key, value: (B, H, T, D) tensors, any strides.
        rotary: the (cos, signed_sin) tables of ``kernels.rotary.rotary_tables`` for (T, D), or None.
    Returns:
        The attention output (B, H, T, D), contiguous: C kernels for CPU float32 (:func:`uses_compiled`), the
        rotation read into them, bit for bit ``causal_attention(apply_rotary(query, rotary),
        apply_rotary(key, rotary), value)``; otherwise ``apply_rotary`` and SDPA themselves.
    """
    compiled_path = uses_compiled(query, key, value)
    tables = None if rotary is None or not compiled_path else _fused_tables(query, rotary)
    if rotary is not None and tables is None:
        query, key = apply_rotary(query, rotary), apply_rotary(key, rotary)
    if not compiled_path:
        return F.scaled_dot_product_attention(query, key, value, is_causal=True)
    cos, sin = (None, None) if tables is None else tables
    if not (torch.is_grad_enabled() and any(tensor.requires_grad for tensor in (query, key, value))):
        return _forward(query, key, value, cos, sin)[0]  # no autograd node, nothing saved
    return CausalAttentionFunction.apply(query, key, value, cos, sin)
