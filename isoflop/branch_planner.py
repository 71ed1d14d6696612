"""Cooldown branches: one warmup-stable-decay trunk per model shape serves every budget.

Hägele et al. 2024 ("Scaling Laws and Compute-Optimal Training Beyond Fixed
Training Durations") show that a constant learning rate after warm-up followed
by a short cooldown (20% of the run, 1 - sqrt shape) matches a cosine run of the
same length. So one long constant-rate run per model shape, the **trunk**, can
serve every budget that trains that shape: each budget's run, a **branch**, is
the trunk up to the branch's fork step plus its own cooldown. ``strategy:
cooldown_branches`` plans a study that way (``train.schedule: wsd``):

1. Per method, one ladder of shapes shared by all budgets: the candidate shapes
   by active non-embedding parameters, kept from the smallest up whenever one is
   at least ``ladder.size_ratio`` larger than the last kept. Each budget takes
   ``sizes_below`` + ``sizes_above`` of them around its centre
   (:func:`isoflop.planner.choose_runs`: the D = tokens_per_param·N estimate,
   or a given N*), so budgets whose brackets overlap pick the same shapes.
2. Per (budget, shape), a branch: the isoFLOP run of that budget, with the
   steps, tokens and FLOPs an independent run would have (steps =
   floor(C / (F·B·S)), within one step of the budget), its cooldown its last
   ``train.cooldown_steps(steps)`` steps, so it forks at steps - cooldown.
3. Per (method, shape) used by some budget, a trunk: warm-up, then the peak
   rate up to the largest fork step of its branches (``fork_steps``: all of
   them, where it hands its checkpoint to the branches, :mod:`isoflop.forks`).

Warm-up: a branch's RunSpec defines its whole schedule (warm-up, fork step,
total steps), so trained from scratch it equals trunk-then-branch; all branches
of a shape therefore share the trunk's warm-up, ceil(warmup_fraction x the steps
of the shape's shortest branch): no branch warms up for longer than
``warmup_fraction`` of its run, and the longer ones proportionally less.

A trunk's run_id hashes everything but its length (steps, tokens, FLOPs, fork
steps): trunks with the same id follow the same trajectory, one being the
prefix of the other. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from isoflop.flops import ModelCosts
from isoflop.planner import (
    DroppedRun, Plan, budget_candidates, choose_runs, costed_candidates, data_rich, spread_out,
)
from isoflop.run_spec import RunSpec
from isoflop.study_config import StudyConfig
from models.config import ModelConfig

TRUNK_LENGTH_FIELDS = ("budget_flops", "steps", "tokens", "realized_flops", "fork_steps")
"""What a trunk's run_id leaves out: how far it trains, not how."""


def shared_ladder(study: StudyConfig, method: str, centre_params: float | None = None
                  ) -> list[tuple[ModelConfig, ModelCosts]]:
    """``method``'s ladder shared by every budget: (model, costs) of the candidate shapes
    kept by walking outwards from the smallest budget's centre (:func:`isoflop.planner.data_rich`)
    in both directions, taking a shape whenever it is at least ``ladder.size_ratio`` larger
    (or smaller) than the last one taken. The smallest budget thus gets the sizes an
    independent plan gives it, and every larger budget a window of the same shapes."""
    costed = costed_candidates(study, method)
    runs = budget_candidates(study, method, study.budgets[0], costed)
    rich = [run for run in runs if data_rich(study, run, centre_params)]
    data_poor = [run for run in runs if not data_rich(study, run, centre_params)]
    ratio = study.ladder.size_ratio
    kept = spread_out(rich[::-1], len(rich), ratio)[::-1] + spread_out(data_poor, len(data_poor), ratio)
    kept_models = [run.model for run in kept]
    return [pair for model in kept_models for pair in costed if pair[0] is model]


def plan_branches(study: StudyConfig, centre_params: Mapping[tuple[str, float], float] | None = None) -> Plan:
    """The trunks and branches of ``study`` (``strategy: cooldown_branches``; module docstring).

    ``centre_params`` optionally centres the ladder of a (method, budget) on a given
    number of active non-embedding parameters (a predicted N*) instead of the
    D = tokens_per_param·N estimate. Deterministic, like :func:`isoflop.planner.plan`.
    """
    branches: list[RunSpec] = []
    trunks: list[RunSpec] = []
    dropped: list[DroppedRun] = []
    notes: list[str] = []
    for method in study.methods:
        centres = {budget: (centre_params or {}).get((method, budget)) for budget in study.budgets}
        ladder = shared_ladder(study, method, centres[study.budgets[0]])
        by_shape: dict[tuple[int, int, int], list[RunSpec]] = {}
        for budget_flops in study.budgets:
            candidates = budget_candidates(study, method, budget_flops, ladder)
            kept, dropped_here, notes_here = choose_runs(study, method, budget_flops, candidates,
                                                         centres[budget_flops])
            dropped.extend(dropped_here)
            notes.extend(notes_here)
            for run in kept:
                backbone = run.model.backbone
                by_shape.setdefault((backbone.n_layers, backbone.d_model, backbone.n_heads), []).append(run)
        for runs in by_shape.values():
            trunk, shape_branches = trunk_and_branches(study, runs)
            trunks.append(trunk)
            branches.extend(shape_branches)
    order = {budget: index for index, budget in enumerate(study.budgets)}
    methods = list(study.methods)
    branches.sort(key=lambda run: (order[run.budget_flops], methods.index(run.method),
                                   run.costs["n_params_active_non_embedding"]))
    return Plan(runs=tuple(branches), dropped=tuple(dropped), notes=tuple(notes), trunks=tuple(trunks))


def trunk_and_branches(study: StudyConfig, runs: list[RunSpec]) -> tuple[RunSpec, list[RunSpec]]:
    """The trunk of one (method, shape) and its branches, from that shape's unnamed runs
    (one per budget, as :func:`isoflop.planner.choose_runs` resolved them)."""
    train = study.train
    warmup_steps = int(math.ceil(train.warmup_fraction * min(run.steps for run in runs)))
    fork_steps = {run.budget_flops: run.steps - train.cooldown_steps(run.steps) for run in runs}
    longest = max(runs, key=lambda run: fork_steps[run.budget_flops])
    trunk_steps = fork_steps[longest.budget_flops]
    tokens = trunk_steps * train.batch_size * train.seq_len
    realized_flops = tokens * longest.flops_per_token_train
    trunk = replace(longest, budget_flops=realized_flops, steps=trunk_steps, tokens=tokens,
                    realized_flops=realized_flops, warmup_steps=warmup_steps, cooldown_start_step=None,
                    fork_steps=tuple(sorted(set(fork_steps.values()))), trunk_id=None)
    backbone = trunk.model.backbone
    trunk = replace(trunk, run_id=f"{trunk.method}-L{backbone.n_layers}-d{backbone.d_model}-trunk-"
                                  f"{trunk.content_hash(leave_out=TRUNK_LENGTH_FIELDS)}")
    branches = [replace(run, warmup_steps=warmup_steps, cooldown_start_step=fork_steps[run.budget_flops],
                        trunk_id=trunk.run_id).with_run_id() for run in runs]
    return trunk, branches


def cooldown_flops(branch: RunSpec) -> float:
    """Training FLOPs a branch adds to its trunk: its cooldown steps x tokens per step x
    training FLOPs per token."""
    return (branch.steps - branch.cooldown_start_step) * branch.batch_size * branch.seq_len * \
        branch.flops_per_token_train


@dataclass(frozen=True)
class TrainingCost:
    """What training a plan costs, in training FLOPs.

    Attributes:
        job_flops: FLOPs of each training job: every run of an independent plan;
            with cooldown branches every trunk, then every branch's cooldown.
        independent_flops: the same runs each trained from scratch (sum of their
            realized FLOPs: cosine or WSD, the same steps).
    """

    job_flops: tuple[float, ...]
    independent_flops: float

    @property
    def flops(self) -> float:
        """Total training FLOPs of the plan's jobs."""
        return sum(self.job_flops)

    @property
    def ratio(self) -> float:
        """Total over the independent runs' FLOPs (1 for an independent plan)."""
        return self.flops / self.independent_flops if self.independent_flops else 1.0


def training_cost(plan: Plan) -> TrainingCost:
    """The :class:`TrainingCost` of ``plan`` (independent or cooldown branches)."""
    independent = sum(run.realized_flops for run in plan.runs)
    if not plan.trunks:
        return TrainingCost(tuple(run.realized_flops for run in plan.runs), independent)
    return TrainingCost(tuple(trunk.realized_flops for trunk in plan.trunks)
                        + tuple(cooldown_flops(branch) for branch in plan.runs), independent)
