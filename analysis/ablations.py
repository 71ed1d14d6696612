"""Ablation isoFLOP plots detected from the FFW configuration in run.json (He 2024, Figures 3a, 3b and 4).

Within one FFW family (``model.ffw.family``), a sweep that varies

- the number of experts (``n_experts``) → Figure 3a,
- the number of heads × top-k (``n_heads``, ``top_k``; active experts) → Figure 3b,
- query BatchNorm (``query_batchnorm``) → Figure 4,

gets an isoFLOP plot of that family's runs grouped by the varied setting. When
several of these settings vary at once, each plot keeps only the runs whose
other settings equal their most common value, so that one thing changes per plot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.figures import plot_isoflop
from analysis.fits import fit_all_optima
from analysis.records import Optimum

ABLATIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "experts": (("ffw_n_experts",), "number of experts (He 2024, Fig. 3a)"),
    "active_experts": (("ffw_n_heads", "ffw_top_k"), "heads × top-k (He 2024, Fig. 3b)"),
    "query_batchnorm": (("ffw_query_batchnorm",), "query BatchNorm (He 2024, Fig. 4)"),
}
SHORT_NAMES = {"ffw_n_experts": "experts", "ffw_n_heads": "heads", "ffw_top_k": "top-k", "ffw_query_batchnorm": "query BN"}


@dataclass(frozen=True)
class Ablation:
    """One detected ablation: the family, what varies, the runs (with a ``setting`` label column) and their fits."""

    name: str
    family: str
    title: str
    runs: pd.DataFrame
    optima: list[Optimum]


def _setting_label(record: pd.Series, columns: tuple[str, ...]) -> str:
    parts = []
    for column in columns:
        value = record[column]
        if column == "ffw_query_batchnorm":
            parts.append("query BN" if bool(value) else "no query BN")
        elif column == "ffw_n_experts" and float(value) >= 1024:
            parts.append(f"{int(value):,} experts")
        else:
            parts.append(f"{SHORT_NAMES[column]}={int(value)}")
    return ", ".join(parts)


def detect_ablations(runs: pd.DataFrame, n_bootstrap: int, seed: int, robust: bool, confidence: float = 0.95,
                     resampling: str = "residuals") -> list[Ablation]:
    """Find ablations in the runs' FFW settings and fit their isoFLOP curves per setting and budget."""
    if "ffw_family" not in runs.columns:
        return []
    ablations = []
    for family, family_runs in runs.groupby("ffw_family", sort=True):
        varying = {name: columns for name, (columns, _) in ABLATIONS.items()
                   if all(c in family_runs.columns and family_runs[c].notna().all() for c in columns)
                   and len(family_runs[list(columns)].drop_duplicates()) > 1}
        for name, columns in varying.items():
            selected = family_runs
            for other_name, other_columns in varying.items():
                if other_name == name:
                    continue
                for column in other_columns:
                    if column in columns:
                        continue
                    selected = selected[selected[column] == selected[column].mode().iloc[0]]
            if len(selected[list(columns)].drop_duplicates()) < 2:
                continue
            selected = selected.sort_values([*columns, "budget", "params"])
            selected = selected.assign(setting=[_setting_label(record, columns) for _, record in selected.iterrows()])
            optima = fit_all_optima(selected, "metric", group_column="setting", n_bootstrap=n_bootstrap, seed=seed,
                                    robust=robust, confidence=confidence, resampling=resampling)
            title = f"{family}: {ABLATIONS[name][1]}"
            ablations.append(Ablation(name=name, family=str(family), title=title, runs=selected, optima=optima))
    return ablations


def plot_ablations(ablations: list[Ablation], out_dir: Path, value_label: str, params_label: str,
                   confidence: float = 0.95) -> dict[str, str]:
    """One isoFLOP figure per ablation, ``ablation_<family>_<name>.png/.pdf``; returns PNG name → caption."""
    captions: dict[str, str] = {}
    for ablation in ablations:
        stem = out_dir / f"ablation_{ablation.family}_{ablation.name}"
        plot_isoflop(ablation.runs, ablation.optima, stem, "metric", value_label, params_label,
                     group_column="setting", title=f"IsoFLOP curves, {ablation.title}", confidence=confidence)
        captions[stem.with_suffix(".png").name] = (f"IsoFLOP curves of {ablation.family} runs, one panel per "
                                                    f"{ABLATIONS[ablation.name][1]}")
    return captions
