"""Bounds of ``isoflop plan``: huge batch sizes answer at once, budgets above the
maximum (or not finite) are refused in one line on every path they arrive by, and
the smallest budget the planner advises is one that plans."""

from __future__ import annotations

import decimal
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from isoflop.cli import main
from isoflop.compose import load_study
from isoflop.planner import per_rank_micro_batch_size, plan, rounded_up
from isoflop.study_config import MAX_BUDGET_FLOPS

REPOSITORY = Path(__file__).resolve().parents[1]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = main(list(argv))
    except SystemExit as exit_:  # argparse's errors
        status = int(exit_.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status: int, err: str, expected: str) -> None:
    """The contract for a user mistake: status 2, one stderr line holding ``expected``, no traceback."""
    assert status == 2, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and expected in err, err


# ---- the per-rank micro-batch: same answers as before, without a step per sequence ----

def per_rank_micro_batch_size_reference(batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """The implementation before the divisor search (one step per candidate size): the reference."""
    per_rank = max(1, batch_size // world_size)
    return max(size for size in range(1, min(micro_batch_size, per_rank) + 1) if per_rank % size == 0)


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_micro_batch_matches_the_reference_for_every_batch_up_to_2000(world_size: int) -> None:
    for batch_size in range(1, 2001):
        for micro_batch_size in {1, 2, 3, 5, 16, 48, 100, 1000, batch_size - 1 or 1, batch_size}:
            assert (per_rank_micro_batch_size(batch_size, micro_batch_size, world_size)
                    == per_rank_micro_batch_size_reference(batch_size, micro_batch_size, world_size)), \
                (batch_size, micro_batch_size, world_size)


def test_micro_batch_matches_the_reference_on_larger_batches() -> None:
    batches = [2 ** 16, 3 ** 10, 65537, 99991 * 7, 720720, 999983, 1_000_000]  # powers, primes, many divisors
    for batch_size in batches:
        for micro_batch_size in (1, 7, 64, 1000, 4096, batch_size // 2 or 1, batch_size - 1, batch_size):
            for world_size in (1, 4):
                assert (per_rank_micro_batch_size(batch_size, micro_batch_size, world_size)
                        == per_rank_micro_batch_size_reference(batch_size, micro_batch_size, world_size)), \
                    (batch_size, micro_batch_size, world_size)


def test_micro_batch_of_a_trillion_sequences_takes_no_time() -> None:
    prime = 999_999_999_989  # the worst case: no divisor but 1 and itself
    started = time.perf_counter()
    assert per_rank_micro_batch_size(10 ** 12, 10 ** 12, 1) == 10 ** 12
    assert per_rank_micro_batch_size(10 ** 12, 10 ** 12 - 1, 1) == 5 * 10 ** 11
    assert per_rank_micro_batch_size(10 ** 12, 10 ** 6, 1) == 10 ** 6
    assert per_rank_micro_batch_size(prime, prime - 1, 1) == 1
    assert time.perf_counter() - started < 10  # the old search: hours


def test_a_batch_too_large_for_the_budget_is_refused_at_once() -> None:
    # a subprocess with a timeout, so that a regression fails instead of hanging the suite
    command = [sys.executable, "-m", "isoflop.cli", "plan", "--sweep", "tiny", "train.batch_size=1000000000000"]
    result = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=120,
                            check=False)
    assert_one_line_error(result.returncode, result.stderr, "too small for method")
    assert "train.batch_size=1000000000000 sequences; use a budget >=" in result.stderr
    assert result.stdout == ""


def test_a_batch_no_allowed_budget_can_train_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "plan", "--sweep", "tiny", "train.batch_size=" + "1" + "0" * 24)
    assert_one_line_error(status, err, f"nor would any budget up to the maximum of {MAX_BUDGET_FLOPS:.0e} FLOPs")
    assert "lower train.batch_size or ladder.min_steps" in err and out == ""


# ---- the largest budget, on every path a budget arrives by ----

TOO_LARGE = f"is above the largest budget planned, {MAX_BUDGET_FLOPS:.0e} FLOPs"
NOT_FINITE = "must be a finite positive number of FLOPs"


def sweep_with_budgets(tmp_path: Path, budgets: str) -> str:
    """A copy of the tiny sweep whose ``budgets:`` line is ``budgets``."""
    text = (REPOSITORY / "sweeps" / "tiny.yaml").read_text()
    path = tmp_path / "custom.yaml"
    path.write_text(re.sub(r"(?m)^budgets: .*$", f"budgets: {budgets}", text))
    return str(path)


@pytest.mark.parametrize("argv, expected", [
    (["--sweep", "tiny", "--budget", "1e40"], f"argument --budget: '1e40' {TOO_LARGE}"),
    (["--budget", "1e300", "--format", "csv"], f"argument --budget: '1e300' {TOO_LARGE}"),
    (["--budget", "1.0000001e30"], TOO_LARGE),
    (["--sweep", "tiny", "budgets=[1e40]"], f"budget=1e+40: {TOO_LARGE}"),
    (["--sweep", "{yaml:[3e11, 1e31]}"], f"budget=1e+31: {TOO_LARGE}"),
    (["--sweep", "tiny", "--budget", "1e309"], f"argument --budget: '1e309' {NOT_FINITE}"),
    (["--sweep", "tiny", "--budget", "nan"], f"argument --budget: 'nan' {NOT_FINITE}"),
    (["--sweep", "tiny", "--budget=-inf"], f"argument --budget: '-inf' {NOT_FINITE}"),
    (["--sweep", "tiny", "budgets=[1e309]"], f"budget=inf: {NOT_FINITE}"),
    (["--sweep", "{yaml:[3e11, .nan]}"], f"budget=nan: {NOT_FINITE}"),
])
def test_budgets_beyond_the_maximum_or_not_finite_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             argv: list[str], expected: str) -> None:
    argv = [sweep_with_budgets(tmp_path, arg[len("{yaml:"):-1]) if arg.startswith("{yaml:") else arg
            for arg in argv]
    out_file = tmp_path / "plan.csv"
    out_file.write_text("keep me")
    status, out, err = run_cli(capsys, "plan", *argv, "--out", str(out_file))
    assert_one_line_error(status, err, expected)
    assert "pass a budget of at most 1e+30 FLOPs" in err if expected.endswith(TOO_LARGE) else "--budget 6e18" in err
    assert out == "" and out_file.read_text() == "keep me"


def test_the_maximum_budget_itself_plans_with_a_readable_table(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "plan", "--sweep", "tiny", "--budget", "1e30")
    assert status == 0, err
    rows = [line.split() for line in out.splitlines() if line.startswith("dense-")]
    assert rows and all(len(field) <= 9 for row in rows for field in row[1:]), rows  # steps 9.74e+19, not 20 digits


def test_every_count_a_plan_at_the_maximum_derives_is_analysable() -> None:
    from analysis.collect import MAX_PLAUSIBLE_COUNT, count_problem

    assert MAX_BUDGET_FLOPS <= MAX_PLAUSIBLE_COUNT
    study_plan = plan(load_study("tiny", budgets=[MAX_BUDGET_FLOPS]).study)
    for run in study_plan.runs:
        for count in (run.budget_flops, run.realized_flops, float(run.tokens),
                      run.costs["n_params_active"], run.costs["n_params_total"]):
            assert count_problem(count) is None, (run.run_id, count)


# ---- the advised smallest budget is one that plans ----

def test_rounded_up_never_rounds_down() -> None:
    assert rounded_up(7.3612e9) == "7.37e+09"
    assert rounded_up(7.36e9) == "7.36e+09"
    assert rounded_up(3.2000001e15) == "3.21e+15"
    assert rounded_up(9.999e9) == "1e+10"
    assert rounded_up(1e5) == "1e+05"
    for value in (1.0001, 123456.0, 7.3612e9, 3.2e15 * (1 + 1e-15), 4.6e32):
        assert float(rounded_up(value)) >= value


def one_digit_less(text: str) -> str:
    """``'7.37e+09'`` -> ``'7.36e+09'``: the advised budget less one in its last printed digit."""
    value = decimal.Decimal(text)
    return str(value - decimal.Decimal(1).scaleb(value.adjusted() - len(value.as_tuple().digits) + 1))


@pytest.mark.parametrize("sweep", [["--sweep", "tiny"], []], ids=["tiny", "default"])
def test_the_advised_smallest_budget_plans_and_is_the_smallest_printed(capsys: pytest.CaptureFixture[str],
                                                                       sweep: list[str]) -> None:
    status, _, err = run_cli(capsys, "plan", *sweep, "--budget", "1e5")
    assert_one_line_error(status, err, "too small for method")
    advised = re.search(r"use a budget >= (\S+) FLOPs", err).group(1)
    status, out, err = run_cli(capsys, "plan", *sweep, "--budget", advised, "--format", "csv")
    assert status == 0, err
    assert len(out.splitlines()) > 1
    status, _, err = run_cli(capsys, "plan", *sweep, "--budget", one_digit_less(advised))
    assert_one_line_error(status, err, f"use a budget >= {advised} FLOPs")


def test_counts_in_the_table_stay_short_up_to_the_largest_budget() -> None:
    """The table's counts (tokens of a 1e30 budget are ~1e25) keep 7 columns: SI suffixes up to
    E, then scientific notation, never '1.99e+08P'."""
    from isoflop.commands.common import human_count

    assert [human_count(value) for value in (999.0, 1234567.0, 2.5e15, 3.1e18, 1.99e23)] == [
        "999", "1.23M", "2.5P", "3.1E", "1.99e+23"]
