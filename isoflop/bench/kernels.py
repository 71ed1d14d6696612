"""`isoflop bench kernels`: forward+backward time and peak memory, side by side.

PEER: the kernel path (Triton on CUDA, chunked PyTorch elsewhere) vs the naive
gather+einsum reference vs a dense FFW (d_ff = 4 d, same tokens), plus the time
bound set by the bytes the layer must move (:func:`peer_min_bytes`) divided by
the device's memory bandwidth (table below, or --bandwidth-gbs).
CVMM: a sigma-MoE FFW (Csordas et al. 2023, Fig. 2 setting: d_model 512, K 4,
G 128, N_E from 8 to 128) vs a dense MLP with the same expert parameter count
(d_ff = N_E G).

Peak memory: on CUDA `max_memory_allocated` above the inputs; on CPU each case
runs in a fresh process and reports ru_maxrss above the resident size after
setup (so allocator-internal and kernel scratch memory count too).
Importing this module imports nothing heavy; torch is imported when a case runs.

The JSON written with --json holds, per comparison, the sizes, the cases (seconds,
peak_bytes, and time_ratio / memory_ratio against the named baseline) and, for
PEER, the bound (min_bytes, bandwidth_bytes_per_s, seconds, kernel_vs_bound).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any, Callable

from isoflop.commands.common import (
    device_choice,
    positive_count,
    positive_number,
    require_device,
    writable_file,
    write_output_file,
)

# bytes/s, matched as a substring of torch.cuda.get_device_name(), first match wins.
MEMORY_BANDWIDTH = [("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("A100", 2.0e12),
                    ("L40S", 0.864e12), ("A10G", 0.6e12), ("4090", 1.008e12)]
# On a GPU: the PEER paper's layer (He 2024: N = 1024² experts, h = 8 heads, top-16 per head) at
# d = 1024 on 16k tokens in bf16, and the sigma-MoE sizes of Csordas et al. 2023, Fig. 2.
GPU_DEFAULTS = {"tokens": 16384, "dim": 1024, "rows": 1024**2, "heads": 8, "top_k": 16, "dtype": "bfloat16",
                "moe_tokens": 32768, "experts": [8, 16, 32, 64, 128]}
CPU_DEFAULTS = {"tokens": 2048, "dim": 256, "rows": 256**2, "heads": 8, "top_k": 16, "dtype": "float32",
                "moe_tokens": 2048, "experts": [8, 16, 32]}
# The sigma-MoE layer of the CVMM comparison (Csordas et al. 2023, Fig. 2): width, top-K, expert size G.
SIGMA_MOE = {"d_model": 512, "top_k": 4, "group": 128}
REFERENCE_CVMM_LIMIT_BYTES = 2**30  # the reference gathers (T*K, d_model, G) fp32 weights; skipped above this
PEER_BASELINE = "dense FFW d_ff=4d"
PEER_REFERENCE_CASE = "peer reference (gather+einsum)"


def bandwidth_for(device_name: str) -> float | None:
    """Memory bandwidth in bytes/s from MEMORY_BANDWIDTH, None if the device is not listed."""
    return next((bw for key, bw in MEMORY_BANDWIDTH if key in device_name), None)


def peer_min_bytes(tokens: int, dim: int, touched_rows: int, pairs: int, item_bytes: int) -> int:
    """Bytes a PEER expert forward+backward must move at least (the bound's numerator).

    Table rows: U and V rows read in forward and again in backward, dU and dV
    written: 6 · touched_rows · d · item. Per token: x and dy read twice, y and
    dx written: 6 · tokens · d · item. Per (token, head, k) pair: the int64
    index read twice (16 B), the scores read twice and dscores written
    (3 · item), the fp32 pre-activation written and read (8 B).
    """
    return 6 * touched_rows * dim * item_bytes + 6 * tokens * dim * item_bytes + pairs * (16 + 3 * item_bytes + 8)


def size_arguments(sizes: dict[str, Any]) -> list[str]:
    """Command-line flags that select ``sizes`` (keys as in GPU_DEFAULTS), e.g. ``--top-k 16``."""
    argv: list[str] = []
    for key, value in sizes.items():
        argv += [f"--{key.replace('_', '-')}", *(str(item) for item in (value if isinstance(value, list) else [value]))]
    return argv


# ---- one case: inputs and a zero-grad + forward + backward step -------------------------------------

def _peer_case(spec: dict, param: Callable[..., Any], randn: Callable[..., Any]) -> tuple[Callable, list, Any, dict]:
    import torch

    import kernels

    tokens, dim, rows, heads, top_k = (spec[key] for key in ("tokens", "dim", "rows", "heads", "top_k"))
    x, grad_out = param(tokens, dim), randn(tokens, dim)
    index = torch.randint(0, rows, (tokens, heads, top_k), device=x.device)  # (T, h, k)
    scores = torch.softmax(torch.randn(tokens, heads, top_k, device=x.device), -1).to(x.dtype).requires_grad_(True)
    down, up = param(rows, dim, scale=dim**-0.5), param(rows, dim, scale=dim**-0.5)
    min_bytes = peer_min_bytes(tokens, dim, torch.unique(index).numel(), tokens * heads * top_k,
                               torch.finfo(x.dtype).bits // 8)

    def forward() -> Any:
        return kernels.peer_experts(x, index, scores, down, up, activation="gelu", backend=spec["backend"],
                                    sparse_grad=spec.get("sparse_grad", False))
    return forward, [x, scores, down, up], grad_out, {"min_bytes": min_bytes}


def _ffw_case(spec: dict, param: Callable[..., Any], randn: Callable[..., Any]) -> tuple[Callable, list, Any, dict]:
    import torch.nn.functional as F

    tokens, dim = spec["tokens"], spec["dim"]
    x, grad_out = param(tokens, dim), randn(tokens, dim)
    w1, w2 = param(dim, 4 * dim, scale=dim**-0.5), param(4 * dim, dim, scale=(4 * dim) ** -0.5)
    return (lambda: F.gelu(x @ w1) @ w2), [x, w1, w2], grad_out, {}


def _sigma_moe_case(spec: dict, param: Callable[..., Any],
                    randn: Callable[..., Any]) -> tuple[Callable, list, Any, dict]:
    import torch
    import torch.nn.functional as F

    import kernels

    tokens, experts = spec["tokens"], spec["experts"]
    d_model, top_k, group = SIGMA_MOE["d_model"], SIGMA_MOE["top_k"], SIGMA_MOE["group"]
    x, grad_out = param(tokens, d_model), randn(tokens, d_model)
    selection = param(d_model, experts, scale=d_model**-0.5)
    w1, w2 = param(experts, d_model, group, scale=d_model**-0.5), param(experts, group, d_model, scale=0.05)

    def forward() -> Any:
        gates, index = torch.sigmoid(x @ selection).topk(top_k, dim=-1)  # (T, K)
        flat = index.reshape(-1)  # (T*K,)
        rows = x.unsqueeze(1).expand(tokens, top_k, d_model).reshape(-1, d_model)  # (T*K, d_model)
        hidden = F.relu(kernels.cvmm(rows, flat, w1, backend=spec["backend"]))  # (T*K, G)
        return kernels.cvmm_weighted_reduce(hidden, flat, gates, w2, backend=spec["backend"])
    return forward, [x, selection, w1, w2], grad_out, {}


def _dense_mlp_case(spec: dict, param: Callable[..., Any],
                    randn: Callable[..., Any]) -> tuple[Callable, list, Any, dict]:
    import torch.nn.functional as F

    d_model, hidden = SIGMA_MOE["d_model"], spec["experts"] * SIGMA_MOE["group"]
    x, grad_out = param(spec["tokens"], d_model), randn(spec["tokens"], d_model)
    w1, w2 = param(d_model, hidden, scale=d_model**-0.5), param(hidden, d_model, scale=0.05)
    return (lambda: F.relu(x @ w1) @ w2), [x, w1, w2], grad_out, {}


CASE_BUILDERS = {"peer": _peer_case, "ffw": _ffw_case, "sigma_moe": _sigma_moe_case, "dense_mlp": _dense_mlp_case}


def _build(spec: dict) -> tuple[Callable[[], None], dict]:
    """Inputs and a zero-grad + forward + backward step for one case (``spec["layer"]``)."""
    import torch

    import kernels.dispatch  # noqa: F401  (import before the memory baseline is taken)

    torch.manual_seed(0)
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    def param(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (randn(*shape) * scale).requires_grad_(True)

    forward, leaves, grad_out, extra = CASE_BUILDERS[spec["layer"]](spec, param, randn)

    def step() -> None:
        for leaf in leaves:
            leaf.grad = None
        forward().backward(grad_out)

    return step, extra


# ---- measuring -----------------------------------------------------------------------------------------

def _run_case(spec: dict) -> dict:
    """Time (best of spec["repeats"] after one warm-up; robust to a shared machine) and peak memory of one case."""
    import resource

    import torch

    step, extra = _build(spec)
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        with open("/proc/self/statm") as statm:
            base = int(statm.read().split()[1]) * resource.getpagesize()
    try:
        step()
        sync()
        times = []
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
    except torch.cuda.OutOfMemoryError:  # (torch.OutOfMemoryError is newer)
        return {**extra, "error": "out of memory"}
    peak = (torch.cuda.max_memory_allocated(device) if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - base
    return {**extra, "seconds": min(times), "peak_bytes": max(peak, 0)}


def _run_isolated(spec: dict) -> dict:
    """CPU: one fresh process per case so that ru_maxrss is this case's peak."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_run_case, (spec,))


def _measure(cases: list[tuple[str, dict]], baseline: str) -> dict[str, dict]:
    """Run ``cases`` (CUDA in this process, CPU each in a fresh one); add time and memory ratios to ``baseline``."""
    run_case = _run_case if cases[0][1]["device"].startswith("cuda") else _run_isolated
    results = {name: run_case(spec) for name, spec in cases}
    base = results[baseline]
    for result in results.values():
        if "error" not in result and "error" not in base:
            result["time_ratio"] = result["seconds"] / base["seconds"] if base["seconds"] else None
            result["memory_ratio"] = result["peak_bytes"] / base["peak_bytes"] if base["peak_bytes"] else None
    return results


def _print_table(title: str, results: dict[str, dict], baseline: str) -> None:
    print(f"\n{title}  (ratios: x {baseline})")
    print(f"{'case':<34}{'fwd+bwd ms':>12}{'time ratio':>12}{'peak MiB':>12}{'mem ratio':>12}")
    for name, result in results.items():
        if "error" in result:
            print(f"{name:<34}{result['error']:>12}")
            continue
        time_ratio, memory_ratio = (math.nan if result.get(key) is None else result[key]
                                    for key in ("time_ratio", "memory_ratio"))
        print(f"{name:<34}{result['seconds'] * 1e3:>12.2f}{time_ratio:>12.2f}"
              f"{result['peak_bytes'] / 2**20:>12.1f}{memory_ratio:>12.2f}")


# ---- the two comparisons -------------------------------------------------------------------------------

def compare_peer(sizes: dict, common: dict, backend: str, skip_reference: bool,
                 bandwidth: float | None) -> dict[str, Any]:
    """PEER kernel (dense and sparse table gradients) vs reference vs dense FFW, and the bytes-moved bound."""
    peer = {**common, "layer": "peer", **{key: sizes[key] for key in ("tokens", "dim", "rows", "heads", "top_k")}}
    kernel_case = f"peer {backend}"
    cases = [(kernel_case, {**peer, "backend": backend}),
             (f"peer {backend} sparse_grad", {**peer, "backend": backend, "sparse_grad": True})]
    if not skip_reference:
        cases.append((PEER_REFERENCE_CASE, {**peer, "backend": "reference"}))
    cases.append((PEER_BASELINE, {**peer, "layer": "ffw"}))
    results = _measure(cases, PEER_BASELINE)
    _print_table(f"PEER T={peer['tokens']} d={peer['dim']} N={peer['rows']} h={peer['heads']} k={peer['top_k']}",
                 results, PEER_BASELINE)
    bound = peer_bound(results, kernel_case, bandwidth)
    seconds = f"{bound['seconds'] * 1e3:.2f} ms at {bandwidth / 1e12:.2f} TB/s" if bandwidth else \
        "unknown bandwidth (pass --bandwidth-gbs)"
    print(f"memory-traffic bound: {bound['min_bytes'] / 1e9:.2f} GB must move -> {seconds}")
    return {"sizes": {key: peer[key] for key in ("tokens", "dim", "rows", "heads", "top_k")},
            "baseline": PEER_BASELINE, "cases": results, "bound": bound}


def peer_bound(results: dict[str, dict], kernel_case: str, bandwidth: float | None) -> dict[str, Any]:
    """The bytes-moved bound in seconds (None without a bandwidth) and the kernel's time over it."""
    kernel = results[kernel_case]
    min_bytes = kernel.get("min_bytes", 0)
    seconds = min_bytes / bandwidth if bandwidth else None
    return {"min_bytes": min_bytes, "bandwidth_bytes_per_s": bandwidth, "seconds": seconds,
            "kernel_case": kernel_case,
            "kernel_vs_bound": kernel["seconds"] / seconds if seconds and "seconds" in kernel else None}


def compare_cvmm(sizes: dict, common: dict, backend: str, skip_reference: bool) -> dict[str, Any]:
    """sigma-MoE with the CVMM kernel (and its reference, when small enough) vs a dense MLP, per N_E."""
    by_experts = {}
    reference_bytes = sizes["moe_tokens"] * SIGMA_MOE["top_k"] * SIGMA_MOE["d_model"] * SIGMA_MOE["group"] * 4
    for experts in sizes["experts"]:
        moe = {**common, "layer": "sigma_moe", "tokens": sizes["moe_tokens"], "experts": experts}
        baseline = f"dense MLP d_ff={experts * SIGMA_MOE['group']}"
        cases = [(f"sigma-MoE cvmm {backend}", {**moe, "backend": backend})]
        if not skip_reference and reference_bytes <= REFERENCE_CVMM_LIMIT_BYTES:
            cases.append(("sigma-MoE cvmm reference", {**moe, "backend": "reference"}))
        cases.append((baseline, {**moe, "layer": "dense_mlp"}))
        results = _measure(cases, baseline)
        _print_table(f"sigma-MoE T={sizes['moe_tokens']} d_model={SIGMA_MOE['d_model']} K={SIGMA_MOE['top_k']} "
                     f"G={SIGMA_MOE['group']} N_E={experts}", results, baseline)
        by_experts[str(experts)] = {"baseline": baseline, "cases": results}
    return {"sizes": {"tokens": sizes["moe_tokens"], **SIGMA_MOE}, "by_experts": by_experts}


# ---- command line ----------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    count = positive_count
    parser.add_argument("--device", type=device_choice, default="auto",
                        help="cuda, cuda:N, cpu or auto (cuda when available)")
    parser.add_argument("--only", choices=["peer", "cvmm", "all"], default="all")
    parser.add_argument("--tokens", type=count, help="PEER tokens (GPU 16384, CPU 2048)")
    parser.add_argument("--dim", type=count, help="PEER model width d (GPU 1024, CPU 256)")
    parser.add_argument("--rows", type=count, help="PEER experts N (GPU 1024^2, CPU 256^2)")
    parser.add_argument("--heads", type=count, help="PEER heads h (8)")
    parser.add_argument("--top-k", type=count, help="PEER experts per head k (16)")
    parser.add_argument("--moe-tokens", type=count, help="sigma-MoE tokens (GPU 32768, CPU 2048)")
    parser.add_argument("--experts", type=count, nargs="+", help="sigma-MoE N_E values (GPU 8..128, CPU 8 16 32)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="GPU bfloat16, CPU float32")
    parser.add_argument("--repeats", type=count, default=3,
                        help="timed repetitions after one warm-up (best is reported)")
    parser.add_argument("--skip-reference", action="store_true", help="do not run the naive reference paths")
    parser.add_argument("--bandwidth-gbs", type=positive_number(float, "GB/s such as 3350"),
                        help="memory bandwidth in GB/s for the PEER bound")
    parser.add_argument("--json", type=writable_file, metavar="PATH", help="also write the results to this JSON file")


def run(args: argparse.Namespace) -> int:
    """Run the kernel benchmarks; returns the exit status."""
    import torch

    device = require_device(args.device)
    cuda = device.startswith("cuda")
    defaults = GPU_DEFAULTS if cuda else CPU_DEFAULTS
    sizes = {key: value if getattr(args, key) is None else getattr(args, key) for key, value in defaults.items()}
    backend = "triton" if cuda else "torch"
    device_name = torch.cuda.get_device_name(torch.device(device)) if cuda else "cpu"
    common = {"device": device, "dtype": sizes["dtype"], "repeats": args.repeats}
    print(f"device: {device_name}; dtype {sizes['dtype']}; best of {args.repeats} after a warm-up")
    results: dict[str, Any] = {"device": device_name, "dtype": sizes["dtype"], "repeats": args.repeats}
    if args.only in ("peer", "all"):
        bandwidth = args.bandwidth_gbs * 1e9 if args.bandwidth_gbs else bandwidth_for(device_name)
        results["peer"] = compare_peer(sizes, common, backend, args.skip_reference, bandwidth)
    if args.only in ("cvmm", "all"):
        results["cvmm"] = compare_cvmm(sizes, common, backend, args.skip_reference)
    if args.json:
        write_output_file(args.json, json.dumps(results, indent=2) + "\n", "--json")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m isoflop.bench.kernels ARGS``: the same as ``isoflop bench kernels ARGS``."""
    from isoflop.cli import main as isoflop_main

    return isoflop_main(["bench", "kernels", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
