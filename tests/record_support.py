"""Typed records for the tests that need a result.json without training a run."""

from __future__ import annotations

from typing import Any

from isoflop.run_records import EvalScores, ParamCounts, RunResult


def run_result(**overrides: Any) -> RunResult:
    """A completed run's result with plausible numbers; ``overrides`` replace fields."""
    values: dict[str, Any] = dict(
        run_id="dense-L1-d32-5e08-0b3156f8", study="tiny", method="dense", budget_flops=5e8,
        status="completed", diverged_at_step=None, steps=28, tokens=3584, realized_flops=485130240.0,
        flops_per_token_train=135360.0,
        params=ParamCounts(total=28832, active=28832, embedding=8224, non_embedding=20608,
                           active_non_embedding=20608),
        final_train_loss=3.76, eval={"validation": EvalScores(loss=3.72, perplexity=41.3, tokens=1024,
                                                              requested_tokens=1024, capped=False)},
        routing={}, wall_time_s=4.0, tokens_per_s=894.4, mfu=0.0018, code_version="0.1.0",
        data={"source": "offline", "content_hash": "4aed743daa1919b2", "n_documents": 1762, "epochs": 0.0001},
        device="cpu", world_size=1, notes=())
    values.update(overrides)
    return RunResult(**values)
