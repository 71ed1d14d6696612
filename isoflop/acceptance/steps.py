"""What ``isoflop gpu-acceptance`` runs, in order, and what each step measures.

1. ``gpu_tests``: ``pytest -m gpu`` (the bf16 Triton kernel tests).
2. ``train_dense``, ``train_moe``, ``train_peer``: ``isoflop train`` on the runs
   ``sweeps/gpu_acceptance.yaml`` plans (a few hundred bf16 steps each, on the
   offline corpus); figures: tokens/s and MFU (whole run and last logged interval).
3. ``bench_kernels_peer``: ``isoflop bench kernels --only peer`` at the PEER
   paper's layer (N = 1024², h = 8, k = 16, d = 1024, 16k tokens, bf16): the
   fused Triton kernel vs the gather+einsum reference vs the bytes-moved bound.
   ``bench_kernels_cvmm``: the CVMM sigma-MoE vs a dense MLP (Csordas et al. Fig. 2).
4. ``ddp_equivalence``, ``fsdp_equivalence``: with 2+ devices, the same fp32 runs
   in one process and in two (``torch.distributed.run``); every logged loss must
   agree within :data:`isoflop.acceptance.figures.EQUIVALENCE_RELATIVE_TOLERANCE`.
   A mode whose ``train.*`` option does not exist in this version is skipped
   with that reason, and runs as soon as the option appears.

The CPU rehearsal runs the same steps with the same flags at toy sizes on the
CPU (two gloo processes for the equivalence), so a broken step shows up before
GPU time is spent on it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from isoflop.acceptance.figures import (
    Figures, bench_figures, cvmm_bench_headline, equivalence_figures, equivalence_headline, peer_bench_headline,
    gpu_test_figures, gpu_tests_headline, training_figures, training_headline,
)
from isoflop.errors import UserError
from kernels.bench import GPU_DEFAULTS, size_arguments

REPOSITORY = Path(__file__).resolve().parents[2]
SWEEP = "gpu_acceptance"
ISOFLOP = [sys.executable, "-m", "isoflop.cli"]
TRAINED_METHODS = ("dense", "moe", "peer")
EQUIVALENCE_METHODS = ("dense", "peer")
EQUIVALENCE_PROCESSES = 2
# parallel mode -> the overrides of its multi-process run (DDP is what several processes do by default)
PARALLEL_MODES: dict[str, tuple[str, ...]] = {"ddp": (), "fsdp": ("train.parallelism=fsdp",)}
KERNEL_SIZE_KEYS = {"peer": ("tokens", "dim", "rows", "heads", "top_k", "dtype"),
                    "cvmm": ("moe_tokens", "experts", "dtype")}
TIME_LIMITS_S = {"gpu_tests": 150.0, "train": 120.0, "bench_kernels_peer": 150.0, "bench_kernels_cvmm": 100.0,
                 "equivalence": 180.0}


@dataclass(frozen=True)
class Profile:
    """Where and at what size the steps run."""

    name: str  # gpu | cpu-rehearsal
    device: str  # cuda | cpu
    sweep_overrides: tuple[str, ...]  # applied to sweeps/gpu_acceptance.yaml
    training_budget: float | None  # FLOPs per training run (None: the sweep's)
    equivalence_budget: float  # FLOPs per equivalence run (fp32, a few dozen steps)
    kernel_sizes: dict[str, Any]  # `isoflop bench kernels` sizes, keys as kernels.bench.GPU_DEFAULTS
    kernel_repeats: int
    tests_must_run: bool  # a skipped gpu test is a failure
    environment: tuple[tuple[str, str], ...] = ()  # set for every command, on top of this process's


# sweeps/gpu_acceptance.yaml as it is; 7e14 FLOPs is about 30 steps of the dense and PEER models.
GPU = Profile(name="gpu", device="cuda", sweep_overrides=(), training_budget=None, equivalence_budget=7e14,
              kernel_sizes=GPU_DEFAULTS, kernel_repeats=5, tests_must_run=True)
# Toy sizes: about 10 training steps per model in seconds, 5 per equivalence run; the CPU even on a GPU machine.
CPU_REHEARSAL = Profile(
    name="cpu-rehearsal", device="cpu",
    sweep_overrides=("ladder.shapes=[[1,32,2]]", "ladder.min_steps=5", "train.batch_size=4", "train.seq_len=32",
                     "train.log_every_steps=2", "train.eval_tokens=1024", "methods.moe.n_experts=4",
                     "methods.moe.routing_group=2",  # whole groups in the 2-sequence micro-batches of the equivalence
                     "methods.peer.n_experts=256", "methods.peer.n_heads=2", "methods.peer.top_k=4",
                     "methods.peer.d_key=16"),
    training_budget=2e8, equivalence_budget=1e8,
    kernel_sizes={"tokens": 64, "dim": 32, "rows": 1024, "heads": 2, "top_k": 4, "dtype": "float32",
                  "moe_tokens": 64, "experts": [4]},
    kernel_repeats=1, tests_must_run=False, environment=(("CUDA_VISIBLE_DEVICES", ""),))


@dataclass
class Step:
    """One check: commands run in order under ``time_limit_s``, then ``evaluate`` reads what they wrote."""

    name: str
    purpose: str
    time_limit_s: float
    commands: list[list[str]]
    evaluate: Callable[[], tuple[Figures, list[str]]]  # figures, and problems that fail the step
    headline: Callable[[Figures], str]
    prepare: Callable[[], None] = lambda: None  # writes the run.json files the commands train
    skip_reason: str | None = None
    error: str | None = None  # a problem found while building the step: it fails without running
    plan: str = ""  # what the step will do, in one line (the headline of a dry run)


# ---- planning the training runs --------------------------------------------------------------------------

def planned_runs(profile: Profile, budget: float | None, overrides: tuple[str, ...]) -> dict[str, Any]:
    """method -> the RunSpec ``sweeps/gpu_acceptance.yaml`` plans for it (the first, if several)."""
    from isoflop.compose import load_study
    from isoflop.planner import plan

    composed = load_study(SWEEP, [*profile.sweep_overrides, *overrides], [budget] if budget else None)
    runs: dict[str, Any] = {}
    for run in plan(composed.study).runs:
        runs.setdefault(run.method, run)
    return runs


def equivalence_overrides(profile: Profile) -> tuple[str, ...]:
    """fp32, every step's loss logged, and in both runs micro-batches of one rank's share of the batch, so
    that batch statistics (PEER's query BatchNorm) see the same tokens in one process as in several."""
    from isoflop.compose import load_study

    batch_size = load_study(SWEEP, list(profile.sweep_overrides)).study.train.batch_size
    return ("train.precision=fp32", "train.log_every_steps=1",
            f"train.micro_batch_size={batch_size // EQUIVALENCE_PROCESSES}")


def write_run_specs(specs: dict[Path, Any]) -> None:
    """``run.json`` of each run directory, as ``isoflop submit`` writes it (kept if already there)."""
    from isoflop.commands.common import write_output_file

    for run_dir, spec in specs.items():
        if not (run_dir / "run.json").is_file():
            run_dir.mkdir(parents=True, exist_ok=True)
            write_output_file(run_dir / "run.json", json.dumps(spec.to_dict()), "--out")


def spec_summary(spec: Any) -> str:
    """A planned run in a few words: id, optimizer steps, tokens per step."""
    return f"{spec.run_id}: {spec.steps} steps of {spec.batch_size}x{spec.seq_len} tokens"


def missing_train_fields(overrides: tuple[str, ...]) -> list[str]:
    """The ``train.X`` keys of ``overrides`` that :class:`TrainConfig` does not have."""
    from isoflop.study_config import TrainConfig

    known = {option.name for option in dataclasses.fields(TrainConfig)}
    keys = [override.split("=", 1)[0] for override in overrides]
    return [key for key in keys if key.startswith("train.") and key.split(".", 1)[1] not in known]


# ---- the steps ------------------------------------------------------------------------------------------

def tests_step(profile: Profile, out: Path) -> Step:
    junit_xml = out / "gpu_tests.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
               f"--junitxml={junit_xml}", "tests"]
    return Step("gpu_tests", "the tests marked gpu (bf16 Triton kernels against fp32 references)",
                TIME_LIMITS_S["gpu_tests"], [command],
                evaluate=functools.partial(gpu_test_figures, junit_xml, profile.tests_must_run),
                headline=gpu_tests_headline)


def training_steps(profile: Profile, out: Path) -> list[Step]:
    try:
        runs, error = planned_runs(profile, profile.training_budget, ()), None
    except UserError as problem:
        runs, error = {}, problem.message
    steps = []
    for method in TRAINED_METHODS:
        run_dir = out / "runs" / "train" / method
        spec = runs.get(method)
        steps.append(Step(
            f"train_{method}", f"train the {method} model of sweeps/{SWEEP}.yaml with `isoflop train`",
            TIME_LIMITS_S["train"], [[*ISOFLOP, "train", str(run_dir)]],
            evaluate=functools.partial(training_figures, run_dir, profile.device), headline=training_headline,
            prepare=functools.partial(write_run_specs, {run_dir: spec}),
            error=error or (None if spec else f"sweeps/{SWEEP}.yaml plans no {method} run"),
            plan=spec_summary(spec) if spec else ""))
    return steps


def kernel_step(profile: Profile, out: Path, only: str) -> Step:
    json_path = out / f"bench_kernels_{only}.json"
    sizes = {key: profile.kernel_sizes[key] for key in KERNEL_SIZE_KEYS[only]}
    command = [*ISOFLOP, "bench", "kernels", "--only", only, "--device", profile.device, *size_arguments(sizes),
               "--repeats", str(profile.kernel_repeats), "--json", str(json_path)]
    purpose = ("PEER: fused kernel vs gather+einsum reference vs bytes-moved bound" if only == "peer" else
               "sigma-MoE with the CVMM kernel vs a dense MLP of the same expert parameters")
    return Step(f"bench_kernels_{only}", purpose, TIME_LIMITS_S[f"bench_kernels_{only}"], [command],
                evaluate=functools.partial(bench_figures, json_path),
                headline=peer_bench_headline if only == "peer" else cvmm_bench_headline,
                plan=" ".join(size_arguments(sizes)))


def _equivalence_specs(profile: Profile, mode_overrides: tuple[str, ...], single_dirs: dict[str, Path],
                       parallel_dirs: dict[str, Path]) -> tuple[dict[Path, Any], str | None]:
    """run directory -> RunSpec for both sides of an equivalence step, or the problem that prevents it."""
    try:
        overrides = equivalence_overrides(profile)
        single = planned_runs(profile, profile.equivalence_budget, overrides)
        parallel = planned_runs(profile, profile.equivalence_budget, (*overrides, *mode_overrides))
    except UserError as problem:
        return {}, problem.message
    missing = [method for method in EQUIVALENCE_METHODS if method not in single or method not in parallel]
    if missing:
        return {}, f"sweeps/{SWEEP}.yaml plans no {', '.join(missing)} run"
    return {**{single_dirs[method]: single[method] for method in EQUIVALENCE_METHODS},
            **{parallel_dirs[method]: parallel[method] for method in EQUIVALENCE_METHODS}}, None


def equivalence_step(profile: Profile, out: Path, mode: str, cuda_devices: int) -> Step:
    """One process vs EQUIVALENCE_PROCESSES processes under ``mode`` (fp32, every step's loss logged)."""
    mode_overrides = PARALLEL_MODES[mode]
    single_dirs = {method: out / "runs" / "single" / method for method in EQUIVALENCE_METHODS}
    parallel_dirs = {method: out / "runs" / mode / method for method in EQUIVALENCE_METHODS}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={EQUIVALENCE_PROCESSES}", "-m", "isoflop.cli", "train"]
    commands = [command for method in EQUIVALENCE_METHODS
                for command in ([*ISOFLOP, "train", str(single_dirs[method])],
                                [*launcher, str(parallel_dirs[method])])]
    missing = missing_train_fields(mode_overrides)
    reasons = [f"{', '.join(missing)} does not exist in this version; this step runs once it does"] if missing else []
    if profile.device == "cuda" and cuda_devices < EQUIVALENCE_PROCESSES:
        reasons.append(f"needs {EQUIVALENCE_PROCESSES}+ CUDA devices; {cuda_devices} visible")
    specs, error = ({}, None) if reasons else _equivalence_specs(profile, mode_overrides, single_dirs, parallel_dirs)
    pairs = {method: (single_dirs[method], parallel_dirs[method]) for method in EQUIVALENCE_METHODS}
    return Step(f"{mode}_equivalence", f"{mode}: {', '.join(EQUIVALENCE_METHODS)} in one process vs "
                f"{EQUIVALENCE_PROCESSES}, fp32 losses equal", TIME_LIMITS_S["equivalence"], commands,
                evaluate=functools.partial(equivalence_figures, pairs, EQUIVALENCE_PROCESSES),
                headline=equivalence_headline, prepare=functools.partial(write_run_specs, specs),
                skip_reason="; ".join(reasons) or None, error=error,
                plan="; ".join(spec_summary(specs[run_dir]) for run_dir in single_dirs.values() if run_dir in specs))


def build_steps(profile: Profile, out: Path, cuda_devices: int) -> list[Step]:
    """Every step in the order it runs."""
    return [tests_step(profile, out), *training_steps(profile, out), kernel_step(profile, out, "peer"),
            kernel_step(profile, out, "cvmm"),
            *(equivalence_step(profile, out, mode, cuda_devices) for mode in PARALLEL_MODES)]
