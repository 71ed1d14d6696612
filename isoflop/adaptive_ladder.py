"""``isoflop study --adaptive``: each budget's ladder centred on the N* the smaller budgets predict.

Budgets run in increasing order. Before a budget is planned, its ladder is
*placed*: per method, the isoFLOP optima of every budget already trained are
fitted (:func:`analysis.fits.fit_all_optima`) and N*(C) is extrapolated to the
new budget (:func:`analysis.holdout.predict_optimum`); the ladder is then
centred on that N* (``centre_params`` of :func:`isoflop.planner.plan`) instead
of the D = tokens_per_param·N rule. A prediction needs
:data:`analysis.holdout.MIN_BUDGETS_TO_PREDICT` (2) budgets with a located
optimum, so the two smallest budgets (and any later one whose method still
lacks two located optima) keep the rule. N is counted as the planner spaces its
ladder: active non-embedding parameters.

Each placement is a :class:`LadderRecord`, one line of ``<sweep>/ladders.jsonl``,
written before any run of that budget is submitted. Re-running continues: a
placed budget is never placed again, and the plan is always rebuilt from the
records (the study restricted to the placed budgets, with their centres), so it
is the same plan whatever was interrupted.

With cooldown branches the planner's rules are kept as they are: one shape
ladder per method shared by every budget (:func:`isoflop.branch_planner.shared_ladder`,
anchored at the smallest budget, which the rule places), each budget taking a
window of it around its centre. A predicted centre thus picks shapes of the
same ladder, and a budget shares the trunk of every shape an earlier budget
already trained. Such a trunk ended at the earlier budget's fork step; the new
plan gives it the same trunk id and a later end (the id leaves its length out),
so :func:`extend_trunks` lets it continue from its last checkpoint to the new
fork step: no step is trained twice, and its constant learning rate is the same
before and after (warm-up is set by its shortest branch, an earlier budget's).
Torch-free; the fit imports numpy, pandas and scipy when a budget is placed.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from isoflop.atomic_files import append_jsonl
from isoflop.errors import UserError
from isoflop.record_format import records_from_jsonl

if TYPE_CHECKING:
    import pandas as pd

    from isoflop.planner import Plan
    from isoflop.run_spec import RunSpec
    from isoflop.study_config import StudyConfig
    from isoflop.sweep_dir import SweepDir

LADDERS_FILE = "ladders.jsonl"
PARAMS_KIND = "active_non_embedding"
"""The parameter count the fit uses: the one :func:`isoflop.planner.active_size` spaces the ladder by."""


@dataclass(frozen=True)
class LadderRecord:
    """One line of ``ladders.jsonl``: how the ladder of one (method, budget) was placed.

    Attributes:
        method: the study's method name.
        budget: the budget, in training FLOPs.
        placed_by: ``rule`` (the D = tokens_per_param·N estimate) or ``prediction``.
        centre_params: the N* (active non-embedding parameters) the ladder is
            centred on; None for the rule.
        predicted_low, predicted_high: the prediction's interval of N* (None
            without one: a line through two budgets has none).
        budgets_given: the budgets (FLOPs) whose optima the prediction was fitted
            on; those trained so far for the rule.
        reason: why the rule placed it (empty for a prediction).
        time: UNIX time of the placement (seconds).
    """

    VERSION: ClassVar[int] = 1
    KIND: ClassVar[str] = "ladder record"

    method: str
    budget: float
    placed_by: Literal["rule", "prediction"]
    centre_params: float | None
    predicted_low: float | None
    predicted_high: float | None
    budgets_given: tuple[float, ...]
    reason: str
    time: float
    version: int = VERSION

    def append_to(self, path: Path) -> None:
        """One line of ``path`` (a single write)."""
        values = dataclasses.asdict(self)
        values["budgets_given"] = list(self.budgets_given)
        append_jsonl(path, values)

    @classmethod
    def read_all(cls, path: Path) -> list[LadderRecord]:
        """Every record of ``path`` ([] without the file); a torn last line is skipped.

        Raises:
            RecordError: for a line of an unknown version or one that is no ladder record.
        """
        return records_from_jsonl(cls, path, cls.KIND, cls.VERSION,
                                  fix="restore the file, or delete it with the runs of the budgets it placed")

    def describe(self) -> str:
        """One line for the study's progress output."""
        from isoflop.commands.common import human_count

        where = f"{self.method} at {self.budget:.3g} FLOPs"
        given = ", ".join(f"{budget:.3g}" for budget in self.budgets_given)
        if self.placed_by == "rule":
            return f"ladder of {where}: the configured rule ({self.reason})"
        interval = ("" if self.predicted_low is None or self.predicted_high is None else
                    f" [{human_count(self.predicted_low)}, {human_count(self.predicted_high)}]")
        return f"ladder of {where}: centred on the predicted N*={human_count(self.centre_params)}{interval} " \
               f"from budgets {given}"


def ladders_path(sweep_path: Path) -> Path:
    """``<sweep>/ladders.jsonl``."""
    return Path(sweep_path) / LADDERS_FILE


def check_adaptive_study(study: StudyConfig) -> None:
    """Raise :class:`UserError` unless some budget of ``study`` can be placed by a prediction."""
    from analysis.holdout import MIN_BUDGETS_TO_PREDICT

    if len(study.budgets) <= MIN_BUDGETS_TO_PREDICT:
        raise UserError(f"--adaptive needs at least {MIN_BUDGETS_TO_PREDICT + 1} budgets (the {MIN_BUDGETS_TO_PREDICT} "
                        f"smallest are placed by the rule, later ones from their fit), the study has "
                        f"{len(study.budgets)}; add budgets (--budget FLOPS, repeatable) or drop --adaptive")


def place_budget(study: StudyConfig, budget: float, trained: pd.DataFrame | None, bootstrap: int,
                 confidence: float = 0.95) -> list[LadderRecord]:
    """The ladder record of each method at ``budget`` FLOPs.

    Args:
        trained: the completed runs of the smaller budgets (:func:`analysis.collect.collect_sweep`'s
            frame with ``params`` = active non-embedding parameters), None before any.
        bootstrap: replicates for the prediction's interval (0: none).
    """
    from analysis.holdout import MIN_BUDGETS_TO_PREDICT, predict_optimum

    now = time.time()
    budgets_trained = () if trained is None else tuple(sorted({float(value) for value in trained["budget"]}))
    optima = []
    if len(budgets_trained) >= MIN_BUDGETS_TO_PREDICT:
        from analysis.fits import fit_all_optima

        optima = fit_all_optima(trained, "metric", n_bootstrap=bootstrap, confidence=confidence)
    records = []
    for method in study.methods:
        method_optima = [optimum for optimum in optima if optimum.group == method]
        located = sum(optimum.params_fit.status == "ok" for optimum in method_optima)
        prediction = predict_optimum(method_optima, budget, confidence) if method_optima else None
        if prediction is None or prediction.params.value is None:
            if len(budgets_trained) < MIN_BUDGETS_TO_PREDICT:
                reason = f"{len(budgets_trained)} budget(s) trained; a prediction needs {MIN_BUDGETS_TO_PREDICT}"
            elif prediction is None:
                reason = (f"{located} trained budget(s) with a located optimum; a prediction needs "
                          f"{MIN_BUDGETS_TO_PREDICT}")
            else:
                reason = prediction.params.note
            records.append(LadderRecord(method, budget, "rule", None, None, None, budgets_trained, reason, now))
            continue
        interval = prediction.params.interval
        low, high = (interval.low, interval.high) if interval.printable else (None, None)
        records.append(LadderRecord(method, budget, "prediction", prediction.params.value, low, high,
                                    prediction.budgets_given, "", now))
    return records


def adaptive_plan(study: StudyConfig, records: list[LadderRecord]) -> Plan:
    """The plan of the placed budgets: ``study`` restricted to them, each ladder centred as recorded."""
    from isoflop.planner import plan

    placed = sorted({record.budget for record in records})
    centres = {(record.method, record.budget): record.centre_params for record in records
               if record.centre_params is not None}
    return plan(dataclasses.replace(study, budgets=placed), centres)


def extend_trunks(sweep: SweepDir, trunks: tuple[RunSpec, ...]) -> list[str]:
    """Let every trunk of ``trunks`` that trained to an earlier end continue to its new one.

    Its ``run.json`` gets the longer spec; a ``result.json`` from the earlier end is
    kept as ``result.step_<steps>.json``, so the trunk is no longer done and resumes
    from its last checkpoint (the earlier end, a fork step) when submitted. Returns
    the ids of the trunks extended.
    """
    from isoflop.run_spec import RunSpec

    extended = []
    for trunk in trunks:
        folder = sweep.trunk(trunk.run_id)
        if not folder.run_json.is_file():
            continue
        earlier = RunSpec.read(folder.run_json)
        if earlier.steps >= trunk.steps:
            continue
        if folder.result_json.is_file():
            folder.result_json.rename(folder.path / f"result.step_{earlier.steps}.json")
        trunk.write(folder.run_json)
        extended.append(trunk.run_id)
    return extended


def trained_runs(sweep_path: Path) -> pd.DataFrame | None:
    """The completed runs of a sweep as the analysis collects them (``params`` = :data:`PARAMS_KIND`),
    None when it has none yet."""
    from analysis.collect import collect_sweep

    if not (Path(sweep_path) / "runs").is_dir():
        return None
    return collect_sweep(sweep_path, PARAMS_KIND).runs


def analysis_arguments(study: StudyConfig, all_completed: bool, bootstrap: int) -> list[str]:
    """``isoflop analyze`` options after an adaptive study: N counted as the ladder was placed
    (:data:`PARAMS_KIND`) and, once every budget has trained, the largest held out
    (``--holdout-budget``: its prediction from the others, the one that placed its ladder, checked
    against its own fit) when enough others remain for a prediction interval and the bootstrap
    that gives it is on."""
    from analysis.holdout import MIN_BUDGETS_FOR_VERDICT

    arguments = ["--params", PARAMS_KIND]
    if all_completed and bootstrap > 0 and len(study.budgets) > MIN_BUDGETS_FOR_VERDICT:
        arguments += ["--holdout-budget", repr(max(study.budgets))]
    return arguments


def run_adaptive(composed, root: Path, name: str | None, interval: float, bootstrap: int):
    """Place, train and follow the budgets of ``composed`` in increasing order (module docstring).

    Returns (the :class:`~isoflop.sweep_dir.SweepDir`, whether every run completed). Stops at
    the first budget whose runs did not all complete: re-running continues there.
    """
    from isoflop.commands.submit import check_ladder_kind, submit_study
    from isoflop.commands.sweep_choice import choose_sweep_path
    from isoflop.commands.wait import follow
    from isoflop.sweep_dir import SweepDir

    study = composed.study
    check_adaptive_study(study)
    path = choose_sweep_path(root, name or study.name, composed.resolved_yaml, name is not None, new=False)
    check_ladder_kind(path, adaptive=True)
    sweep = SweepDir(path)
    while True:
        records = LadderRecord.read_all(ladders_path(path))
        placed = {record.budget for record in records}
        if records:
            study_plan = adaptive_plan(study, records)
            for trunk_id in extend_trunks(sweep, study_plan.trunks):
                print(f"trunk {trunk_id}: continues to a later fork step", file=sys.stderr)
            sweep = submit_study(composed, root, name, retry_failed=True, new=False, study_plan=study_plan)
            print(f"sweep: {sweep.path}", file=sys.stderr)
            if follow(sweep, interval) != 0:
                return sweep, False
        unplaced = [budget for budget in study.budgets if budget not in placed]
        if not unplaced:
            return sweep, True
        new_records = place_budget(study, unplaced[0], trained_runs(path) if records else None, bootstrap)
        path.mkdir(parents=True, exist_ok=True)
        for record in new_records:
            record.append_to(ladders_path(path))
            print(record.describe(), file=sys.stderr)

