"""What every figure shares: style, colours, sizes, saving, and how intervals and clipping are drawn.

Colours follow rules that do not depend on names: groups (methods, CSV groups,
ablation settings) take the qualitative palette in sorted-name order, so a
group keeps its colour in every figure of a report; budgets take a sequential
colour map on log10(budget), with a colour bar instead of legend entries once
there are more than :data:`MAX_BUDGETS_IN_LEGEND`.

Figures are written as PNG (``FIGURE_DPI``) and PDF with the Agg backend, at a
fixed size (no tight bounding box), so their pixel size is predictable.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm, to_hex  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import LogFormatterSciNotation, LogLocator  # noqa: E402

from analysis.records import Interval  # noqa: E402

FIGURE_DPI = 150
FIGURE_WIDTH_INCHES = 8.0
"""Width of every figure: a printed page's text width."""
PANEL_HEIGHT_INCHES = 3.3
LEGEND_HEIGHT_INCHES = 0.9
MAX_BUDGETS_IN_LEGEND = 6
MARGIN_DECADES = 0.25
"""Room left around the sampled sizes on a log axis; anything beyond is clipped and marked."""
BUDGET_COLOR_MAP = "viridis"
BUDGET_COLOR_RANGE = (0.0, 0.85)
"""Part of the colour map used, leaving out viridis' palest yellow."""
STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "figure.titlesize": 11,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linestyle": "-", "axes.axisbelow": True,
}


def group_colors(groups: list[str]) -> dict[str, str]:
    """Colours by rule: tab10, then Dark2, in sorted-name order (stable across figures, blind to names)."""
    palette = [to_hex(color) for color in (*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors)]
    return {group: palette[index % len(palette)] for index, group in enumerate(sorted(set(groups)))}


class BudgetPalette:
    """Colour of each budget on a sequential map, spaced by log10(budget)."""

    def __init__(self, budgets: list[float]) -> None:
        self.budgets = sorted(set(float(budget) for budget in budgets))
        low, high = self.budgets[0], self.budgets[-1]
        self.norm = LogNorm(vmin=low, vmax=high if high > low else low * 10.0)
        full = plt.get_cmap(BUDGET_COLOR_MAP)
        self.cmap = matplotlib.colors.LinearSegmentedColormap.from_list(
            "budgets", full(np.linspace(*BUDGET_COLOR_RANGE, 256)))

    def color(self, budget: float) -> tuple[float, float, float, float]:
        return self.cmap(self.norm(float(budget)) if len(self.budgets) > 1 else 0.0)

    @property
    def uses_colorbar(self) -> bool:
        """True when there are too many budgets for legend entries."""
        return len(self.budgets) > MAX_BUDGETS_IN_LEGEND


def log_window(values: list[float]) -> tuple[float, float]:
    """Limits of a log axis: the values' range with :data:`MARGIN_DECADES` of margin."""
    finite = [value for value in values if value is not None and np.isfinite(value) and value > 0]
    return min(finite) / 10**MARGIN_DECADES, max(finite) * 10**MARGIN_DECADES


def label_few_decades(axis: matplotlib.axis.Axis, low: float, high: float) -> None:
    """On a log axis spanning at most ~2 decades, label the 2x and 5x ticks too (else only powers of ten show)."""
    if np.log10(high / low) <= 2.2:
        axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        axis.set_minor_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(3, 3)))
        axis.set_tick_params(which="minor", labelsize=7)


def draw_interval(axes: plt.Axes, center: float, fixed: float, interval: Interval, window: tuple[float, float],
                  color: object, horizontal: bool) -> bool:
    """An interval bar around ``center`` (along x if ``horizontal``), clipped at ``window`` with a triangle.

    Unreliable intervals are dashed. Returns True when an end was clipped.
    """
    if not interval.printable:
        return False
    low, high = max(interval.low, window[0]), min(interval.high, window[1])
    error = [[max(center - low, 0.0)], [max(high - center, 0.0)]]
    bars = axes.errorbar(center if horizontal else fixed, fixed if horizontal else center, capsize=3, color=color,
                         linewidth=1.1, zorder=4, **({"xerr": error} if horizontal else {"yerr": error}))
    if interval.status == "unreliable":
        for collection in bars[2]:
            collection.set_linestyle((0, (3, 2)))
    clipped = False
    for end, beyond, marker in ((low, interval.low < window[0], "<" if horizontal else "v"),
                                (high, interval.high > window[1], ">" if horizontal else "^")):
        if beyond:
            axes.scatter(end if horizontal else fixed, fixed if horizontal else end, marker=marker, s=30, color=color,
                         zorder=4, clip_on=False)
            clipped = True
    return clipped


def interval_handles(confidence: float, kinds: set[str]) -> list[Line2D]:
    """Legend entries for what was drawn: interval bars (``interval``), dashed unreliable ones
    (``unreliable``) and clipping triangles (``clipped``)."""
    handles = []
    if "interval" in kinds:
        handles.append(Line2D([], [], color="0.3", marker="|", markersize=8, linewidth=1.1,
                              label=f"{confidence:.0%} bootstrap interval"))
    if "unreliable" in kinds:
        handles.append(Line2D([], [], color="0.3", linestyle=(0, (3, 2)), linewidth=1.1,
                              label="interval marked unreliable (see report)"))
    if "clipped" in kinds:
        handles.append(Line2D([], [], color="0.3", marker=">", linestyle="none", label="continues beyond the axis"))
    return handles


def interval_kinds(interval: Interval) -> set[str]:
    """The legend kinds an interval bar needs (see :func:`interval_handles`)."""
    return {"interval", "unreliable"} if interval.status == "unreliable" else {"interval"} if interval.printable else set()


def save(figure: plt.Figure, stem: Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.pdf; returns their paths."""
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    figure.savefig(paths[0], dpi=FIGURE_DPI)
    figure.savefig(paths[1])
    plt.close(figure)
    return paths
