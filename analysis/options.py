"""The options of ``isoflop analyze`` that several modules share, and their validation.

One owner for each default and each set of choices: :mod:`analysis.command`
(the command line), :mod:`analysis.collect` and :mod:`analysis.csv_input`
(reading), the fits, and ``isoflop study`` (which validates the analysis
options before it submits anything) all import them from here.

Imports only the standard library, so ``isoflop --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from isoflop.errors import UserError

PARAMS_KINDS = ("total", "active", "non_embedding", "active_non_embedding")
"""Parameter counts ``--params`` may put on the x axis (keys of a run's ``params``)."""
DEFAULT_PARAMS_KIND = "active"
"""The parameters a token touches: the N of the C = 6·N·D isoFLOP accounting."""
METRICS = ("loss", "perplexity")
"""What ``--metric`` may fit: the evaluation loss or its perplexity exp(loss)."""
DEFAULT_EVAL_DATASET = "validation"
"""Evaluation set fitted without ``--eval-dataset``: the held-out split of the training corpus."""
SWEEP_LOSS_UNIT = "nats/token"
"""Unit of the losses a sweep's runs record (cross-entropy with natural logarithms)."""
PERPLEXITY_LOSS_UNITS = ("nats", "nats/token")
"""``--loss-unit`` values for which perplexity = exp(loss) is defined."""
DEFAULT_BOOTSTRAP = 1000
MAX_BOOTSTRAP = 100_000
"""More replicates than this cost memory without changing a percentile in its third digit."""
ABLATION_BOOTSTRAP_CAP = 300
CONFIDENCE_LEVELS: dict[str, float] = {"95": 0.95, "80": 0.80}
"""``--ci``: the 95% interval, or the 10th-90th percentile interval Hoffmann et al. (2022) report."""
DEFAULT_CONFIDENCE = "95"
RESAMPLING_METHODS = ("residuals", "runs")
"""``--resample``: resample the parabola's residuals at the fixed sizes (default), or whole runs."""
APPROACH3_METHODS = ("vpnls", "lbfgs")
"""``--approach3 METHOD``: variable projection + NNLS (default), or Huber L-BFGS over five parameters."""


@dataclass(frozen=True)
class CheckedOptions:
    """The numeric options of ``isoflop analyze`` after validation."""

    predict_budgets: tuple[float, ...]
    confidence: float
    holdout_budget: float | None = None
    """``--holdout-budget``: the budget (FLOPs) predicted from the others and compared with its own fit."""


def parse_budgets(texts: list[str], option: str = "--predict") -> tuple[float, ...]:
    """Parse ``option``'s values as FLOP budgets by the planner's rule (finite, > 0, at most 1e30)."""
    import argparse

    from isoflop.commands.common import budget_flops

    try:
        return tuple(budget_flops(text, option) for text in texts)
    except argparse.ArgumentTypeError as error:
        raise UserError(f"{option} {error}") from None


def check_options(bootstrap: int, seed: int, predict: list[str], ci: str = DEFAULT_CONFIDENCE,
                  holdout: str | None = None) -> CheckedOptions:
    """Validate the options that argparse cannot (ranges); raises UserError naming the option and the fix."""
    if holdout is not None and bootstrap == 0:
        raise UserError("--holdout-budget compares intervals, which --bootstrap 0 turns off; drop --bootstrap 0 "
                        "or --holdout-budget")
    if bootstrap < 0 or bootstrap == 1:  # one replicate has no spread: no interval, and the power laws use none
        raise UserError(f"--bootstrap {bootstrap} must be 0 (no intervals) or at least 2 replicates, "
                        "e.g. --bootstrap 1000")
    if bootstrap > MAX_BOOTSTRAP:
        raise UserError(f"--bootstrap {bootstrap} is more than {MAX_BOOTSTRAP} replicates; pass at most {MAX_BOOTSTRAP}")
    if seed < 0:
        raise UserError(f"--seed {seed} must be 0 or more, e.g. --seed 0")
    if ci not in CONFIDENCE_LEVELS:
        raise UserError(f"--ci {ci!r} is not offered; choose {' or '.join(CONFIDENCE_LEVELS)}")
    holdout_budget = parse_budgets([holdout], "--holdout-budget")[0] if holdout is not None else None
    return CheckedOptions(predict_budgets=parse_budgets(predict), confidence=CONFIDENCE_LEVELS[ci],
                          holdout_budget=holdout_budget)
