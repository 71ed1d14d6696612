"""Ablations detected from the FFW configuration in run.json (He 2024, Figures 3a, 3b and 4).

Within one FFW family (``ffw_family``), runs that vary

- the number of experts N (``ffw_n_experts``) → Figure 3a,
- the heads h and top-k per head (``ffw_n_heads``, ``ffw_top_k``; hk active experts) → Figure 3b,
- the query normalisation (:data:`QUERY_NORM_COLUMN`: off, causal ``prefix``, or the
  paper's ``batch`` BatchNorm) → Figure 4,

form an ablation of that setting. The other settings are held at their
preferred value (:func:`preferred_value`) so that one thing changes per figure,
except that a fixed-backbone N ablation keeps one curve per query normalisation
(Table 2's grid).

Two forms, told apart by the runs themselves:

- **ladder**: several model sizes per (setting, budget), as in Figure 4: each
  setting gets its isoFLOP parabola per budget, fitted on perplexity (the
  paper's axis) with the intervals of :mod:`analysis.fits`.
- **fixed backbone**: one run per (setting, budget), as in Figures 3a and 3b,
  where the paper varies the layer on the backbone of its isoFLOP-optimal
  model: the curve runs over the setting itself (total parameters for N, the
  heads h for hk) and there is nothing to fit. An N ablation also takes the
  dense runs on the same backbone and budget as its reference point, "the
  corresponding dense backbone" the paper's curve starts from.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.fits import fit_all_optima
from analysis.records import Optimum

QUERY_NORM_COLUMN = "query_norm"
"""Derived from ``ffw_query_batchnorm`` and ``ffw_query_norm_statistics``: off, prefix or batch."""
QUERY_NORM_LABELS = {"off": "no query norm", "prefix": "causal query norm", "batch": "query BatchNorm (non-causal)"}
QUERY_NORM_ORDER = ("off", "prefix", "batch")
SETTINGS: dict[str, tuple[tuple[str, ...], str]] = {
    "experts": (("ffw_n_experts",), "number of experts N (He 2024, Fig. 3a)"),
    "active_experts": (("ffw_n_heads", "ffw_top_k"), "active experts hk = heads x top-k (He 2024, Fig. 3b)"),
    QUERY_NORM_COLUMN: ((QUERY_NORM_COLUMN,), "query normalisation (He 2024, Fig. 4)"),
}
BACKBONE_COLUMNS = ("backbone_n_layers", "backbone_d_model", "backbone_n_heads")
VALUE_COLUMN = "perplexity"
"""What the paper's ablation figures and Table 2 show."""


@dataclass(frozen=True)
class Ablation:
    """One detected ablation of ``family``.

    ``runs`` holds the selected runs with a ``setting`` label column (in the
    setting's order); ``optima`` their fits per (setting, budget) in the ladder
    form (empty with a fixed backbone); ``reference`` the dense runs on the same
    backbone and budget (an N ablation on a fixed backbone; else empty).
    """

    name: str
    family: str
    title: str
    runs: pd.DataFrame
    fixed_backbone: bool
    optima: list[Optimum]
    reference: pd.DataFrame


def with_query_norm(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` plus :data:`QUERY_NORM_COLUMN` for rows whose FFW has a query normalisation setting."""
    if "ffw_query_batchnorm" not in runs.columns:
        return runs
    statistics = runs.get("ffw_query_norm_statistics", pd.Series("batch", index=runs.index)).fillna("batch")
    enabled = runs["ffw_query_batchnorm"]
    norm = [None if pd.isna(on) else statistic if bool(on) else "off" for on, statistic in zip(enabled, statistics)]
    return runs.assign(**{QUERY_NORM_COLUMN: norm})


def compact_count(count: float) -> str:
    """16384 → '16k', 1048576 → '1M', 256 → '256' (the paper's labels for N)."""
    count = int(count)
    if count >= 1_000_000:
        return f"{count // 1_000_000}M"
    return f"{count // 1000}k" if count >= 1000 else str(count)


def experts_label(count: float) -> str:
    """'N = 16k (128²)': the count, and its product-key side when it is a perfect square."""
    side = round(float(count) ** 0.5)
    return f"N = {compact_count(count)}" + (f" ({side}²)" if side * side == int(count) else "")


def setting_label(record: pd.Series, columns: tuple[str, ...]) -> str:
    """The legend label of one run's setting."""
    if columns == (QUERY_NORM_COLUMN,):
        return QUERY_NORM_LABELS[record[QUERY_NORM_COLUMN]]
    if columns == ("ffw_n_experts",):
        return experts_label(record["ffw_n_experts"])
    return f"h = {int(record['ffw_n_heads'])}, k = {int(record['ffw_top_k'])}"


def setting_order(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series:
    """A sort key that puts settings in their natural order (query norms off, causal, batch; counts ascending)."""
    if columns == (QUERY_NORM_COLUMN,):
        return frame[QUERY_NORM_COLUMN].map(QUERY_NORM_ORDER.index)
    if columns == ("ffw_n_heads", "ffw_top_k"):
        return frame["ffw_n_heads"] * frame["ffw_top_k"] * 1e6 + frame["ffw_n_heads"]
    return frame[columns[0]]


def preferred_value(values: pd.Series, default: object) -> object:
    """The value other plots hold a setting at: the most common one; among equally common ones the
    family's default (``default``) when present, else the largest."""
    counts = values.value_counts()
    tied = list(counts[counts == counts.max()].index)
    return default if default in tied else max(tied)


def family_default(family: str, column: str) -> object:
    """The family dataclass's default for a ``ffw_<field>`` column (``prefix`` for the query norm), or None."""
    from models.config import FFW_FAMILIES

    if family not in FFW_FAMILIES.names():
        return None
    defaults = FFW_FAMILIES.get(family)()
    if column == QUERY_NORM_COLUMN:
        return defaults.query_norm if hasattr(defaults, "query_norm") else None
    return getattr(defaults, column.removeprefix("ffw_"), None)


def varying_settings(family_runs: pd.DataFrame) -> dict[str, tuple[str, ...]]:
    """The settings (name → columns) that take more than one value among the family's runs."""
    return {name: columns for name, (columns, _) in SETTINGS.items()
            if all(c in family_runs.columns and family_runs[c].notna().all() for c in columns)
            and len(family_runs[list(columns)].drop_duplicates()) > 1}


def hold_other_settings(family_runs: pd.DataFrame, family: str, varying: dict[str, tuple[str, ...]],
                 kept: tuple[str, ...]) -> pd.DataFrame:
    """The runs whose settings other than ``kept`` columns sit at their preferred values."""
    selected = family_runs
    for columns in varying.values():
        for column in columns:
            if column not in kept:
                value = preferred_value(selected[column], family_default(family, column))
                selected = selected[selected[column] == value]
    return selected


def _dense_reference(runs: pd.DataFrame, selected: pd.DataFrame) -> pd.DataFrame:
    """Dense runs at the budgets and backbone of ``selected`` (its one backbone per budget)."""
    if "ffw_family" not in runs.columns or not set(BACKBONE_COLUMNS) <= set(runs.columns):
        return runs.iloc[0:0]
    dense = runs[runs["ffw_family"] == "dense"]
    backbones = selected[["budget", *BACKBONE_COLUMNS]].drop_duplicates()
    return dense.merge(backbones, on=["budget", *BACKBONE_COLUMNS], how="inner")


def _one_backbone_per_budget(selected: pd.DataFrame) -> bool:
    if not set(BACKBONE_COLUMNS) <= set(selected.columns):
        return True
    return bool((selected.groupby("budget")[list(BACKBONE_COLUMNS)].nunique() <= 1).all().all())


def detect_ablations(runs: pd.DataFrame, n_bootstrap: int, seed: int, robust: bool, confidence: float = 0.95,
                     resampling: str = "residuals") -> list[Ablation]:
    """Find ablations in the runs' FFW settings (module docstring); fit the ladder ones per setting and budget."""
    if "ffw_family" not in runs.columns or VALUE_COLUMN not in runs.columns:
        return []
    runs = with_query_norm(runs)
    ablations = []
    for family, family_runs in runs[runs["ffw_family"] != "dense"].groupby("ffw_family", sort=True):
        family = str(family)
        varying = varying_settings(family_runs)
        for name, columns in varying.items():
            kept = columns
            candidate = hold_other_settings(family_runs, family, varying, kept)
            fixed = bool((candidate.groupby([*columns, "budget"]).size() == 1).all())
            if fixed and name == "experts" and QUERY_NORM_COLUMN in varying:
                kept = (*columns, QUERY_NORM_COLUMN)  # Table 2's grid: one curve per query norm
                candidate = hold_other_settings(family_runs, family, varying, kept)
            if fixed and name == QUERY_NORM_COLUMN:
                continue  # on a fixed backbone: the curves of the N ablation and Table 2 (analysis.tables)
            if len(candidate[list(columns)].drop_duplicates()) < 2 or (fixed and not _one_backbone_per_budget(candidate)):
                continue
            candidate = candidate.assign(_order=setting_order(candidate, columns)).sort_values(["_order", "budget", "params"])
            candidate = candidate.drop(columns="_order").assign(
                setting=[setting_label(record, columns) for _, record in candidate.iterrows()])
            optima = [] if fixed else fit_all_optima(candidate, VALUE_COLUMN, group_column="setting",
                                                     n_bootstrap=n_bootstrap, seed=seed, robust=robust,
                                                     confidence=confidence, resampling=resampling)
            reference = _dense_reference(runs, candidate) if fixed and name == "experts" else runs.iloc[0:0]
            ablations.append(Ablation(name=name, family=family, title=f"{family}: {SETTINGS[name][1]}",
                                      runs=candidate, fixed_backbone=fixed, optima=optima, reference=reference))
    return ablations
