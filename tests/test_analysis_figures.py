"""The figures' structure: panels per group, clipped axes, legend entries that say what is drawn, labels."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection

from analysis.collect import Collection
from analysis.command import axis_labels, parse_args
from analysis.figure_style import MARGIN_DECADES, plt
from analysis.figures import isoflop_figure
from analysis.fits import fit_all_optima
from analysis.powerlaw import fit_all_power_laws
from analysis.records import PowerLawFit
from analysis.scaling_figure import scaling_figure


def curves(groups: dict[str, float], budgets, shape=lambda x, c: 0.3 * (x - c) ** 2, sizes: int = 7) -> pd.DataFrame:
    """Runs of several groups (group → loss offset), a parabola-like curve per budget centred on N ∝ C^0.5."""
    rows = []
    rng = np.random.default_rng(0)
    for group, offset in groups.items():
        for budget in budgets:
            center = np.log10(0.1 * (budget / 6.0) ** 0.5)
            for x in np.linspace(center - 0.6, center + 0.6, sizes):
                rows.append(dict(method=group, budget=budget, params=10**x, tokens=budget / (6 * 10**x),
                                 metric=offset + 3.0 - 0.05 * np.log10(budget) + shape(x, center)
                                 + 0.002 * rng.standard_normal()))
    return pd.DataFrame(rows)


def panels(figure: plt.Figure) -> list[plt.Axes]:
    """The data panels (not the colour bar)."""
    return [axes for axes in figure.axes if axes.get_label() != "<colorbar>"]


def legend_texts(figure: plt.Figure) -> list[str]:
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


def bbox(artist, figure: plt.Figure):
    return artist.get_window_extent(figure.canvas.get_renderer())


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_one_panel_per_group_each_with_its_own_sizes() -> None:
    runs = curves({"c4": 0.0, "code": -2.0, "wiki": 0.5}, (1e19, 1e20, 1e21))
    runs.loc[runs["method"] == "code", "params"] *= 10  # code's sizes span another decade
    optima = fit_all_optima(runs, "metric", n_bootstrap=200)
    figure = isoflop_figure(runs, optima, "metric", "Loss", "Parameters N")
    shown = panels(figure)
    assert sorted(axes.get_title() for axes in shown) == ["c4", "code", "wiki"]
    for axes in shown:
        group_sizes = runs.loc[runs["method"] == axes.get_title(), "params"]
        low, high = axes.get_xlim()
        assert low == pytest.approx(group_sizes.min() / 10**MARGIN_DECADES)
        assert high == pytest.approx(group_sizes.max() * 10**MARGIN_DECADES)
    y_ranges = {axes.get_title(): axes.get_ylim() for axes in shown}
    assert y_ranges["code"][1] < y_ranges["c4"][0]  # loss scales that do not overlap keep their own axes
    texts = legend_texts(figure)
    assert sum(text.startswith("C = ") for text in texts) == 3
    assert "fitted optimum (parabola vertex)" in texts and "95% bootstrap interval" in texts
    assert "He 2024" not in figure.get_suptitle() and "loss" in figure.get_suptitle()


def test_legend_is_off_the_data() -> None:
    runs = curves({"dense": 0.0, "moe": -0.05}, (1e19, 1e20))
    figure = isoflop_figure(runs, fit_all_optima(runs, "metric", n_bootstrap=0), "metric", "Loss", "Parameters N")
    figure.canvas.draw()
    (legend,) = figure.legends
    for axes in panels(figure):
        assert not bbox(legend, figure).overlaps(bbox(axes, figure))


def test_many_budgets_get_a_colour_bar_instead_of_legend_entries() -> None:
    runs = curves({"all": 0.0}, np.geomspace(1e17, 1e22, 26), sizes=5)
    figure = isoflop_figure(runs, fit_all_optima(runs, "metric", n_bootstrap=0), "metric", "Loss", "Parameters N")
    colour_bars = [axes for axes in figure.axes if axes.get_label() == "<colorbar>"]
    assert len(colour_bars) == 1 and "Training compute" in colour_bars[0].get_ylabel()
    assert not any(text.startswith("C = ") for text in legend_texts(figure))
    assert len(panels(figure)) == 1


def test_fits_that_are_not_ok_are_drawn_differently_and_explained() -> None:
    concave = curves({"broken": 0.0}, (1e19, 1e20), shape=lambda x, c: -0.3 * (x - c) ** 2)
    edge = curves({"edge": 0.0}, (1e19, 1e20), shape=lambda x, c: 0.3 * (x - c - 2.0) ** 2)  # minimum 2 decades out
    runs = pd.concat([concave, edge, curves({"dense": 0.0}, (1e19, 1e20))], ignore_index=True)
    optima = fit_all_optima(runs, "metric", n_bootstrap=0)
    assert {o.status for o in optima} == {"ok", "concave", "vertex_outside_range"}
    figure = isoflop_figure(runs, optima, "metric", "Loss", "Parameters N")
    texts = legend_texts(figure)
    assert "concave fit: no minimum, no optimum" in texts
    assert "optimum outside the sampled sizes (extrapolated, not used)" in texts
    assert "extrapolated optimum beyond the axis" in texts
    broken = next(axes for axes in panels(figure) if axes.get_title() == "broken")
    assert all(line.get_linestyle() == "--" for line in broken.get_lines())
    edge_panel = next(axes for axes in panels(figure) if axes.get_title() == "edge")
    assert edge_panel.get_xlim()[1] < 10 ** (np.log10(edge["params"].max()) + 0.3)  # the far vertex did not widen it


def scaling_inputs(budgets, extra_runs: pd.DataFrame | None = None):
    runs = curves({"dense": 0.0}, budgets)
    if extra_runs is not None:
        runs = pd.concat([runs, extra_runs], ignore_index=True)
    optima = fit_all_optima(runs, "metric", n_bootstrap=300)
    laws = [law for law in fit_all_power_laws(optima, (1e23,)) if isinstance(law, PowerLawFit)]
    return runs, optima, laws


def test_scaling_clips_far_optima_at_the_sampled_sizes_and_says_so() -> None:
    far = curves({"dense": 0.0}, (1e22,), shape=lambda x, c: 0.05 * (x - c - 30.0) ** 2)  # vertex ~30 decades out
    runs, optima, laws = scaling_inputs((1e19, 1e20, 1e21), far)
    assert max(o.n_opt for o in optima) > 1e30
    figure = scaling_figure(optima, laws, "active", (1e23,))
    params_panel = figure.axes[0]
    largest_sampled = max(runs["params"].max(), laws[0].predictions[0].value)
    assert params_panel.get_ylim()[1] == pytest.approx(largest_sampled * 10**MARGIN_DECADES)
    texts = legend_texts(figure)
    assert "beyond the axis (clipped at the edge)" in texts and "extrapolated optimum (not fitted)" in texts
    law_labels = [text.get_text() for text in params_panel.get_legend().get_texts()]
    assert any("exponent 95% CI [" in label for label in law_labels)
    assert params_panel.get_ylabel() == "Optimal parameters N* (active)"
    figure.canvas.draw()
    assert bbox(params_panel.get_legend(), figure).y1 <= bbox(params_panel, figure).y0 + 1  # below the data


def test_two_budget_law_is_a_dashed_line_without_band() -> None:
    _, optima, laws = scaling_inputs((1e19, 1e20))
    figure = scaling_figure(optima, laws)
    params_panel = figure.axes[0]
    (label,) = [text.get_text() for text in params_panel.get_legend().get_texts()]
    assert "line through 2 budgets, no interval" in label
    assert not [c for c in params_panel.collections if isinstance(c, PolyCollection)]
    assert any(line.get_linestyle() == "--" for line in params_panel.get_lines())
    _, optima, laws = scaling_inputs((1e19, 1e20, 1e21))
    assert [c for c in scaling_figure(optima, laws).axes[0].collections if isinstance(c, PolyCollection)]


def test_labels_say_what_is_plotted() -> None:
    frame = pd.DataFrame({"method": ["a"], "budget": [1e19], "params": [1e8], "tokens": [1e10], "metric": [3.0]})

    def labels(argv: list[str], **collection_fields):
        args: argparse.Namespace = parse_args(argv)
        return axis_labels(args, Collection(runs=frame, **collection_fields))

    csv_plain = labels(["--csv", "x.csv"], kind="csv", loss_unit=None, params_derived=True)
    assert (csv_plain.value, csv_plain.params) == ("Loss", "Parameters N = C / (6 D), derived")
    csv_unit = labels(["--csv", "x.csv", "--loss-unit", "bits/byte", "--eval-dataset", "heldout"], kind="csv",
                      loss_unit="bits/byte")
    assert (csv_unit.value, csv_unit.params) == ("heldout loss (bits/byte)", "Parameters N")
    sweep = labels(["sweep", "--params", "total"])
    assert (sweep.value, sweep.params, sweep.params_kind) == ("Loss on validation (nats/token)", "Parameters N (total)",
                                                              "total")
