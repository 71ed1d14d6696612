"""Training curves: the validation loss of every trunk, branch and run against training FLOPs.

The figure of Hoffmann et al. 2022, Figure 2 (left): each model's loss as it
trains, on a log FLOP axis, one colour per model size, so the lower envelope
across sizes is visible. With cooldown branches (:mod:`isoflop.forks`) a trunk
is a solid line at its constant learning rate and each branch leaves it at its
fork step, cools down (dashed) and ends on a marker at its budget (dotted
vertical lines): the marker is the branch's isoFLOP point. Independent runs are
drawn the same way as branches that never forked.

The points are the ``kind: eval`` lines of each ``metrics.jsonl``
(``train.eval_every_tokens``; the later line of a step wins after a resume) and
each finished run's final validation loss. A sweep without them gets no figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from isoflop.atomic_files import read_jsonl
from isoflop.errors import UserError
from isoflop.run_spec import RunSpec

FIGURE_STEM = "training_curves"
BUDGET_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclass
class Curve:
    """One trunk's or run's evaluations: (training FLOPs, validation loss) in step order."""

    spec: RunSpec
    points: list[tuple[float, float]] = field(default_factory=list)

    @property
    def size(self) -> float:
        """Active non-embedding parameters (the colour)."""
        return float(self.spec.costs["n_params_active_non_embedding"])


def read_curve(run_dir: Path) -> Curve | None:
    """The curve of one run folder (its run.json and metrics.jsonl), None when it has no evaluation."""
    try:
        spec = RunSpec.read(run_dir / "run.json")
    except UserError:
        return None
    by_step = {}
    for record in read_jsonl(run_dir / "metrics.jsonl"):
        if isinstance(record, dict) and record.get("kind") == "eval" and record.get("validation_loss") is not None:
            by_step[int(record["step"])] = (float(record["flops"]), float(record["validation_loss"]))
    return Curve(spec, [by_step[step] for step in sorted(by_step)]) if by_step else None


def collect_curves(sweep_dir: Path) -> tuple[dict[str, Curve], list[Curve]]:
    """(trunk curves by trunk id, branch and run curves) of a sweep directory."""
    trunks = {}
    for folder in sorted((sweep_dir / "trunks").glob("*/")):
        curve = read_curve(folder)
        if curve is not None:
            trunks[curve.spec.run_id] = curve
    runs = [curve for curve in map(read_curve, sorted((sweep_dir / "runs").glob("*/"))) if curve is not None]
    return trunks, runs


def plot_training_curves(sweep_dir: Path, out_dir: Path) -> dict[str, str]:
    """Write ``training_curves.png/.pdf`` into ``out_dir``; returns PNG name -> caption ({} when
    the sweep logged no evaluation during training)."""
    trunks, runs = collect_curves(Path(sweep_dir))
    if not trunks and not runs:
        return {}
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.lines import Line2D

    from analysis.figure_style import FIGURE_WIDTH_INCHES, PANEL_HEIGHT_INCHES, STYLE, save

    methods = sorted({curve.spec.method for curve in (*trunks.values(), *runs)})
    budgets = sorted({curve.spec.budget_flops for curve in runs})
    sizes = [curve.size for curve in (*trunks.values(), *runs)]
    norm = LogNorm(vmin=min(sizes), vmax=max(sizes) if max(sizes) > min(sizes) else min(sizes) * 2)
    colors = plt.get_cmap("plasma")
    with plt.rc_context(STYLE):
        figure, axes_list = plt.subplots(len(methods), 1, squeeze=False, sharex=True,
                                         figsize=(FIGURE_WIDTH_INCHES, PANEL_HEIGHT_INCHES * len(methods) + 0.6))
        for axes, method in zip(axes_list[:, 0], methods):
            for trunk in (curve for curve in trunks.values() if curve.spec.method == method):
                flops, losses = zip(*trunk.points)
                axes.plot(flops, losses, color=colors(norm(trunk.size)), linewidth=1.4)
            for run in (curve for curve in runs if curve.spec.method == method):
                color = colors(norm(run.size))
                points = with_fork_point(run, trunks.get(run.spec.trunk_id or ""))
                flops, losses = zip(*points)
                axes.plot(flops, losses, color=color, linewidth=1.1, linestyle="--" if run.spec.trunk_id else "-")
                axes.scatter(flops[-1], losses[-1], color=color, edgecolor="black", linewidth=0.5, zorder=3, s=28,
                             marker=BUDGET_MARKERS[budgets.index(run.spec.budget_flops) % len(BUDGET_MARKERS)])
            for budget in budgets:
                axes.axvline(budget, color="0.5", linestyle=":", linewidth=0.8)
            axes.set_xscale("log")
            axes.set_ylabel("Validation loss (nats/token)")
            axes.set_title(f"method {method}")
        axes_list[-1, 0].set_xlabel("Training FLOPs")
        handles = [Line2D([], [], color="0.3", linewidth=1.4, label="trunk (constant learning rate)"),
                   Line2D([], [], color="0.3", linewidth=1.1, linestyle="--", label="branch cooldown"),
                   *(Line2D([], [], color="0.3", marker=BUDGET_MARKERS[index % len(BUDGET_MARKERS)], linestyle="none",
                            label=f"end of a run at {budget:.0e} FLOPs") for index, budget in enumerate(budgets))]
        figure.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), frameon=False)
        figure.subplots_adjust(bottom=(0.45 + 0.25 * (len(handles) > 4)) / figure.get_figheight() + 0.06,
                               top=1.0 - 0.35 / figure.get_figheight(), right=0.86, hspace=0.35)
        colorbar_axes = figure.add_axes((0.89, axes_list[-1, 0].get_position().y0, 0.015,
                                         axes_list[0, 0].get_position().y1 - axes_list[-1, 0].get_position().y0))
        figure.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=colors), cax=colorbar_axes,
                        label="Active non-embedding parameters")
        save(figure, Path(out_dir) / FIGURE_STEM)
    return {f"{FIGURE_STEM}.png": "Validation loss during training against training FLOPs: trunks at a constant "
                                  "learning rate, each branch's cooldown from its fork step to its budget "
                                  "(Hoffmann et al. 2022, Figure 2 left)"}


def with_fork_point(run: Curve, trunk: Curve | None) -> list[tuple[float, float]]:
    """A branch's points, starting from its trunk's last evaluation at or before the fork step."""
    if trunk is None or run.spec.cooldown_start_step is None:
        return run.points
    fork_flops = run.spec.cooldown_start_step * run.spec.batch_size * run.spec.seq_len * run.spec.flops_per_token_train
    before = [point for point in trunk.points if point[0] <= fork_flops]
    return [before[-1], *run.points] if before else run.points
