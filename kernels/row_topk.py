"""Top-k along the last dimension of CPU float32 tensors, several times faster than ``torch.topk``
for the short rows of product-key retrieval.

Product-key layers (PKM, Lample et al. 2019 §3.2; PEER, He 2024 §2) take the top-k of every
head's sub-key scores: rows of n = 256 with k = 16 in the paper-shaped benchmark. On the 2-core
test machine ``torch.topk`` takes about 1.1 µs a row there (4.5 ms for the (2, 2048, 256) scores
of one head, ~19% of a PEER layer's step), most of it per-row set-up and unpredictable branches.
``row_topk.c`` (built by :mod:`kernels.compiled`) takes 1.0 ms for the same scores: a threshold
that k elements reach, a branch-free gather of the elements that reach it and a vectorised rank
count (its header says how); rows shorter than 4k take one insertion pass (the (8, 2048, 50)
candidate sums of the second search: 1.7 ms instead of 3.4 ms). Rows of at most 64 with k <= 16,
the CPU studies' (64 sub-key scores, k = 8), take the same steps on whole vectors: 0.39 ms for
(2, 2048, 64) instead of 0.84 ms (``torch.topk``: 2.8 ms).

:func:`best_pairs_compiled` is product keys' second search (the candidate sums of the two halves'
top-k and their top-k) as one pass of C over the rows, where PyTorch took eight ops: 0.47 ms
for (2, 2048) rows of 20 candidates (k = 8) instead of 0.8-1.1 ms in a PEER step.

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
def _functions() -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr] | None:
    """The library's ``row_top_k`` and ``best_pairs``, or None where it cannot be had."""
    library = compiled.load("row_topk")
    if library is None:
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    library.row_top_k.restype = library.best_pairs.restype = None
    library.row_top_k.argtypes = [pointer, size, size, size, pointer, pointer, pointer]
    library.best_pairs.argtypes = [pointer, pointer, pointer, pointer, size, size, pointer, pointer, size, size,
                                   pointer, pointer, pointer, pointer, pointer]
    return library.row_top_k, library.best_pairs


def uses_compiled(scores: torch.Tensor, top_k: int) -> bool:
    """Whether :func:`row_topk` runs the compiled path for ``scores`` (building it if needed)."""
    return (scores.device.type == "cpu" and scores.dtype == torch.float32 and scores.dim() > 0
            and 0 < top_k <= scores.shape[-1] and scores.numel() > 0 and compiled.enabled()
            and _functions() is not None)


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
    _functions()[0](rows.data_ptr(), row_count, rows.shape[-1], top_k, values.data_ptr(), indices.data_ptr(),
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


def best_pairs_compiled(first_top: torch.Tensor, second_top: torch.Tensor, first_index: torch.Tensor,
                        second_index: torch.Tensor, first_rank: torch.Tensor, second_rank: torch.Tensor,
                        n_keys: int) -> tuple[torch.Tensor, ...] | None:
    """Product keys' second search in one pass of C (``best_pairs`` in row_topk.c), or None where
    it does not run (then the caller computes it with PyTorch ops).

    Args:
        first_top, second_top: (..., k) float32 per-half top-k scores, sorted descending.
        first_index, second_index: (..., k) int64 sub-key ids of those scores.
        first_rank, second_rank: (C,) int64 candidate pairs of ranks (product_keys.candidate_pairs).
        n_keys: n, the sub-keys per half.
    Returns:
        the k best sums (..., k) sorted descending, their key ids first_index[a]·n + second_index[b],
        their ranks a and b, all (..., k), and ``tied`` (...,) bool: rows whose k best sums are not
        unique, whose outputs the caller must compute again (torch.topk's choice among ties).
    """
    top_k = first_top.shape[-1]
    if not (uses_compiled(first_top, top_k) and first_rank.numel() >= top_k
            and first_index.dtype == second_index.dtype == torch.int64):
        return None
    inputs = [tensor.contiguous() for tensor in (first_top, second_top, first_index, second_index,
                                                 first_rank, second_rank)]
    scores = torch.empty_like(inputs[0])
    index, best_first, best_second = (torch.empty_like(inputs[2]) for _ in range(3))
    tied = torch.empty(first_top.shape[:-1], dtype=torch.bool)
    _functions()[1](*(tensor.data_ptr() for tensor in inputs[:4]), tied.numel(), top_k, inputs[4].data_ptr(),
                    inputs[5].data_ptr(), first_rank.numel(), n_keys, scores.data_ptr(), index.data_ptr(),
                    best_first.data_ptr(), best_second.data_ptr(), tied.data_ptr())
    return scores, index, best_first, best_second, tied
