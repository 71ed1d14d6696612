"""Kernels for the memory-bound parts of the FFW layers: PEER experts and CVMM.

Public API (all importable from `kernels`):
    peer_experts(x, expert_index, scores, down_table, up_table, activation="gelu",
                 gate_table=None, backend="auto", sparse_grad=False)
    cvmm(x_rows, expert_index, weights, backend="auto")
    cvmm_weighted_reduce(h_rows, expert_index, gates, weights, backend="auto")
    resolve_backend(backend, device)

Backends: "triton" (fused kernels, CUDA or TRITON_INTERPRET=1), "torch" (best
pure-PyTorch path), "reference" (naive gather + einsum/bmm, exact FLOP counts,
runs on `meta`), "auto" (triton on CUDA, reference on meta, torch elsewhere).
The environment variable ISOFLOP_KERNEL_BACKEND replaces "auto".

Layout: one module per (kernel, backend): `peer_reference`, `peer_torch`,
`peer_triton`, `cvmm_reference`, `cvmm_torch`, `cvmm_triton`; `dispatch` holds
the API (the benchmark is `isoflop.bench.kernels`). (No submodule is named after a public function,
so `kernels.cvmm` is always the function.)

Attributes are loaded lazily so that `import isoflop.bench.kernels` stays cheap and
triton is imported only when its backend is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["cvmm", "cvmm_weighted_reduce", "peer_experts", "resolve_backend", "BACKENDS"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("kernels.dispatch"), name)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
