"""Studies on one fixed backbone (He 2024, Figures 3a, 3b and Table 2): one model per method and budget.

A study that pins the backbone (``model.n_layers``, ``model.d_model`` and
``model.n_heads`` all set, :attr:`isoflop.study_config.ModelTemplate.pins_backbone`)
trains each method once per budget on that backbone. Its comparison is over
the setting itself (the ablation figures and Table 2), not over isoFLOP
parabolas in model size: there is nothing to fit, and a report that listed
every group as a failed fit would read as a failed study. The report says
so once and shows the runs' fitted metric (the final evaluation loss by
default) by method and budget instead.

Where it is known from:

- a sweep with a ``study.yaml`` (every sweep ``isoflop submit`` made): its
  ``model`` sizes. A study whose ladder chooses the sizes is never a
  fixed-backbone study, so a group left with one size there (runs missing)
  is still reported as a fit that is not ok;
- without one (``--csv`` input, a folder of runs): the runs themselves, when
  every group has a single model size, the same at every budget. A study
  where some groups have a ladder and others a single size is not a
  fixed-backbone study: its single-size groups are reported as fits that are
  not ok.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd
import yaml

from analysis.formatting import budget_text
from isoflop.errors import UserError
from isoflop.study_config import ModelTemplate
from isoflop.sweep_dir import SweepDir


@dataclass(frozen=True)
class StudyLayout:
    """What a sweep's study.yaml records about its models.

    ``pinned``: the backbone the study pins, as ``model.n_layers=2, model.d_model=24, model.n_heads=2``,
    or None when the ladder chooses the sizes; ``methods``: the study's methods in its own order.
    """

    pinned: str | None
    methods: tuple[str, ...]


def read_study_layout(sweep_dir: Path) -> StudyLayout | None:
    """The layout recorded in ``sweep_dir``/study.yaml, or None when the sweep has none.

    Raises:
        ValueError: study.yaml exists but cannot be read as a study (the message says why).
    """
    path = SweepDir(Path(sweep_dir)).study_yaml
    if not path.is_file():
        return None
    try:
        study = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: {error}") from None
    model = study.get("model") if isinstance(study, dict) else None
    if not isinstance(model, dict):
        raise ValueError(f"{path}: no `model` settings")
    names = {item.name for item in fields(ModelTemplate)}
    try:
        template = ModelTemplate(**{key: value for key, value in model.items() if key in names})
    except (UserError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None
    pinned = (f"model.n_layers={template.n_layers}, model.d_model={template.d_model}, "
              f"model.n_heads={template.n_heads}") if template.pins_backbone else None
    methods = study.get("methods")
    return StudyLayout(pinned=pinned, methods=tuple(map(str, methods)) if isinstance(methods, dict) else ())


@dataclass(frozen=True)
class FixedBackbone:
    """A study with one model per method and budget (module docstring).

    ``pinned``: the pinned backbone as text (:class:`StudyLayout`), or None when only the runs show it;
    ``methods``: the methods in the study's order (sorted by name when the study records none);
    ``see``: the report files that make the comparison (ablation figures, Table 2), filled in once written.
    """

    pinned: str | None
    methods: tuple[str, ...]
    see: tuple[str, ...] = ()

    def sentence(self, group_word: str = "method") -> str:
        """The report's one statement of it (Markdown, the ``see`` files linked)."""
        why = (f"the study pins {self.pinned}" if self.pinned else
               f"every {group_word} has a single model size, the same at every budget")
        places = [*(f"[{name}]({name})" for name in self.see), "the table below"]
        see = " and ".join([", ".join(places[:-1]), places[-1]] if len(places) > 1 else places)
        return (f"one model per {group_word} and budget ({why}); the comparison is over the setting — see {see}. "
                f"No isoFLOP parabolas, optima or power laws: they need several model sizes per {group_word}")


def detect_fixed_backbone(runs: pd.DataFrame, layout: StudyLayout | None) -> FixedBackbone | None:
    """A :class:`FixedBackbone` when every method of ``runs`` has one model size (at every budget) and the
    study, if ``layout`` records it, pins its backbone; else None (the ordinary analysis)."""
    one_size = bool((runs.groupby("method")["params"].nunique() == 1).all())
    if not one_size or (layout is not None and layout.pinned is None):
        return None
    present = set(runs["method"])
    recorded = [method for method in layout.methods if method in present] if layout is not None else []
    return FixedBackbone(pinned=layout.pinned if layout is not None else None,
                         methods=(*recorded, *sorted(present - set(recorded))))


def value_table(runs: pd.DataFrame, fixed: FixedBackbone, value_column: str = "metric",
                group_header: str = "method") -> pd.DataFrame:
    """One row per method (in ``fixed.methods`` order) with its model's total parameters (``params`` for CSV
    input without them) and, per budget, its run's ``value_column`` (the mean when a budget holds repeated runs;
    missing where it has none)."""
    size_column = "params_total" if "params_total" in runs.columns else "params"
    values = runs.pivot_table(index="method", columns="budget", values=value_column, aggfunc="mean")
    sizes = runs.groupby("method")[size_column].first()
    table = pd.DataFrame({group_header: list(fixed.methods)})
    size_header = "total params" if size_column == "params_total" else "params"
    table[size_header] = [int(round(sizes[method])) for method in fixed.methods]
    for budget in sorted(values.columns):
        table[f"C = {budget_text(budget)}"] = [values.at[method, budget] for method in fixed.methods]
    return table
