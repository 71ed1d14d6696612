"""Backend choice, validation and autograd for the public kernel API.

`peer_experts`, `cvmm` and `cvmm_weighted_reduce` validate and flatten their
inputs, pick a backend (`resolve_backend`) and call it:

* "reference": naive gather + einsum/bmm through plain autograd, the path that
  `FlopCounterMode` and the `meta` device see.
* "torch" / "triton": forward and backward are registered as `torch.library`
  custom ops (namespace `isoflop`) with fake implementations and
  `register_autograd`, so `torch.compile` traces them as opaque calls.
  PEER with `sparse_grad=True` uses a plain `autograd.Function` instead, since
  custom ops cannot return sparse gradients.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import torch

from kernels import cvmm_reference, peer_reference

BACKENDS = ("auto", "triton", "torch", "reference")
ENV_BACKEND = "ISOFLOP_KERNEL_BACKEND"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Concrete backend for `backend` on `device`.

    "auto" is first replaced by $ISOFLOP_KERNEL_BACKEND when set; an explicit
    argument wins over the variable. "auto" then means triton on CUDA, reference
    on `meta` (shape-only, FLOP counting) and torch elsewhere.
    """
    if backend == "auto":
        backend = os.environ.get(ENV_BACKEND, "auto") or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"kernel backend {backend!r} is unknown; use one of {BACKENDS} (argument or ${ENV_BACKEND})")
    if backend != "auto":
        return backend
    if device.type == "meta":
        return "reference"
    return "triton" if device.type == "cuda" else "torch"


def _module(kind: str, backend: str) -> ModuleType:
    """`kernels.<kind>_<backend>`, e.g. kernels.peer_triton; imported lazily (triton only when used)."""
    import importlib

    return importlib.import_module(f"kernels.{kind}_{backend}")


def _impl(kind: str, name: str, backend: str) -> Any:
    """The function `<name>_<backend>` of `kernels.<kind>_<backend>`, e.g. peer_forward_triton."""
    return getattr(_module(kind, backend), f"{name}_{backend}")


# --------------------------------------------------------------------------- PEER custom ops
@torch.library.custom_op("isoflop::peer_experts_forward", mutates_args=())
def _peer_forward_op(
    x: torch.Tensor, expert_index: torch.Tensor, scores: torch.Tensor, down_table: torch.Tensor,
    up_table: torch.Tensor, gate_table: torch.Tensor | None, activation: str, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    forward = _impl("peer", "peer_forward", backend)
    return forward(x, expert_index, scores, down_table, up_table, gate_table, activation)


@_peer_forward_op.register_fake
def _(x, expert_index, scores, down_table, up_table, gate_table, activation, backend):  # type: ignore[no-untyped-def]
    pre = expert_index.new_empty(expert_index.shape, dtype=torch.float32)
    pre_gate = expert_index.new_empty((expert_index.shape[0] if gate_table is not None else 0, expert_index.shape[1]),
                                      dtype=torch.float32)
    return torch.empty_like(x), pre, pre_gate


@torch.library.custom_op("isoflop::peer_experts_backward", mutates_args=())
def _peer_backward_op(
    grad_out: torch.Tensor, x: torch.Tensor, expert_index: torch.Tensor, scores: torch.Tensor,
    down_table: torch.Tensor, up_table: torch.Tensor, gate_table: torch.Tensor | None, pre_down: torch.Tensor,
    pre_gate: torch.Tensor, activation: str, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    backward = _impl("peer", "peer_backward", backend)
    grads = backward(grad_out, x, expert_index, scores, down_table, up_table, gate_table, pre_down, pre_gate,
                     activation, False)
    return (*grads[:4], grads[4] if grads[4] is not None else x.new_empty(0))


@_peer_backward_op.register_fake
def _(grad_out, x, expert_index, scores, down_table, up_table, gate_table, pre_down, pre_gate, activation, backend):  # type: ignore[no-untyped-def]
    grad_gate = torch.empty_like(gate_table) if gate_table is not None else x.new_empty(0)
    return (torch.empty_like(x), torch.empty_like(scores), torch.empty_like(down_table), torch.empty_like(up_table),
            grad_gate)


def _peer_setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, expert_index, scores, down_table, up_table, gate_table, activation, backend = inputs
    ctx.save_for_backward(x, expert_index, scores, down_table, up_table, gate_table, output[1], output[2])
    ctx.activation, ctx.backend = activation, backend


def _peer_autograd_backward(ctx: Any, grad_out: torch.Tensor, _grad_pre: Any, _grad_pre_gate: Any) -> tuple:
    x, expert_index, scores, down_table, up_table, gate_table, pre_down, pre_gate = ctx.saved_tensors
    dx, dscores, ddown, dup, dgate = _peer_backward_op(
        grad_out.contiguous(), x, expert_index, scores, down_table, up_table, gate_table, pre_down, pre_gate,
        ctx.activation, ctx.backend)
    return dx, None, dscores, ddown, dup, dgate if gate_table is not None else None, None, None


_peer_forward_op.register_autograd(_peer_autograd_backward, setup_context=_peer_setup_context)


class _PeerSparseGrad(torch.autograd.Function):
    """PEER with sparse COO table gradients (rows touched only), for SparseAdam-style updates."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, expert_index: torch.Tensor, scores: torch.Tensor, down_table: torch.Tensor,
                up_table: torch.Tensor, gate_table: torch.Tensor | None, activation: str, backend: str) -> torch.Tensor:
        forward = _impl("peer", "peer_forward", backend)
        out, pre_down, pre_gate = forward(x, expert_index, scores, down_table, up_table, gate_table, activation)
        ctx.save_for_backward(x, expert_index, scores, down_table, up_table, gate_table, pre_down, pre_gate)
        ctx.activation, ctx.backend = activation, backend
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
        x, expert_index, scores, down_table, up_table, gate_table, pre_down, pre_gate = ctx.saved_tensors
        backward = _impl("peer", "peer_backward", ctx.backend)
        dx, dscores, ddown, dup, dgate = backward(grad_out.contiguous(), x, expert_index, scores, down_table,
                                                  up_table, gate_table, pre_down, pre_gate, ctx.activation, True)
        return dx, None, dscores, ddown, dup, dgate, None, None


def peer_experts(
    x: torch.Tensor, expert_index: torch.Tensor, scores: torch.Tensor, down_table: torch.Tensor,
    up_table: torch.Tensor, activation: str = "gelu", gate_table: torch.Tensor | None = None,
    backend: str = "auto", sparse_grad: bool = False,
) -> torch.Tensor:
    """PEER expert mixture (He 2024, Eq. 4-5): y[t] = sum_{h,k} g act(u_i . x) [* (w_i . x)] v_i.

    Args:
        x: (*, d) tokens.  expert_index: (*, h, k) int64 in [0, N).  scores: (*, h, k).
        down_table (u), up_table (v), gate_table (w, GLU experts, optional): (N, d).
        activation: "relu", "gelu" (exact) or "silu".
        backend: see `resolve_backend`.  sparse_grad: table gradients as sparse COO.
    Returns:
        (*, d). FLOPs (reference path, counted): 2d per (t, h, k) down, 2d up, 2d GLU gate.
    """
    peer_reference.activation_pair(activation)
    if expert_index.dim() < 2 or expert_index.shape != scores.shape or expert_index.shape[:-2] != x.shape[:-1]:
        raise ValueError(f"peer_experts needs x (*, d), expert_index and scores (*, h, k) with the same leading dims; "
                         f"got x {tuple(x.shape)}, expert_index {tuple(expert_index.shape)}, scores {tuple(scores.shape)}")
    tables = [t for t in (down_table, up_table, gate_table) if t is not None]
    if any(t.dim() != 2 or t.shape != down_table.shape or t.shape[1] != x.shape[-1] for t in tables):
        raise ValueError(f"peer_experts tables must all be (N, d) with d = x.shape[-1] = {x.shape[-1]}; "
                         f"got {[tuple(t.shape) for t in tables]}")
    if expert_index.dtype != torch.int64:
        raise TypeError(f"expert_index must be int64 (torch.long), got {expert_index.dtype}; cast it with .long()")
    chosen = resolve_backend(backend, x.device)
    if chosen == "reference":
        flat = peer_reference.peer_experts_reference(
            x.reshape(-1, x.shape[-1]), expert_index.reshape(-1, *expert_index.shape[-2:]),
            scores.reshape(-1, *scores.shape[-2:]), down_table, up_table, activation, gate_table, sparse_grad)
        return flat.view(x.shape)
    x_flat = x.reshape(-1, x.shape[-1])  # (T, d)
    index_flat = expert_index.reshape(x_flat.shape[0], -1)  # (T, h*k)
    scores_flat = scores.reshape(x_flat.shape[0], -1)  # (T, h*k)
    if sparse_grad:
        out = _PeerSparseGrad.apply(x_flat, index_flat, scores_flat, down_table, up_table, gate_table, activation, chosen)
    else:
        out = _peer_forward_op(x_flat, index_flat, scores_flat, down_table, up_table, gate_table, activation, chosen)[0]
    return out.view(x.shape)


# --------------------------------------------------------------------------- CVMM custom ops
@torch.library.custom_op("isoflop::cvmm_forward", mutates_args=())
def _cvmm_forward_op(x_rows: torch.Tensor, expert_index: torch.Tensor, weights: torch.Tensor,
                     backend: str) -> torch.Tensor:
    return _impl("cvmm", "cvmm_forward", backend)(x_rows, expert_index, weights)


@_cvmm_forward_op.register_fake
def _(x_rows, expert_index, weights, backend):  # type: ignore[no-untyped-def]
    return x_rows.new_empty(x_rows.shape[0], weights.shape[2])


@torch.library.custom_op("isoflop::cvmm_backward", mutates_args=())
def _cvmm_backward_op(grad_out: torch.Tensor, x_rows: torch.Tensor, expert_index: torch.Tensor,
                      weights: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _impl("cvmm", "cvmm_backward", backend)(grad_out, x_rows, expert_index, weights)


@_cvmm_backward_op.register_fake
def _(grad_out, x_rows, expert_index, weights, backend):  # type: ignore[no-untyped-def]
    return torch.empty_like(x_rows), torch.empty_like(weights)


def _cvmm_setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    x_rows, expert_index, weights, backend = inputs
    ctx.save_for_backward(x_rows, expert_index, weights)
    ctx.backend = backend


def _cvmm_autograd_backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
    x_rows, expert_index, weights = ctx.saved_tensors
    grad_x, grad_weights = _cvmm_backward_op(grad_out.contiguous(), x_rows, expert_index, weights, ctx.backend)
    return grad_x, None, grad_weights, None


_cvmm_forward_op.register_autograd(_cvmm_autograd_backward, setup_context=_cvmm_setup_context)


@torch.library.custom_op("isoflop::cvmm_weighted_reduce_forward", mutates_args=())
def _cvmm_reduce_forward_op(h_rows: torch.Tensor, expert_index: torch.Tensor, gates: torch.Tensor,
                            weights: torch.Tensor, backend: str) -> torch.Tensor:
    forward = _impl("cvmm", "cvmm_weighted_reduce_forward", backend)
    return forward(h_rows, expert_index, gates, weights)


@_cvmm_reduce_forward_op.register_fake
def _(h_rows, expert_index, gates, weights, backend):  # type: ignore[no-untyped-def]
    return h_rows.new_empty(gates.shape[0], weights.shape[2])


@torch.library.custom_op("isoflop::cvmm_weighted_reduce_backward", mutates_args=())
def _cvmm_reduce_backward_op(grad_out: torch.Tensor, h_rows: torch.Tensor, expert_index: torch.Tensor,
                             gates: torch.Tensor, weights: torch.Tensor,
                             backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    backward = _impl("cvmm", "cvmm_weighted_reduce_backward", backend)
    return backward(grad_out, h_rows, expert_index, gates, weights)


@_cvmm_reduce_backward_op.register_fake
def _(grad_out, h_rows, expert_index, gates, weights, backend):  # type: ignore[no-untyped-def]
    return torch.empty_like(h_rows), torch.empty_like(gates), torch.empty_like(weights)


def _cvmm_reduce_setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    h_rows, expert_index, gates, weights, backend = inputs
    ctx.save_for_backward(h_rows, expert_index, gates, weights)
    ctx.backend = backend


def _cvmm_reduce_autograd_backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
    h_rows, expert_index, gates, weights = ctx.saved_tensors
    grad_h, grad_gates, grad_weights = _cvmm_reduce_backward_op(grad_out.contiguous(), h_rows, expert_index, gates,
                                                                weights, ctx.backend)
    return grad_h, None, grad_gates, grad_weights, None


_cvmm_reduce_forward_op.register_autograd(_cvmm_reduce_autograd_backward, setup_context=_cvmm_reduce_setup_context)


def _check_cvmm(name: str, rows: torch.Tensor, expert_index: torch.Tensor, weights: torch.Tensor) -> None:
    if rows.dim() != 2 or weights.dim() != 3 or rows.shape[1] != weights.shape[1]:
        raise ValueError(f"{name} needs rows (R, d_in) and weights (E, d_in, d_out); "
                         f"got rows {tuple(rows.shape)}, weights {tuple(weights.shape)}")
    if expert_index.shape != rows.shape[:1]:
        raise ValueError(f"{name} needs expert_index of shape (R,) = ({rows.shape[0]},), got {tuple(expert_index.shape)}")
    if expert_index.dtype != torch.int64:
        raise TypeError(f"{name}: expert_index must be int64 (torch.long), got {expert_index.dtype}; cast with .long()")


def cvmm(x_rows: torch.Tensor, expert_index: torch.Tensor, weights: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Conditional vector-matrix multiply (sigma-MoE, Csordas et al. 2023, App. B.1).

    Args:
        x_rows: (R, d_in).  expert_index: (R,) int64 in [0, E), any order (sorted inside).
        weights: (E, d_in, d_out).
    Returns:
        (R, d_out), out[r] = x_rows[r] @ weights[expert_index[r]]. FLOPs: 2 d_in d_out per row.
    """
    _check_cvmm("cvmm", x_rows, expert_index, weights)
    chosen = resolve_backend(backend, x_rows.device)
    if chosen == "reference":
        return cvmm_reference.cvmm_reference(x_rows, expert_index, weights)
    return _cvmm_forward_op(x_rows, expert_index, weights, chosen)


def cvmm_weighted_reduce(h_rows: torch.Tensor, expert_index: torch.Tensor, gates: torch.Tensor,
                         weights: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Gated sum of CVMM rows per token: the sigma-MoE down-projection.

    Args:
        h_rows: (T*K, d_in) token-major (row t*K + j).  expert_index: (T*K,) int64.
        gates: (T, K).  weights: (E, d_in, d_out).
    Returns:
        (T, d_out), out[t] = sum_j gates[t, j] h_rows[t*K+j] @ weights[expert_index[t*K+j]].
        FLOPs: 2 d_in d_out per row (the gate products and the sum over j are not counted).
    """
    _check_cvmm("cvmm_weighted_reduce", h_rows, expert_index, weights)
    if gates.dim() != 2 or gates.numel() != h_rows.shape[0]:
        raise ValueError(f"cvmm_weighted_reduce needs gates (T, K) with T*K = h_rows.shape[0] = {h_rows.shape[0]}; "
                         f"got gates {tuple(gates.shape)}")
    chosen = resolve_backend(backend, h_rows.device)
    if chosen == "reference":
        return cvmm_reference.cvmm_weighted_reduce_reference(h_rows, expert_index, gates, weights)
    return _cvmm_reduce_forward_op(h_rows, expert_index, gates, weights, chosen)
