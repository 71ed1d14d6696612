"""`isoflop gpu-acceptance` checked on the CPU: the dry run's plan and JSON, every
planned command parsed by the parser that will read it, the whole run rehearsed
at toy sizes, and the runner's time limits and failure handling.
(Without CUDA the command exits 2 with one line: tests/test_cli_errors.py.)"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import pytest

from conftest import wait_until
from isoflop.acceptance import figures, runner, steps
from isoflop.acceptance.report import SCHEMA_VERSION, STATUSES, AcceptanceReport, StepRecord
from isoflop.cli import command_parser, main
from isoflop.commands.bench import parse_bench_arguments
from isoflop.commands.common import parse_command_line
from record_support import run_result

STEP_NAMES = ["gpu_tests", "train_dense", "train_moe", "train_peer", "bench_kernels_peer", "bench_kernels_cvmm",
              "ddp_equivalence", "fsdp_equivalence"]
FSDP_EXISTS = not steps.missing_train_fields(steps.PARALLEL_MODES["fsdp"])


def acceptance(tmp_path: Path, name: str, *flags: str) -> dict:
    """Run the command in this process; returns acceptance.json."""
    assert main(["gpu-acceptance", "--out", str(tmp_path / name), *flags]) == 0
    report = json.loads((tmp_path / name / "acceptance.json").read_text())
    assert report["finished"] is True
    return report


def option_names(argv: list[str]) -> list[str]:
    return [argument.split("=")[0] for argument in argv if argument.startswith("-")]


def test_dry_run_lists_every_step_and_writes_the_schema(tmp_path: Path) -> None:
    report = acceptance(tmp_path, "dry", "--dry-run")
    assert set(report) == {field.name for field in dataclasses.fields(AcceptanceReport)}
    assert (report["schema_version"], report["mode"], report["dry_run"]) == (SCHEMA_VERSION, "gpu", True)
    assert [step["name"] for step in report["steps"]] == STEP_NAMES
    for step in report["steps"]:
        assert set(step) == {field.name for field in dataclasses.fields(StepRecord)}
        assert step["status"] in ("planned", "skipped") and step["wall_s"] is None, step
        assert step["commands"] and all(isinstance(arg, str) for argv in step["commands"] for arg in argv)
        assert 0 < step["time_limit_s"] <= report["time_limit_s"]
    by_name = {step["name"]: step for step in report["steps"]}
    peer_bench = " ".join(by_name["bench_kernels_peer"]["commands"][0])
    # The PEER paper's layer: N = 1024^2 experts, h = 8, k = 16, at d = 1024 on 16k tokens, bf16.
    assert "--rows 1048576 --heads 8 --top-k 16" in peer_bench and "--dim 1024" in peer_bench
    assert "--tokens 16384" in peer_bench and "--dtype bfloat16 " in peer_bench and "--device cuda" in peer_bench
    for method in ("dense", "moe", "peer"):
        assert "steps of 32x1024 tokens" in by_name[f"train_{method}"]["headline"]
    if not FSDP_EXISTS:
        assert by_name["fsdp_equivalence"]["status"] == "skipped"
        assert "train.parallelism does not exist" in by_name["fsdp_equivalence"]["reason"]


def test_every_planned_command_parses(tmp_path: Path) -> None:
    """The exact GPU command lines, through the parsers that will read them (nothing runs)."""
    report = acceptance(tmp_path, "dry", "--dry-run")
    from torch.distributed.run import get_args_parser

    for argv in (argv for step in report["steps"] for argv in step["commands"]):
        assert argv[0] == sys.executable and argv[1] == "-m", argv
        if argv[2] == "torch.distributed.run":
            launcher = get_args_parser().parse_args(argv[3:])
            assert launcher.module and launcher.training_script == "isoflop.cli"
            argv = [sys.executable, "-m", "isoflop.cli", *launcher.training_script_args]
        if argv[2] == "pytest":
            assert "tests" in argv and (Path(__file__).parent / "conftest.py").is_file()
            continue
        module, parser = command_parser(argv[3])
        args = parse_command_line(parser, argv[4:])
        if argv[3] == "bench":
            parse_bench_arguments(args.target, args.bench_args)
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"gpu: ' in pyproject  # the marker `pytest -m gpu` selects (--strict-markers)


@pytest.mark.slow
def test_cpu_rehearsal_runs_every_step_with_the_gpu_flags(tmp_path: Path) -> None:
    report = acceptance(tmp_path, "rehearsal", "--cpu-rehearsal")
    plan = acceptance(tmp_path, "dry", "--dry-run")
    by_name = {step["name"]: step for step in report["steps"]}
    for planned in plan["steps"]:
        rehearsed = by_name[planned["name"]]
        assert [option_names(argv) for argv in rehearsed["commands"]] == \
            [option_names(argv) for argv in planned["commands"]], planned["name"]
        expected = "skipped" if planned["name"] == "fsdp_equivalence" and not FSDP_EXISTS else "passed"
        assert rehearsed["status"] == expected, rehearsed
    for method in ("dense", "moe", "peer"):
        trained = by_name[f"train_{method}"]["figures"]
        assert trained["status"] == "completed" and trained["steps"] >= 5
        assert trained["tokens_per_s"] > 0 and trained["mfu"] > 0 and trained["validation_loss"] > 0
    peer_bench = by_name["bench_kernels_peer"]["figures"]["peer"]
    assert peer_bench["sizes"] == {key: value for key, value in steps.CPU_REHEARSAL.kernel_sizes.items()
                                   if key in ("tokens", "dim", "rows", "heads", "top_k")}
    assert all(case["seconds"] > 0 for case in peer_bench["cases"].values())
    assert by_name["bench_kernels_cvmm"]["figures"]["cvmm"]["by_experts"]["4"]["cases"]
    for method, entry in by_name["ddp_equivalence"]["figures"].items():
        assert entry["steps_compared"] >= 5 and entry["max_relative_loss_difference"] <= entry["tolerance"], method
    assert by_name["gpu_tests"]["figures"]["skipped"] >= 1  # no CUDA here: the gpu tests skip, with reasons
    assert all((tmp_path / "rehearsal" / step["log"]).is_file() for step in report["steps"] if step["log"])


# ---- the runner: limits and failures, with stand-in commands ----------------------------------------------

def stand_in(name: str, code: str, time_limit_s: float = 60.0, evaluate=lambda: ({}, [])) -> steps.Step:
    return steps.Step(name, "a stand-in", time_limit_s, [[sys.executable, "-c", code]], evaluate=evaluate,
                      headline=lambda found: "")


def run_all(planned: list[steps.Step], out: Path, deadline_s: float = 300.0) -> list[StepRecord]:
    records = [runner.step_record(step) for step in planned]
    deadline = time.monotonic() + deadline_s
    for step, record in zip(planned, records):
        runner.run_step(step, record, out, out, {}, deadline)
    return records


def test_a_hung_step_is_stopped_with_its_children_and_the_next_step_runs(tmp_path: Path) -> None:
    hang = ("import subprocess, sys, time; "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
            "print('pid of the child:', child.pid, flush=True); time.sleep(300)")
    hung, after = run_all([stand_in("hang", hang, time_limit_s=3), stand_in("after", "print('ok')")], tmp_path)
    assert hung.status == "timed_out" and "3 s limit" in hung.reason
    assert after.status == "passed" and after.reason is None
    (line,) = [line for line in (tmp_path / hung.log).read_text().splitlines() if line.startswith("pid of the child:")]
    child = int(line.split(":")[1])

    def child_is_gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{child}/stat").read_text().split(")")[1].split()[0] == "Z"  # exited, not yet reaped
    wait_until(child_is_gone, 30, "the hung step's child process to end")


def test_a_failing_command_and_unreadable_figures_fail_only_their_step(tmp_path: Path) -> None:
    def broken() -> tuple[dict, list[str]]:
        raise KeyError("tokens_per_s")

    failing, unreadable, fine = run_all([
        stand_in("failing", "import sys; print('boom: out of memory'); sys.exit(3)"),
        stand_in("unreadable", "pass", evaluate=broken),
        stand_in("fine", "pass", evaluate=lambda: ({"value": 1}, []))], tmp_path)
    assert failing.status == "failed" and failing.reason == "exit 3: boom: out of memory"
    assert unreadable.status == "failed" and "could not read the figures (KeyError" in unreadable.reason
    assert "Traceback" in (tmp_path / unreadable.log).read_text()
    assert fine.status == "passed" and fine.figures == {"value": 1}


def test_steps_past_the_overall_limit_are_skipped_with_the_reason(tmp_path: Path) -> None:
    (late,) = run_all([stand_in("late", "pass")], tmp_path, deadline_s=runner.MIN_STEP_S / 2)
    assert late.status == "skipped" and "overall time limit" in late.reason


def test_report_passes_only_without_failed_or_timed_out_steps() -> None:
    def report(*statuses: str) -> AcceptanceReport:
        records = [StepRecord(f"step{index}", "", [], 1.0, status=status) for index, status in enumerate(statuses)]
        return AcceptanceReport("gpu", False, 0.0, 1.0, {}, records, ".", {})

    assert set(STATUSES) == {"planned", "passed", "failed", "timed_out", "skipped"}
    assert report("passed", "skipped").passed()
    assert not report("passed", "timed_out").passed() and not report("failed").passed()
    assert report("passed", "skipped", "passed").counts() == {"passed": 2, "skipped": 1}


# ---- reading the figures ----------------------------------------------------------------------------------

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_kernels_peer" name="test_bf16[False]"/>
<testcase classname="tests.test_kernels_peer" name="test_bf16[True]"><failure message="relative error"/></testcase>
<testcase classname="tests.test_kernels_cvmm" name="test_bf16"><skipped message="needs a CUDA GPU"/></testcase>
</testsuite></testsuites>"""


@pytest.mark.parametrize("must_run", [False, True])
def test_junit_counts_failures_and_skips(tmp_path: Path, must_run: bool) -> None:
    (tmp_path / "junit.xml").write_text(JUNIT)
    found, problems = figures.gpu_test_figures(tmp_path / "junit.xml", tests_must_run=must_run)
    assert (found["passed"], found["failed"], found["skipped"]) == (1, 1, 1)
    assert found["failed_tests"] == ["tests.test_kernels_peer::test_bf16[True]"]
    assert problems[0] == "failed: tests.test_kernels_peer::test_bf16[True]"
    assert len(problems) == (2 if must_run else 1) and (not must_run or "needs a CUDA GPU" in problems[1])


def write_losses(run_dir: Path, losses: list[float]) -> Path:
    run_dir.mkdir(parents=True)
    lines = [{"kind": "resume", "step": 0}] + [{"step": step, "loss": loss} for step, loss in enumerate(losses, 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run_dir


def test_equivalence_fails_beyond_the_tolerance(tmp_path: Path) -> None:
    single = write_losses(tmp_path / "single", [3.0, 2.5, 2.0])
    close = write_losses(tmp_path / "close", [3.0, 2.5, 2.0 * (1 + figures.EQUIVALENCE_RELATIVE_TOLERANCE / 2)])
    apart = write_losses(tmp_path / "apart", [3.0, 2.5, 2.0 * (1 + 2 * figures.EQUIVALENCE_RELATIVE_TOLERANCE)])
    short = write_losses(tmp_path / "short", [3.0, 2.5])
    found, problems = figures.equivalence_figures({"dense": (single, close), "peer": (single, apart),
                                                   "moe": (single, short)}, processes=2)
    assert found["dense"]["steps_compared"] == 3 and set(found) == {"dense", "peer"}
    assert found["peer"]["max_relative_loss_difference"] == pytest.approx(2 * figures.EQUIVALENCE_RELATIVE_TOLERANCE)
    assert [problem.split(":")[0] for problem in problems] == ["peer", "moe"]


def test_a_run_that_did_not_complete_or_ran_on_the_cpu_fails(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_result(status="diverged", diverged_at_step=12, steps=11, final_train_loss=None, device="cpu",
               tokens_per_s=100.0, mfu=None).write(run_dir / "result.json")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 10, "tokens_per_s": 90.0, "mfu": 0.2}) + "\n")
    found, problems = figures.training_figures(run_dir, device="cuda")
    assert (found["last_interval_tokens_per_s"], found["last_interval_mfu"]) == (90.0, 0.2)
    assert problems == ["the run ended diverged", "it trained on the CPU, not on the GPU"]
    assert figures.training_figures(tmp_path / "missing", device="cpu")[1][0].endswith("result.json was not written")
