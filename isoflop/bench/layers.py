"""Benchmark FFW layers on this machine: ``isoflop bench layers``.

Times forward+backward of a PEER layer (He 2024) beside a dense FFW
(d_ff = 4·d_model) on the same tokens and reports the ratios of time and of
peak memory, the PEER routing alone (query, normalisation, sub-key scores,
top-k, router scores), and the PEER step's bound on this machine (matmul
FLOPs at a measured matmul rate plus the bytes the step must move at a
measured bandwidth, see :mod:`isoflop.bench.layer_bound`) with the measured time's
ratio to it. The PEER layer and its routing are timed with each query
normalisation: ``peer`` with the default (causal prefix statistics) and
``peer_batch_norm`` with the paper's BatchNorm. Then it builds a PEER layer
with a million experts and runs it once.

Peak memory is the highest total of bytes allocated by torch during one
forward+backward (parameter gradients included, the parameters themselves
not), read from the profiler's allocation events; on CUDA it is
``torch.cuda.max_memory_allocated`` above the starting level.

Usage::

    python -m isoflop.bench.layers [--d-model 256] [--n-experts 65536] [--tokens 2048] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from typing import Callable

import torch

from isoflop.bench.layer_bound import StepBound, peer_step_bound, rate_probes
from isoflop.commands.common import (
    device_choice,
    positive_count,
    require_device,
    writable_file,
    write_output_file,
)
from isoflop.errors import UserError
from kernels.host_memory import keep_freed_memory
from models.builder import build_ffw
from models.ffw.base import FFWLayer
from models.ffw.config_base import QUERY_NORM_STATISTICS
from models.ffw.dense_config import DenseFFWConfig
from models.ffw.peer_config import PEERConfig
from models.ffw.product_keys import router_scores
from models.verify import forced_kernel_backend


def peak_step_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Highest bytes allocated above the starting level while running ``step``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    memory_events = sorted((event.start_ns(), event.nbytes())
                           for event in profiler.profiler.kineto_results.events() if event.name() == "[memory]")
    running = peak = 0
    for _, change in memory_events:
        running += change
        peak = max(peak, running)
    return peak


def step_inputs(d_model: int, tokens: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed inputs of every benchmarked step: x (1, tokens, d) and dL/dy of the same shape."""
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, tokens, d_model, device=device, generator=generator).requires_grad_(True)
    return x, torch.randn(1, tokens, d_model, device=device, generator=generator)


def finish_step(layer: FFWLayer, x: torch.Tensor, device: torch.device) -> None:
    """Free the gradients a step created, so that every step starts without any and its peak includes them."""
    for parameter in layer.parameters():
        parameter.grad = None
    x.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(layer: FFWLayer, tokens: int, device: torch.device,
              kernel_backend: str | None = None) -> Callable[[], None]:
    """One forward+backward of ``layer`` on the fixed inputs of :func:`step_inputs`."""
    x, upstream = step_inputs(layer.d_model, tokens, device)

    def step() -> None:
        backend = forced_kernel_backend(kernel_backend) if kernel_backend is not None else contextlib.nullcontext()
        with backend:
            layer(x).backward(upstream)
        finish_step(layer, x, device)

    return step


def make_routing_step(layer: FFWLayer, tokens: int, device: torch.device) -> Callable[[], None]:
    """Forward+backward of a PEER layer's routing alone: retrieval and router scores, with a
    fixed upstream gradient on the scores (M, h, k)."""
    x, _ = step_inputs(layer.d_model, tokens, device)
    upstream = torch.randn(tokens, layer.config.n_heads, layer.config.top_k, device=device,
                           generator=torch.Generator(device=device).manual_seed(1))

    def step() -> None:
        key_scores, _ = layer.retrieval(x)
        router_scores(key_scores, layer.config.score).backward(upstream)
        finish_step(layer, x, device)

    return step


def median_seconds(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds per step; repetitions are interleaved across the steps so that a
    change in machine load hits all of them alike."""
    for step in steps.values():
        step()  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)
    return {name: sorted(times)[len(times) // 2] for name, times in seconds.items()}


def measure_steps(steps: dict[str, Callable[[], None]], repeats: int,
                  device: torch.device) -> dict[str, dict[str, float]]:
    """Median seconds (interleaved, :func:`median_seconds`) and peak bytes per step."""
    return {name: {"seconds": seconds, "peak_bytes": float(peak_step_bytes(steps[name], device))}
            for name, seconds in median_seconds(steps, repeats).items()}


def query_norm_variants(default_config: PEERConfig) -> dict[str, PEERConfig]:
    """The PEER layers timed against their bound: ``peer`` with the config's default query
    normalisation and ``peer_<statistics>_norm`` with each other one (``batch``: the paper's
    BatchNorm, not causal)."""
    return {"peer": default_config} | {
        f"peer_{statistics}_norm": dataclasses.replace(default_config, query_norm_statistics=statistics)
        for statistics in QUERY_NORM_STATISTICS if statistics != default_config.query_norm_statistics}


def with_suffix(prefix: str, variant: str) -> str:
    """``peer_routing`` for the default ``peer``, ``peer_routing_batch_norm`` for ``peer_batch_norm``."""
    return prefix + variant.removeprefix("peer")


def compare_peer_to_dense(args: argparse.Namespace, device: torch.device) -> dict[str, dict]:
    """Dense FFW vs PEER with each query normalisation (and its routing alone), the default
    PEER's sparse table gradients and materialising reference, and each PEER variant's step
    bound from rates measured in the same interleaved repetitions (under ``"bound"``, by
    variant, see :class:`isoflop.bench.layer_bound.StepBound`)."""
    d_model = args.d_model
    dense = build_ffw(DenseFFWConfig(d_ff=4 * d_model, activation="gelu"), d_model, 12, device=device)
    variants = query_norm_variants(PEERConfig(n_experts=args.n_experts, n_heads=args.heads, top_k=args.top_k,
                                              d_key=args.d_key))
    layers = {name: build_ffw(config, d_model, 12, device=device) for name, config in variants.items()}
    steps = {"dense": make_step(dense, args.tokens, device)}
    for name, layer in layers.items():
        steps[name] = make_step(layer, args.tokens, device)
        steps[with_suffix("peer_routing", name)] = make_routing_step(layer, args.tokens, device)
    peer_sparse = build_ffw(variants["peer"], d_model, 12, device=device, sparse_tables=True)
    steps["peer_sparse_tables"] = make_step(peer_sparse, args.tokens, device)
    if not args.skip_reference:
        steps["peer_reference_backend"] = make_step(layers["peer"], args.tokens, device, kernel_backend="reference")
    probes = rate_probes(device)
    seconds = median_seconds({**steps, **{name: probe for name, (probe, _) in probes.items()}}, args.repeats)
    results: dict[str, dict] = {name: {"seconds": seconds[name], "peak_bytes": float(peak_step_bytes(step, device))}
                                for name, step in steps.items()}
    for result in results.values():
        result["time_vs_dense"] = result["seconds"] / results["dense"]["seconds"]
        result["memory_vs_dense"] = result["peak_bytes"] / max(1.0, results["dense"]["peak_bytes"])
    rates = {name: work / seconds[name] for name, (_, work) in probes.items()}
    x = step_inputs(d_model, args.tokens, device)[0]
    bounds = {name: peer_step_bound(layer, x, rates) for name, layer in layers.items()}
    for name, bound in bounds.items():
        results[name]["time_vs_bound"] = results[name]["seconds"] / bound.seconds
    results["bound"] = {name: bound.to_dict() for name, bound in bounds.items()}
    return results


def format_comparison(comparison: dict[str, dict]) -> str:
    """The comparison as a table, then the rates, each PEER variant's bound and how it is computed."""
    lines = [f"{'layer':<30}{'fwd+bwd ms':>12}{'peak MiB':>10}{'time/dense':>12}{'mem/dense':>11}"]
    for name, result in comparison.items():
        if name != "bound":
            lines.append(f"{name:<30}{1e3 * result['seconds']:>12.1f}{result['peak_bytes'] / 2 ** 20:>10.1f}"
                         f"{result['time_vs_dense']:>12.2f}{result['memory_vs_dense']:>11.2f}")
    bounds = {name: StepBound(**{field: values[field] for field in StepBound.__dataclass_fields__})
              for name, values in comparison["bound"].items()}
    rates = bounds["peer"]
    lines += [
        (f"rates measured in this run: {rates.matmul_flops_per_second / 1e9:.0f} GFLOP/s fp32 matmul; "
         f"{rates.copy_bytes_per_second / 1e9:.1f} GB/s copy, {rates.gather_bytes_per_second / 1e9:.1f} GB/s "
         "row gather (read + written)"),
        ("PEER step bound = matmul FLOPs / matmul rate + bytes / max(copy, gather) bandwidth (the sum: the "
         "matmuls and the row traffic run as separate ops, one after the other)"),
    ]
    for name, bound in bounds.items():
        lines += [
            (f"  {name}: {bound.step_matmul_flops / 1e9:.2f} GFLOP -> {1e3 * bound.matmul_seconds:.1f} ms  +  "
             f"{bound.step_bytes / 1e6:.0f} MB ({bound.touched_rows} expert rows touched) -> "
             f"{1e3 * bound.memory_seconds:.1f} ms  =  {1e3 * bound.seconds:.1f} ms"),
            (f"  {name} measured {1e3 * comparison[name]['seconds']:.1f} ms = "
             f"{comparison[name]['time_vs_bound']:.2f} x the bound"),
        ]
    return "\n".join(lines)


def run_million_experts(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Build a PEER layer with N = 1024² experts and run one forward+backward."""
    start = time.perf_counter()
    config = PEERConfig(n_experts=1024 ** 2, n_heads=args.heads, top_k=args.top_k, d_key=args.d_key)
    layer = build_ffw(config, args.d_model, 12, device=device, sparse_tables=True)
    build_seconds = time.perf_counter() - start
    result = measure_steps({"peer": make_step(layer, args.large_tokens, device)}, 1, device)["peer"]
    result.update(build_seconds=build_seconds, tokens=args.large_tokens,
                  n_params=float(sum(p.numel() for p in layer.parameters())))
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    count = positive_count
    parser.add_argument("--d-model", type=count, default=256, help="residual width d")
    parser.add_argument("--n-experts", type=count, default=256 ** 2, help="PEER experts N (a perfect square)")
    parser.add_argument("--heads", type=count, default=8, help="PEER heads h")
    parser.add_argument("--top-k", type=count, default=16, help="PEER experts per head k")
    parser.add_argument("--d-key", type=count, default=128, help="PEER query/key width")
    parser.add_argument("--tokens", type=count, default=2048, help="tokens per forward+backward")
    parser.add_argument("--repeats", type=count, default=9, help="timed repetitions, interleaved across the layers (median reported)")
    parser.add_argument("--large-tokens", type=count, default=128, help="tokens for the N = 1024² run")
    parser.add_argument("--skip-large", action="store_true", help="skip the N = 1024² run")
    parser.add_argument("--skip-reference", action="store_true", help="skip the materialising reference backend")
    parser.add_argument("--device", type=device_choice, default="auto",
                        help="cuda, cuda:N, cpu or auto (cuda when available)")
    parser.add_argument("--json", type=writable_file, metavar="PATH", help="also write the results to this JSON file")


def validate_arguments(args: argparse.Namespace) -> torch.device:
    """The device to run on; the PEER configurations checked before anything is built (UserError naming the flags)."""
    device = torch.device(require_device(args.device))
    sizes = [args.n_experts] + ([] if args.skip_large else [1024 ** 2])
    for n_experts in sizes:
        try:
            PEERConfig(n_experts=n_experts, n_heads=args.heads, top_k=args.top_k, d_key=args.d_key)
        except UserError as error:
            raise UserError(f"{error.message} (the PEER layer set by --n-experts, --heads, --top-k, --d-key)") from None
    return device


def run(args: argparse.Namespace) -> int:
    device = validate_arguments(args)
    keep_freed_memory()  # as a training process does (isoflop.train.run)
    print(f"device={device} threads={torch.get_num_threads()} d_model={args.d_model} tokens={args.tokens} "
          f"PEER N={args.n_experts} h={args.heads} k={args.top_k} d_key={args.d_key}", flush=True)
    comparison = compare_peer_to_dense(args, device)
    print(format_comparison(comparison), flush=True)
    report: dict[str, object] = {"comparison": comparison}
    if not args.skip_large:
        large = run_million_experts(args, device)
        report["million_experts"] = large
        print(f"PEER N=1024² d={args.d_model}: {large['n_params'] / 1e6:.0f}M params, built in "
              f"{large['build_seconds']:.1f} s, fwd+bwd of {args.large_tokens} tokens {large['seconds']:.2f} s, "
              f"peak {large['peak_bytes'] / 2 ** 20:.0f} MiB (sparse table gradients)")
    if args.json:
        write_output_file(args.json, json.dumps(report, indent=2) + "\n", "--json")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m isoflop.bench.layers ARGS``: the same as ``isoflop bench layers ARGS``."""
    from isoflop.cli import main as isoflop_main

    return isoflop_main(["bench", "layers", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
