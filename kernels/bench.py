"""`isoflop bench kernels`: forward+backward time and peak memory, side by side.

PEER: the kernel path (Triton on CUDA, chunked PyTorch elsewhere) vs the naive
gather+einsum reference vs a dense FFW (d_ff = 4 d, same tokens), plus the time
bound set by the bytes the layer must move (touched table rows read in forward
and backward, their gradients written, per-token tensors) divided by the
device's memory bandwidth (table below, or --bandwidth-gbs).
CVMM: a sigma-MoE FFW (Csordas et al. 2023, Fig. 2 setting: d_model 512, K 4,
G 128, N_E from 8 to 128) vs a dense MLP with the same expert parameter count
(d_ff = N_E G).

Peak memory: on CUDA `max_memory_allocated` above the inputs; on CPU each case
runs in a fresh process and reports ru_maxrss above the resident size after
setup (so allocator-internal and kernel scratch memory count too).
Importing this module imports nothing heavy; torch is imported in `main`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any, Callable

# bytes/s, matched as a substring of torch.cuda.get_device_name(), first match wins.
MEMORY_BANDWIDTH = [("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("A100", 2.0e12),
                    ("L40S", 0.864e12), ("A10G", 0.6e12), ("4090", 1.008e12)]
GPU_DEFAULTS = {"tokens": 16384, "dim": 1024, "rows": 1024**2, "heads": 8, "top_k": 16, "dtype": "bfloat16",
                "moe_tokens": 32768, "experts": [8, 16, 32, 64, 128]}
CPU_DEFAULTS = {"tokens": 2048, "dim": 256, "rows": 256**2, "heads": 8, "top_k": 16, "dtype": "float32",
                "moe_tokens": 2048, "experts": [8, 16, 32]}


def bandwidth_for(device_name: str) -> float | None:
    """Memory bandwidth in bytes/s from MEMORY_BANDWIDTH, None if the device is not listed."""
    return next((bw for key, bw in MEMORY_BANDWIDTH if key in device_name), None)


def _build(spec: dict) -> tuple[Callable[[], None], dict]:
    """Inputs and a zero-grad + forward + backward step for one case."""
    import torch
    import torch.nn.functional as F

    import kernels
    import kernels.dispatch  # noqa: F401  (import before the memory baseline is taken)

    torch.manual_seed(0)
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])

    def param(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, device=device, dtype=dtype) * scale).requires_grad_(True)

    extra: dict = {}
    if spec["layer"] in ("peer", "ffw"):
        tokens, dim = spec["tokens"], spec["dim"]
        x = param(tokens, dim)
        grad_out = torch.randn(tokens, dim, device=device, dtype=dtype)
    if spec["layer"] == "peer":
        rows, heads, top_k = spec["rows"], spec["heads"], spec["top_k"]
        index = torch.randint(0, rows, (tokens, heads, top_k), device=device)
        scores = torch.softmax(torch.randn(tokens, heads, top_k, device=device), -1).to(dtype).requires_grad_(True)
        down, up = param(rows, dim, scale=dim**-0.5), param(rows, dim, scale=dim**-0.5)
        leaves = [x, scores, down, up]
        touched = torch.unique(index).numel()
        item, pairs = torch.finfo(dtype).bits // 8, tokens * heads * top_k
        # rows: U,V read in forward and backward, dU,dV written; tokens: x,dy read twice, y,dx written;
        # pairs: index (8 B) read twice, scores read twice, pre-activations (fp32) written and read, dscores written.
        extra["min_bytes"] = 6 * touched * dim * item + 6 * tokens * dim * item + pairs * (16 + 3 * item + 8)

        def forward() -> torch.Tensor:
            return kernels.peer_experts(x, index, scores, down, up, activation="gelu", backend=spec["backend"],
                                        sparse_grad=spec.get("sparse_grad", False))
    elif spec["layer"] == "ffw":
        w1, w2 = param(dim, 4 * dim, scale=dim**-0.5), param(4 * dim, dim, scale=(4 * dim) ** -0.5)
        leaves = [x, w1, w2]

        def forward() -> torch.Tensor:
            return F.gelu(x @ w1) @ w2
    else:
        tokens, d_model, experts, group, top_k = spec["tokens"], 512, spec["experts"], 128, 4
        x = param(tokens, d_model)
        grad_out = torch.randn(tokens, d_model, device=device, dtype=dtype)
        if spec["layer"] == "sigma_moe":
            selection = param(d_model, experts, scale=d_model**-0.5)
            w1, w2 = param(experts, d_model, group, scale=d_model**-0.5), param(experts, group, d_model, scale=0.05)
            leaves = [x, selection, w1, w2]

            def forward() -> torch.Tensor:
                gates, index = torch.sigmoid(x @ selection).topk(top_k, dim=-1)  # (T, K)
                flat = index.reshape(-1)  # (T*K,)
                rows = x.unsqueeze(1).expand(tokens, top_k, d_model).reshape(-1, d_model)  # (T*K, d_model)
                hidden = F.relu(kernels.cvmm(rows, flat, w1, backend=spec["backend"]))  # (T*K, G)
                return kernels.cvmm_weighted_reduce(hidden, flat, gates, w2, backend=spec["backend"])
        else:
            w1, w2 = param(d_model, experts * group, scale=d_model**-0.5), param(experts * group, d_model, scale=0.05)
            leaves = [x, w1, w2]

            def forward() -> torch.Tensor:
                return F.relu(x @ w1) @ w2

    def step() -> None:
        for leaf in leaves:
            leaf.grad = None
        forward().backward(grad_out)

    return step, extra


def _run_case(spec: dict) -> dict:
    """Time (best of spec["repeats"] after one warm-up; robust to a shared machine) and peak memory of one case."""
    import resource

    import torch

    step, extra = _build(spec)
    cuda = spec["device"].startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
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
    except torch.OutOfMemoryError:
        return {**extra, "error": "out of memory"}
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - base
    return {**extra, "seconds": min(times), "peak_bytes": max(peak, 0)}


def _run_isolated(spec: dict) -> dict:
    """CPU: one fresh process per case so that ru_maxrss is this case's peak."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_run_case, (spec,))


def _print_rows(title: str, rows: list[tuple[str, dict]], baseline: str) -> None:
    base = dict(rows).get(baseline, {})
    print(f"\n{title}  (ratios: x {baseline})")
    print(f"{'case':<34}{'fwd+bwd ms':>12}{'time ratio':>12}{'peak MiB':>12}{'mem ratio':>12}")
    for name, result in rows:
        if "error" in result:
            print(f"{name:<34}{result['error']:>12}")
            continue
        ms, mib = result["seconds"] * 1e3, result["peak_bytes"] / 2**20
        time_ratio = result["seconds"] / base["seconds"] if base.get("seconds") else math.nan
        mem_ratio = result["peak_bytes"] / base["peak_bytes"] if base.get("peak_bytes") else math.nan
        print(f"{name:<34}{ms:>12.2f}{time_ratio:>12.2f}{mib:>12.1f}{mem_ratio:>12.2f}")


def main(argv: list[str] | None = None) -> int:
    """Run the kernel benchmarks; returns the exit status."""
    parser = argparse.ArgumentParser(prog="isoflop bench kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when available)")
    parser.add_argument("--only", choices=["peer", "cvmm", "all"], default="all")
    parser.add_argument("--tokens", type=int, help="PEER tokens (GPU 16384, CPU 2048)")
    parser.add_argument("--dim", type=int, help="PEER model width d (GPU 1024, CPU 256)")
    parser.add_argument("--rows", type=int, help="PEER experts N (GPU 1024^2, CPU 256^2)")
    parser.add_argument("--heads", type=int, help="PEER heads h (8)")
    parser.add_argument("--top-k", type=int, help="PEER experts per head k (16)")
    parser.add_argument("--moe-tokens", type=int, help="sigma-MoE tokens (GPU 32768, CPU 2048)")
    parser.add_argument("--experts", type=int, nargs="+", help="sigma-MoE N_E values (GPU 8..128, CPU 8 16 32)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="GPU bfloat16, CPU float32")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions after one warm-up (best is reported)")
    parser.add_argument("--skip-reference", action="store_true", help="do not run the naive reference paths")
    parser.add_argument("--bandwidth-gbs", type=float, help="memory bandwidth in GB/s for the PEER bound")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible; use --device cpu", file=sys.stderr)
        return 2
    cuda = device.startswith("cuda")
    defaults = GPU_DEFAULTS if cuda else CPU_DEFAULTS
    size = {key: getattr(args, key) if getattr(args, key, None) is not None else value
            for key, value in defaults.items()}
    kernel_backend = "triton" if cuda else "torch"
    run = _run_case if cuda else _run_isolated
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    common = {"device": device, "dtype": size["dtype"], "repeats": args.repeats}
    print(f"device: {device_name}; dtype {size['dtype']}; best of {args.repeats} after a warm-up")
    results: dict[str, Any] = {"device": device_name, "dtype": size["dtype"], "peer": {}, "cvmm": {}}

    if args.only in ("peer", "all"):
        peer = {**common, "layer": "peer", **{k: size[k] for k in ("tokens", "dim", "rows", "heads", "top_k")}}
        cases = [(f"peer {kernel_backend}", {**peer, "backend": kernel_backend}),
                 (f"peer {kernel_backend} sparse_grad", {**peer, "backend": kernel_backend, "sparse_grad": True})]
        if not args.skip_reference:
            cases.append(("peer reference (gather+einsum)", {**peer, "backend": "reference"}))
        cases.append(("dense FFW d_ff=4d", {**peer, "layer": "ffw"}))
        rows = [(name, run(spec)) for name, spec in cases]
        results["peer"] = dict(rows)
        _print_rows(f"PEER T={peer['tokens']} d={peer['dim']} N={peer['rows']} h={peer['heads']} k={peer['top_k']}",
                    rows, "dense FFW d_ff=4d")
        bandwidth = args.bandwidth_gbs * 1e9 if args.bandwidth_gbs else bandwidth_for(device_name)
        min_bytes = rows[0][1].get("min_bytes", 0)
        bound = f"{min_bytes / bandwidth * 1e3:.2f} ms at {bandwidth / 1e12:.2f} TB/s" if bandwidth else \
            "unknown bandwidth (pass --bandwidth-gbs)"
        print(f"memory-traffic bound: {min_bytes / 1e9:.2f} GB must move -> {bound}")
        results["peer_min_bytes"], results["bandwidth_bytes_per_s"] = min_bytes, bandwidth

    if args.only in ("cvmm", "all"):
        for experts in size["experts"]:
            moe = {**common, "layer": "sigma_moe", "tokens": size["moe_tokens"], "experts": experts}
            cases = [(f"sigma-MoE cvmm {kernel_backend}", {**moe, "backend": kernel_backend})]
            if not args.skip_reference and size["moe_tokens"] * 4 * 512 * 128 * 4 <= 2**30:  # gathered (T*K, 512, 128) fp32
                cases.append(("sigma-MoE cvmm reference", {**moe, "backend": "reference"}))
            cases.append((f"dense MLP d_ff={experts * 128}", {**moe, "layer": "dense_mlp"}))
            rows = [(name, run(spec)) for name, spec in cases]
            results["cvmm"][experts] = dict(rows)
            _print_rows(f"sigma-MoE T={size['moe_tokens']} d_model=512 K=4 G=128 N_E={experts}", rows, rows[-1][0])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
