"""The planner: a study becomes a list of fully resolved runs. Pure and fast.

For each budget C and method, every candidate backbone shape of the ladder is
costed with :func:`isoflop.flops.model_costs`; the run trains for
steps = floor(C / (F · B · S)) optimizer steps, F the training FLOPs per
token, B the batch (sequences) and S the sequence length, so the realized
FLOPs fall within one step below the budget. The compute-optimal size is
estimated with D = 20·N (Hoffmann et al. 2022, Table 3), N the active
non-embedding parameters; the ladder keeps ``sizes_below`` shapes with more
tokens per parameter than that and ``sizes_above`` with fewer, so the isoFLOP
parabola's minimum is bracketed.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from isoflop.errors import UserError
from isoflop.flops import ModelCosts, model_costs
from isoflop.run_spec import RunSpec
from isoflop.study_config import MAX_BUDGET_FLOPS, ClusterConfig, StudyConfig
from models.config import ModelConfig
from models.ffw.config_base import FFWConfigBase


@dataclass(frozen=True)
class DroppedRun:
    """A candidate the planner left out, and why."""

    method: str
    budget_flops: float
    n_layers: int
    d_model: int
    reason: str


@dataclass(frozen=True)
class Plan:
    """The planner's output: runs to train, candidates dropped, and notes; with
    ``strategy: cooldown_branches`` the runs are branches and ``trunks`` their trunks
    (:mod:`isoflop.branch_planner`)."""

    runs: tuple[RunSpec, ...]
    dropped: tuple[DroppedRun, ...]
    notes: tuple[str, ...]
    trunks: tuple[RunSpec, ...] = ()


def candidate_shapes(study: StudyConfig) -> list[tuple[int, int, int]]:
    """``(n_layers, d_model, n_heads)`` candidates of the ladder (see LadderConfig)."""
    ladder, pinned = study.ladder, study.model
    if ladder.shapes:
        shapes = [(int(layers), int(width), int(heads)) for layers, width, heads in ladder.shapes]
    else:
        shapes = []
        for n_layers in range(ladder.min_layers, ladder.max_layers + 1):
            n_heads = max(1, round(ladder.aspect_ratio * n_layers / ladder.head_dim))
            shapes.append((n_layers, n_heads * ladder.head_dim, n_heads))
    pinned_shapes = []
    for n_layers, d_model, n_heads in shapes:
        if pinned.d_model is not None and pinned.n_heads is None:
            n_heads = max(1, pinned.d_model // ladder.head_dim)
        shape = (pinned.n_layers or n_layers, pinned.d_model or d_model, pinned.n_heads or n_heads)
        if shape not in pinned_shapes:
            pinned_shapes.append(shape)
    return pinned_shapes


def build_model_config(study: StudyConfig, ffw: FFWConfigBase, shape: tuple[int, int, int]) -> ModelConfig:
    """The resolved model of one method at one ladder shape."""
    n_layers, d_model, n_heads = shape
    template = study.model
    backbone = template.with_sizes(n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                                   vocab_size=study.data.resolved_vocab_size, max_seq_len=study.train.seq_len)
    replace_blocks = template.replace_blocks
    if not isinstance(replace_blocks, str):
        replace_blocks = tuple(replace_blocks)
    return ModelConfig(backbone=backbone, ffw=ffw.resolve(d_model, template.ffw_multiplier),
                       replace_blocks=replace_blocks)


def build_run(study: StudyConfig, method: str, budget_flops: float, model: ModelConfig) -> RunSpec:
    """Cost one model at one budget and resolve every number its job needs (with its run_id)."""
    return _unnamed_run(study, method, budget_flops, model, model_costs(model, study.train.seq_len)).with_run_id()


def _unnamed_run(study: StudyConfig, method: str, budget_flops: float, model: ModelConfig,
                 costs: ModelCosts) -> RunSpec:
    """`build_run` from a model already costed, before its run_id (a hash of the spec) is set."""
    train = study.train
    tokens_per_step = train.batch_size * train.seq_len
    steps = int(budget_flops // (costs.flops_per_token_train * tokens_per_step))
    micro_batch_size = train.micro_batch_size or train.batch_size
    spec = RunSpec(
        run_id="", study=study.name, method=method, budget_flops=budget_flops, model=model,
        train=train, data=study.data, logger=study.logger, steps=steps,
        tokens=steps * tokens_per_step,
        realized_flops=steps * tokens_per_step * costs.flops_per_token_train,
        learning_rate=train.learning_rate(model.backbone.d_model),
        warmup_steps=int(math.ceil(train.warmup_fraction * steps)),
        micro_batch_size=micro_batch_size,
        grad_accumulation_steps=train.batch_size // micro_batch_size,
        costs=costs.summary(), params_by_component=dict(costs.params),
        params_active_by_component=dict(costs.params_active),
        forward_flops_by_component=dict(costs.forward_flops_per_token), seed=train.seed,
        cooldown_start_step=steps - train.cooldown_steps(steps) if train.schedule == "wsd" else None)
    return spec


def active_size(run: RunSpec) -> float:
    """The size a ladder is spaced by: active non-embedding parameters."""
    return run.costs["n_params_active_non_embedding"]


def spread_out(items: list, count: int, size_ratio: float, size: Callable[[Any], float] = active_size) -> list:
    """Up to ``count`` of ``items`` (runs, ordered away from the estimate), walking along
    them and taking each whose ``size`` (active non-embedding parameters) differs
    from the previous pick by a factor >= ``size_ratio``."""
    picked: list = []
    for item in items:
        if picked:
            current, previous = size(item), size(picked[-1])
            if max(current, previous) < size_ratio * min(current, previous):
                continue
        picked.append(item)
        if len(picked) == count:
            break
    return picked


def processes_per_run(cluster: ClusterConfig) -> int:
    """Training processes (DDP ranks) of one run: nodes x tasks per node (1 in-process, ``debug``)."""
    return 1 if cluster.executor == "debug" else cluster.nodes * cluster.tasks_per_node


def per_rank_micro_batch_size(batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Sequences per forward on one rank, as the trainer runs it: the largest
    divisor of the per-rank batch (batch_size / world_size) that is <= micro_batch_size.

    Divisors come in pairs (small, per_rank / small) with small <= sqrt(per_rank),
    so the search takes at most about sqrt(per_rank) steps (one when the whole
    per-rank batch fits), not one per sequence of the batch.
    """
    per_rank = max(1, batch_size // world_size)
    limit = min(micro_batch_size, per_rank)
    if limit == per_rank:
        return per_rank
    root = math.isqrt(per_rank)
    # A large divisor per_rank / small <= limit needs small >= per_rank / limit; the
    # smallest such small gives the largest one, which beats every divisor <= sqrt.
    for small in range(-(-per_rank // limit), root + 1):
        if per_rank % small == 0:
            return per_rank // small
    return next(size for size in range(min(limit, root), 0, -1) if per_rank % size == 0)


def check_routing_groups(study: StudyConfig) -> None:
    """Raise :class:`UserError` when a method routes groups of sequences
    (expert choice's ``routing_group``) that a forward's per-rank micro-batch
    cannot hold a whole number of."""
    world_size = processes_per_run(study.cluster)
    train = study.train
    micro_batch = per_rank_micro_batch_size(train.batch_size, train.micro_batch_size or train.batch_size, world_size)
    for method, ffw in study.methods.items():
        group = ffw.sequences_per_routing_group
        if micro_batch % group:
            raise UserError(
                f"methods.{method}.routing_group={group}: each forward holds {micro_batch} sequences per process "
                f"(train.batch_size={train.batch_size} on {world_size} process{'es' if world_size > 1 else ''}, "
                f"train.micro_batch_size={train.micro_batch_size or 'unset'}), not a whole number of routing "
                f"groups; set train.micro_batch_size to a multiple of {group} or methods.{method}.routing_group "
                f"to a divisor of {micro_batch}")


def smallest_feasible_budget(study: StudyConfig) -> float:
    """FLOPs that let the cheapest candidate of every method train ``min_steps`` steps,
    counted as :func:`_unnamed_run` counts them (floor of budget / FLOPs per step, in
    floating point, so the product is nudged up where rounding would lose a step)."""
    tokens_per_step = study.train.batch_size * study.train.seq_len
    min_steps = study.ladder.min_steps
    cheapest = []
    for method in study.methods:
        step_flops = min(costs.flops_per_token_train for _, costs in costed_candidates(study, method)) * tokens_per_step
        budget_flops = step_flops * min_steps
        while budget_flops // step_flops < min_steps:
            budget_flops = math.nextafter(budget_flops, math.inf)
        cheapest.append(budget_flops)
    return max(cheapest)


def rounded_up(flops: float, digits: int = 3) -> str:
    """``flops`` rounded up to ``digits`` significant digits, as text (``7.3612e9`` -> ``'7.37e+09'``):
    a budget advised as "at least" this text still holds when the user passes it back."""
    exact = decimal.Context(prec=digits, rounding=decimal.ROUND_CEILING).create_decimal(flops)
    return f"{float(exact):.{digits}g}"


def too_small_error(study: StudyConfig, method: str, budget_flops: float) -> UserError:
    """The error for a budget at which no size of ``method`` trains ``ladder.min_steps`` steps,
    naming the smallest budget that plans (rounded up, so that passing it works), or, when
    that is above :data:`MAX_BUDGET_FLOPS`, that the batch or ``min_steps`` must shrink."""
    ladder, train = study.ladder, study.train
    minimum = smallest_feasible_budget(study)
    problem = (f"budget {budget_flops:.3g} FLOPs is too small for method {method}: no model size trains "
               f"ladder.min_steps={ladder.min_steps} steps of train.batch_size={train.batch_size} sequences")
    if minimum > MAX_BUDGET_FLOPS:
        return UserError(f"{problem}, nor would any budget up to the maximum of {MAX_BUDGET_FLOPS:.0e} FLOPs "
                         f"(that needs {minimum:.3g}); lower train.batch_size or ladder.min_steps")
    return UserError(f"{problem}; use a budget >= {rounded_up(minimum)} FLOPs or lower ladder.min_steps / "
                     "train.batch_size")


def costed_candidates(study: StudyConfig, method: str) -> list[tuple[ModelConfig, ModelCosts]]:
    """Every candidate shape of the ladder as ``method``'s model, with its costs."""
    return [(model, model_costs(model, study.train.seq_len))
            for model in (build_model_config(study, study.methods[method], shape) for shape in candidate_shapes(study))]


def budget_candidates(study: StudyConfig, method: str, budget_flops: float,
                      costed_models: list[tuple[ModelConfig, ModelCosts]]) -> list[RunSpec]:
    """Unnamed runs of ``costed_models`` at one budget, ascending in active non-embedding parameters."""
    candidates = [_unnamed_run(study, method, budget_flops, model, costs) for model, costs in costed_models]
    return sorted(candidates, key=active_size)


def data_rich(study: StudyConfig, run: RunSpec, centre_params: float | None = None) -> bool:
    """Whether ``run`` sits left of its budget's centre: at least ``ladder.tokens_per_param``
    tokens per active non-embedding parameter (the D = 20·N estimate of Hoffmann et al.
    2022, Table 3, with the study's ratio), or fewer parameters than ``centre_params`` (a
    given N*, e.g. a prediction) when that is set."""
    size = active_size(run)
    return run.tokens >= study.ladder.tokens_per_param * size if centre_params is None else size < centre_params


def choose_runs(study: StudyConfig, method: str, budget_flops: float, candidates: list[RunSpec],
                centre_params: float | None = None) -> tuple[list[RunSpec], list[DroppedRun], list[str]]:
    """The runs of one (method, budget) isoFLOP curve among ``candidates`` (:func:`budget_candidates`).

    ``sizes_below`` sizes on the data-rich side of the centre (:func:`data_rich`) and
    ``sizes_above`` on the other, walking outwards from it and keeping sizes
    ``size_ratio`` apart; runs shorter than ``min_steps`` are dropped with the reason.
    Returns (runs, dropped, notes). Raises :class:`UserError` when no size is long enough.
    """
    ladder = study.ladder
    rich = [run for run in candidates if data_rich(study, run, centre_params)]
    data_poor = [run for run in candidates if not data_rich(study, run, centre_params)]
    chosen = (spread_out(rich[::-1], ladder.sizes_below, ladder.size_ratio)[::-1]
              + spread_out(data_poor, ladder.sizes_above, ladder.size_ratio))
    kept, dropped, notes = [], [], []
    for run in chosen:
        if run.steps < ladder.min_steps:
            dropped.append(DroppedRun(method, budget_flops, run.model.backbone.n_layers,
                                      run.model.backbone.d_model,
                                      f"{run.steps} steps < ladder.min_steps={ladder.min_steps}"))
        else:
            kept.append(run)
    if not kept:
        raise too_small_error(study, method, budget_flops)
    below = sum(data_rich(study, run, centre_params) for run in kept)
    above = len(kept) - below
    if below < min(2, ladder.sizes_below) or above < min(2, ladder.sizes_above):
        centre = (f"the D={ladder.tokens_per_param:g}N estimate" if centre_params is None
                  else f"the centre N={centre_params:.3g}")
        notes.append(f"{method} at {budget_flops:.3g} FLOPs: {below} sizes below and {above} above "
                     f"{centre} (wanted {ladder.sizes_below} and {ladder.sizes_above}); widen "
                     "the ladder (ladder.min_layers/max_layers) or change the budget")
    return kept, dropped, notes


def plan(study: StudyConfig, centre_params: Mapping[tuple[str, float], float] | None = None) -> Plan:
    """Every run of ``study``: budgets x methods x the ladder around the optimum.

    ``centre_params`` optionally centres the ladder of a (method, budget in FLOPs) on
    a given number of active non-embedding parameters (a predicted N*) instead of
    the D = tokens_per_param·N estimate (:func:`data_rich`); pairs it lacks keep the
    estimate. Deterministic: the same study gives the same runs and run_ids. Raises
    :class:`UserError` when a budget is too small for every candidate of a method,
    or a method's routing group does not fit the micro-batch.
    ``strategy: cooldown_branches`` is planned by :func:`isoflop.branch_planner.plan_branches`.
    """
    check_routing_groups(study)
    if study.strategy == "cooldown_branches":
        from isoflop.branch_planner import plan_branches

        return plan_branches(study, centre_params)
    if study.ladder.backbones_from is not None:
        return plan_on_shared_backbones(study)
    runs: list[RunSpec] = []
    dropped: list[DroppedRun] = []
    notes: list[str] = []
    costed_models = {method: costed_candidates(study, method) for method in study.methods}
    for budget_flops in study.budgets:
        for method in study.methods:
            candidates = budget_candidates(study, method, budget_flops, costed_models[method])
            kept, dropped_here, notes_here = choose_runs(study, method, budget_flops, candidates,
                                                         (centre_params or {}).get((method, budget_flops)))
            runs.extend(run.with_run_id() for run in kept)
            dropped.extend(dropped_here)
            if not study.model.pins_backbone:  # one fixed backbone: there is no ladder to widen
                notes.extend(notes_here)
    return Plan(runs=tuple(runs), dropped=tuple(dropped), notes=tuple(notes))


def plan_on_shared_backbones(study: StudyConfig) -> Plan:
    """Every method on the backbones the ladder picks for ``ladder.backbones_from`` (see LadderConfig).

    The reference method is planned alone, as :func:`plan` would; at each
    budget every method then trains on the reference's shapes, so a row of
    equal backbones compares the methods at equal total parameters when their
    layers are parameter-matched to the dense FFW. A method whose run would
    train fewer than ``ladder.min_steps`` steps on a shape is dropped there,
    with the reason.
    """
    reference_name = study.ladder.backbones_from
    reference = plan(replace(study, methods={reference_name: study.methods[reference_name]},
                             ladder=replace(study.ladder, backbones_from=None)))
    runs: list[RunSpec] = []
    dropped = list(reference.dropped)
    for budget_flops in study.budgets:
        shapes = [(run.model.backbone.n_layers, run.model.backbone.d_model, run.model.backbone.n_heads)
                  for run in reference.runs if run.budget_flops == budget_flops]
        for method, ffw in study.methods.items():
            for shape in shapes:
                run = build_run(study, method, budget_flops, build_model_config(study, ffw, shape))
                if run.steps < study.ladder.min_steps:
                    dropped.append(DroppedRun(method, budget_flops, shape[0], shape[1],
                                              f"{run.steps} steps < ladder.min_steps={study.ladder.min_steps} "
                                              f"on {reference_name}'s backbone"))
                else:
                    runs.append(run)
    notes = [f"every method on the backbones of {reference_name} (ladder.backbones_from)", *reference.notes]
    return Plan(runs=tuple(runs), dropped=tuple(dropped), notes=tuple(notes))
