"""The training-curves figure reads the evaluations of trunks and branches: the later line of
a step wins after a resume, a branch's curve starts at its trunk's last evaluation before
the fork, and a sweep that logged no evaluation gets no figure."""

from __future__ import annotations

import json
from pathlib import Path

from analysis.training_curves import collect_curves, plot_training_curves, read_curve, with_fork_point
from branch_support import ONE_SHAPE, branch_sweep


def write_evaluations(run_dir: Path, spec, losses_by_step: list[tuple[int, float]]) -> None:
    """metrics.jsonl with a training line and ``kind: eval`` lines at the given steps."""
    tokens_per_step = spec.batch_size * spec.seq_len
    lines = [{"step": 1, "tokens": tokens_per_step, "loss": 9.0}]
    lines += [{"kind": "eval", "step": step, "tokens": step * tokens_per_step,
               "flops": step * tokens_per_step * spec.flops_per_token_train, "validation_loss": loss}
              for step, loss in losses_by_step]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_curves_of_trunks_and_branches(tmp_path: Path) -> None:
    sweep, study_plan = branch_sweep(tmp_path / "sweep", ONE_SHAPE["dense"])
    (trunk,), (early, late) = study_plan.trunks, sorted(study_plan.runs, key=lambda run: run.budget_flops)
    assert trunk.fork_steps == (early.cooldown_start_step, late.cooldown_start_step)
    fork = early.cooldown_start_step
    # the trunk evaluated at fork - 2 and past the fork; step fork - 2 logged again after a resume
    write_evaluations(sweep.trunk(trunk.run_id).path, trunk,
                      [(fork - 2, 5.0), (fork + 3, 4.0), (fork - 2, 4.5), (trunk.steps, 3.5)])
    write_evaluations(sweep.run(early.run_id).path, early, [(early.steps, 3.9)])
    assert read_curve(sweep.run(late.run_id).path) is None  # no evaluation yet

    trunks, runs = collect_curves(sweep.path)
    assert list(trunks) == [trunk.run_id] and [run.spec.run_id for run in runs] == [early.run_id]
    step_flops = trunk.batch_size * trunk.seq_len * trunk.flops_per_token_train
    assert trunks[trunk.run_id].points == [((fork - 2) * step_flops, 4.5), ((fork + 3) * step_flops, 4.0),
                                           (trunk.steps * step_flops, 3.5)]
    assert with_fork_point(runs[0], trunks[trunk.run_id]) == [((fork - 2) * step_flops, 4.5),
                                                              (early.steps * step_flops, 3.9)]

    (tmp_path / "report").mkdir()
    figures = plot_training_curves(sweep.path, tmp_path / "report")
    assert list(figures) == ["training_curves.png"]
    assert (tmp_path / "report" / "training_curves.png").stat().st_size > 1000


def test_no_evaluations_no_figure(tmp_path: Path) -> None:
    sweep, _ = branch_sweep(tmp_path / "sweep", ONE_SHAPE["dense"])
    (tmp_path / "report").mkdir()
    assert plot_training_curves(sweep.path, tmp_path / "report") == {}
    assert not any((tmp_path / "report").iterdir())
