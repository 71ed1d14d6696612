"""Top-k along the last dimension of CPU float32 tensors, several times faster than ``torch.topk``
for the short rows of product-key retrieval.

Product-key layers (PKM, Lample et al. 2019 §3.2; PEER, He 2024 §2) take the top-k of every
head's sub-key scores: rows of n = 256 with k = 16 in the paper-shaped benchmark. On the 2-core
test machine ``torch.topk`` takes about 1.1 µs a row there (4.5 ms for the (2, 2048, 256) scores
of one head, ~19% of a PEER layer's step), most of it per-row set-up and unpredictable branches.
``row_topk.c`` (built by :mod:`kernels.compiled`) takes 1.0 ms for the same scores: a threshold
that k elements reach, a branch-free gather of the elements that reach it and a vectorised rank
count (its header says how); rows shorter than 4k take one insertion pass (the (8, 2048, 50)
candidate sums of the second search: 1.7 ms instead of 3.4 ms).

The result is ``torch.topk``'s, bit for bit: the same values, sorted descending, and the same
indices. Where a row's top-k is not unique (exactly equal values among the k or at its edge,
as in an all-zero row, or a NaN) the C flags the row and ``torch.topk`` recomputes it, so that
the order among ties is ``torch.topk``'s own too and a model trains exactly as with it.
Other devices and dtypes, ``ISOFLOP_COMPILED_KERNELS=off``, or no C compiler: ``torch.topk``.
Rows are shared among PyTorch's OpenMP threads (:mod:`kernels.compiled`).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from kernels import compiled


@functools.cache
def _function() -> ctypes._CFuncPtr | None:
    library = compiled.load("row_topk")
    if library is None:
        return None
    function = library.row_top_k
    function.restype = None
    function.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                         ctypes.c_void_p, ctypes.c_void_p]
    return function


def uses_compiled(scores: torch.Tensor, top_k: int) -> bool:
    """Whether :func:`row_topk` runs the compiled path for ``scores`` (building it if needed)."""
    return (scores.device.type == "cpu" and scores.dtype == torch.float32 and scores.dim() > 0
            and 0 < top_k <= scores.shape[-1] and scores.numel() > 0 and compiled.enabled()
            and _function() is not None)


def row_topk(scores: torch.Tensor, top_k: int,
             out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(scores, top_k, dim=-1)`` (sorted, largest first), see the module docstring.

    Args:
        scores: (..., n) tensor.
        top_k: k, 1 <= k <= n.
        out: optional (values, indices) tensors of shape (..., k) to write into.
    Returns:
        values (..., k) and indices (..., k) int64. Values keep the autograd graph of
        ``scores`` (they are gathered from it) when it requires a gradient.
    """
    if not uses_compiled(scores, top_k):
        return torch.topk(scores, top_k, dim=-1, out=out) if out is not None else torch.topk(scores, top_k, dim=-1)
    rows = scores.detach().contiguous()
    shape = (*scores.shape[:-1], top_k)
    direct = out is not None and all(tensor.is_contiguous() and tensor.shape == shape for tensor in out) and (
        out[0].dtype, out[1].dtype) == (scores.dtype, torch.int64)
    values, indices = out if direct else (torch.empty(shape, dtype=scores.dtype),
                                          torch.empty(shape, dtype=torch.int64))
    row_count = rows.numel() // rows.shape[-1]
    tied = torch.empty(row_count, dtype=torch.bool)
    _function()(rows.data_ptr(), row_count, rows.shape[-1], top_k, values.data_ptr(), indices.data_ptr(),
                tied.data_ptr())
    if tied.any():  # torch.topk's own choice among equal values (module docstring)
        redo = tied.nonzero().squeeze(1)
        redone = torch.topk(rows.view(row_count, -1)[redo], top_k, dim=-1)
        values.view(row_count, top_k)[redo] = redone.values
        indices.view(row_count, top_k)[redo] = redone.indices
    if scores.requires_grad and torch.is_grad_enabled():
        values = scores.gather(-1, indices)
    if out is not None and not direct:
        out[0].copy_(values)
        out[1].copy_(indices)
    return out if out is not None else (values, indices)
