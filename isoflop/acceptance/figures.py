"""What each acceptance step measured, read from the files its commands wrote, and its one-line headline.

Every reader returns ``(figures, problems)``: the figures go into acceptance.json
as they are; any problem fails the step (the figures are kept).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

from isoflop.bench.kernels import PEER_REFERENCE_CASE

Figures = dict[str, Any]
EQUIVALENCE_RELATIVE_TOLERANCE = 2e-3  # fp32 on both sides; only the gradient summation order differs


# ---- reading what the commands wrote ----------------------------------------------------------------------

def training_figures(run_dir: Path, device: str) -> tuple[Figures, list[str]]:
    """Throughput and losses of a finished run, from its result.json and metrics.jsonl."""
    from isoflop.atomic_files import read_jsonl
    from isoflop.run_records import RunResult

    result = RunResult.read(run_dir / "result.json")
    if result is None:
        return {}, [f"{run_dir / 'result.json'} was not written"]
    intervals = [record for record in read_jsonl(run_dir / "metrics.jsonl") if record.get("tokens_per_s")]
    last = intervals[-1] if intervals else {}
    validation = result.eval.get("validation")
    figures = {key: getattr(result, key) for key in ("run_id", "status", "steps", "tokens", "tokens_per_s", "mfu",
                                                     "final_train_loss", "wall_time_s", "device", "world_size",
                                                     "flops_per_token_train")}
    figures.update(params_total=result.params.total,
                   validation_loss=validation.loss if validation is not None else None,
                   last_interval_tokens_per_s=last.get("tokens_per_s"), last_interval_mfu=last.get("mfu"))
    problems = [] if result.status == "completed" else [f"the run ended {result.status}"]
    if device == "cuda" and result.device == "cpu":
        problems.append("it trained on the CPU, not on the GPU")
    return figures, problems


def logged_losses(run_dir: Path) -> list[float]:
    """The training loss of every logged step (resume markers and evaluation records left out)."""
    from isoflop.atomic_files import read_jsonl

    return [record["loss"] for record in read_jsonl(run_dir / "metrics.jsonl")
            if record.get("kind") is None and record.get("loss") is not None]


def equivalence_figures(pairs: dict[str, tuple[Path, Path]], processes: int) -> tuple[Figures, list[str]]:
    """Per method: the largest relative difference between the one- and the ``processes``-process losses."""
    figures, problems = {}, []
    for method, (single_dir, parallel_dir) in pairs.items():
        single, parallel = logged_losses(single_dir), logged_losses(parallel_dir)
        if not single or len(single) != len(parallel):
            problems.append(f"{method}: {len(single)} single-process and {len(parallel)} multi-process losses logged")
            continue
        difference = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(single, parallel))
        figures[method] = {"steps_compared": len(single), "max_relative_loss_difference": difference,
                           "final_loss_single": single[-1], "final_loss_parallel": parallel[-1],
                           "processes": processes, "tolerance": EQUIVALENCE_RELATIVE_TOLERANCE}
        if difference > EQUIVALENCE_RELATIVE_TOLERANCE:
            problems.append(f"{method}: losses differ by {difference:.2e} (relative) > "
                            f"{EQUIVALENCE_RELATIVE_TOLERANCE:g}")
    return figures, problems


def gpu_test_figures(junit_xml: Path, tests_must_run: bool) -> tuple[Figures, list[str]]:
    """Counts, failed tests and skip reasons from pytest's JUnit XML."""
    if not junit_xml.is_file():
        return {}, [f"{junit_xml} was not written"]
    cases = ElementTree.parse(junit_xml).getroot().iter("testcase")
    outcomes: dict[str, list[str]] = {"passed": [], "failed": [], "skipped": []}
    skip_reasons = []
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        outcomes["failed" if outcome in ("failure", "error") else outcome].append(name)
        skip_reasons += [child.get("message", "") for child in case if child.tag == "skipped"]
    figures = {"passed": len(outcomes["passed"]), "failed": len(outcomes["failed"]),
               "skipped": len(outcomes["skipped"]), "failed_tests": outcomes["failed"],
               "skip_reasons": sorted(set(skip_reasons))}
    problems = [f"failed: {', '.join(outcomes['failed'])}"] if outcomes["failed"] else []
    if tests_must_run and (outcomes["skipped"] or not outcomes["passed"]):
        problems.append(f"{len(outcomes['skipped'])} gpu tests skipped on the GPU "
                        f"({'; '.join(figures['skip_reasons'])[:200] or 'none ran'})")
    return figures, problems


def bench_figures(json_path: Path) -> tuple[Figures, list[str]]:
    """The benchmark's JSON as written; a case that failed (e.g. out of memory) is a problem."""
    if not json_path.is_file():
        return {}, [f"{json_path} was not written"]
    figures = json.loads(json_path.read_text())
    comparisons = [figures.get("peer", {})] + list(figures.get("cvmm", {}).get("by_experts", {}).values())
    problems = [f"{name}: {case['error']}" for comparison in comparisons
                for name, case in comparison.get("cases", {}).items() if "error" in case]
    return figures, problems


# ---- headlines: a step's figures in one line --------------------------------------------------------------

def _shown(value: float | None, form: str) -> str:
    return "n/a" if value is None else format(value, form)


def gpu_tests_headline(figures: Figures) -> str:
    return f"{figures.get('passed', 0)} passed, {figures.get('failed', 0)} failed, {figures.get('skipped', 0)} skipped"


def training_headline(figures: Figures) -> str:
    return (f"{figures.get('steps')} steps, {_shown(figures.get('tokens_per_s'), '.3g')} tok/s, "
            f"MFU {_shown(figures.get('mfu'), '.3f')} (last interval {_shown(figures.get('last_interval_mfu'), '.3f')})"
            f", val loss {_shown(figures.get('validation_loss'), '.3f')}")


def peer_bench_headline(figures: Figures) -> str:
    peer = figures.get("peer")
    if not peer:
        return ""
    bound, cases = peer["bound"], peer["cases"]
    kernel, reference = cases[bound["kernel_case"]], cases.get(PEER_REFERENCE_CASE, {})
    parts = [f"{bound['kernel_case']} {_shown(kernel.get('seconds') and kernel['seconds'] * 1e3, '.2f')} ms"]
    if reference.get("seconds") and kernel.get("seconds"):
        parts.append(f"reference {reference['seconds'] * 1e3:.2f} ms ({reference['seconds'] / kernel['seconds']:.1f}x)")
    if bound.get("seconds"):
        parts.append(f"bound {bound['seconds'] * 1e3:.2f} ms (kernel {_shown(bound.get('kernel_vs_bound'), '.2f')}x)")
    return "; ".join(parts)


def cvmm_bench_headline(figures: Figures) -> str:
    by_experts = figures.get("cvmm", {}).get("by_experts", {})
    ratios = [f"{experts}: {_shown(next(iter(entry['cases'].values())).get('time_ratio'), '.2f')}"
              for experts, entry in by_experts.items()]
    return f"cvmm/dense time by N_E {', '.join(ratios)}" if ratios else ""


def equivalence_headline(figures: Figures) -> str:
    return "; ".join(f"{method} max rel. loss diff {entry['max_relative_loss_difference']:.1e} over "
                     f"{entry['steps_compared']} steps" for method, entry in figures.items())
