"""Figures of a sweep, all the same pixel size (FIGSIZE at DPI: 1200 x 800).

Each function returns the path written, or None when the data has nothing to
show. Curves are per family ("loss"), or per "series" when the frame has that
column (a family within a group of `--by`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from gpo.report.analysis import error_bar_words, present
from gpo.report.metrics import PLOT_METRICS, STDERR_SUFFIX, spec

# Fixed so that every plot has the same pixel size (1200 x 800), whatever it shows.
FIGSIZE = (12, 8)
DPI = 100
BETA_COLOURS = colormaps["viridis"]


def series(frame: pd.DataFrame) -> pd.Series:
    return frame["series"] if "series" in frame else frame["loss"]


def styles(names) -> dict[str, dict]:
    """The same colour and marker for a family (series) in every plot."""
    markers = "osD^vPX*<>"
    return {f: {"color": f"C{i % 10}", "marker": markers[i % len(markers)]} for i, f in enumerate(sorted(names))}


def unscalable_families(table: pd.DataFrame) -> list[str]:
    """Families whose f''(0) = 0 (e.g. hinge): beta cannot be rescaled for them."""
    scale = table.groupby("loss")["regularisation_scale"].first()
    return sorted(scale.index[~(scale > 0)])


def new_figure() -> Figure:
    return Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")


def panel_grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    ncols = min(max_cols, max(n, 1))
    return math.ceil(max(n, 1) / ncols), ncols


def log_x_at(ax, values, most: int = 7) -> None:
    """Log x axis, ticks at the sweep's grid values, at most `most` of them and
    at least 1/`most` of the axis apart (a long grid, or two families' rescaled
    grids interleaved, would print their labels on top of each other), labelled
    plainly; no minor labels (matplotlib labels minor ticks on an axis of about
    a decade, and they overlap too)."""
    ax.set_xscale("log")
    values = np.unique(pd.Series(values).dropna().map(lambda v: float(f"{v:.3g}")))
    values = values[values > 0]
    ticks = []
    if len(values):
        gap = max(np.log10(values[-1] / values[0]), 1e-12) / most
        for value in values:
            if not ticks or np.log10(value / ticks[-1]) >= gap * 0.999:
                ticks.append(value)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def label_apart(ax, points, apart: tuple[float, float] = (0.07, 0.03)) -> None:
    """Annotate (x, y, text, colour) points, skipping a label that would sit
    within `apart` (fractions of the axes' width and height) of one already
    placed: where curves pile up, one label per spot instead of a smudge."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    placed = []
    for x, y, text, colour in points:
        u, v = (x - x0) / (x1 - x0), (y - y0) / (y1 - y0)
        if all(abs(u - pu) > apart[0] or abs(v - pv) > apart[1] for pu, pv in placed):
            placed.append((u, v))
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colour)


def errors(group: pd.DataFrame, metric: str):
    col = metric + STDERR_SUFFIX
    return group[col].to_numpy(float) if col in group else None


def legend_columns(labels: list[str], most: int) -> int:
    """As many legend columns as fit across the figure (about 170 characters), at most `most`."""
    width = max((len(label) for label in labels), default=1) + 6
    return max(1, min(len(labels), most, 170 // width))


def unique_legend(fig: Figure):
    entries = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    return list(entries.values()), list(entries.keys())


def save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    # No bbox_inches="tight": it would change the pixel size from plot to plot.
    fig.savefig(path, dpi=DPI)
    return path


def reference_line(ax, table: pd.DataFrame, metric: str) -> None:
    """What the reference policy itself scores, for scale."""
    if metric == "eval/win_rate":
        ax.axhline(0.5, color="grey", linestyle="--", label="reference policy (win rate 0.5)")
    elif present(table, ["eval/gold_reward_reference"]) and metric == "eval/gold_reward":
        ax.axhline(table["eval/gold_reward_reference"].mean(), color="grey", linestyle="--",
                   label="reference policy (mean gold reward)")


def plot_metrics_vs_beta(table: pd.DataFrame, path: str | Path, scaled: bool = False) -> Path | None:
    """A grid of metric-vs-beta panels, one line per family. With `scaled`, the
    x axis is beta * f''(0)/|f'(0)| (the Taylor rescaling), under which the
    families with the same local regularisation line up; families with scale 0
    are left out and named in the title."""
    x_col = "scaled_beta" if scaled else "beta"
    omitted = unscalable_families(table) if scaled else []
    data = table[~table["loss"].isin(omitted) & (table[x_col] > 0)]
    metrics = present(data, PLOT_METRICS)  # no panel without a point
    if not metrics:
        return None
    style = styles(series(table).unique())
    fig = new_figure()
    nrows, ncols = panel_grid(len(metrics))
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for name, group in data.groupby(series(data), sort=True):
            group = group.dropna(subset=[metric]).sort_values(x_col)
            if not group.empty:
                ax.errorbar(group[x_col], group[metric], yerr=errors(group, metric), capsize=3,
                            label=f"{name} (f''(0)/|f'(0)| = {group['regularisation_scale'].iloc[0]:g})",
                            **style[name])
        log_x_at(ax, data[x_col])
        ax.set_xlabel("β · f''(0)/|f'(0)| (dimensionless)" if scaled else "β (dimensionless)")
        ax.set_ylabel(spec(metric).axis_label)
        ax.set_title(spec(metric).label)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = unique_legend(fig)
    fig.legend(handles, labels, loc="outside lower center", ncols=legend_columns(labels, 4),
               title=f"loss family (error bars: {error_bar_words(table)})")
    title = ("GPO sweep: metrics vs Taylor-rescaled β = β·f''(0)/|f'(0)|" if scaled else "GPO sweep: metrics vs β")
    if omitted:
        title += f"\nomitted, f''(0) = 0 so β cannot be rescaled: {', '.join(omitted)}"
    fig.suptitle(title)
    return save(fig, path)


def plot_gold_vs_kl(table: pd.DataFrame, path: str | Path) -> Path | None:
    """Gold win rate and gold reward at the end of training against KL(π‖π_ref),
    one curve per family, points labelled by beta."""
    metrics = [m for m in present(table, ["eval/win_rate", "eval/gold_reward"])
               if table[[m, "eval/kl"]].notna().all(axis=1).any()] if "eval/kl" in table else []
    if not metrics:  # no panel without a point
        return None
    style = styles(series(table).unique())
    fig = new_figure()
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        points = []
        for name, group in table.groupby(series(table), sort=True):
            group = group.dropna(subset=[metric, "eval/kl"]).sort_values("beta")
            if group.empty:
                continue
            ax.errorbar(group["eval/kl"], group[metric], yerr=errors(group, metric),
                        xerr=errors(group, "eval/kl"), capsize=3, label=name, **style[name])
            points += [(point["eval/kl"], point[metric], f"β={point['beta']:.3g}", style[name]["color"])
                       for _, point in group.iterrows()]
        label_apart(ax, points)
        reference_line(ax, table, metric)
        ax.set_xlabel(spec("eval/kl").axis_label)
        ax.set_ylabel(spec(metric).axis_label)
        ax.set_title(f"{spec(metric).label}, against KL")
        ax.grid(True, alpha=0.3)
    handles, labels = unique_legend(fig)
    fig.legend(handles, labels, loc="outside lower center", ncols=legend_columns(labels, 5),
               title=f"loss family (error bars: {error_bar_words(table)})")
    fig.suptitle("GPO sweep: gold-reward trade-off against KL from the reference policy (end of training)")
    return save(fig, path)


def plot_trajectories(trajectories: pd.DataFrame, table: pd.DataFrame, path: str | Path,
                      metric: str = "eval/win_rate") -> Path | None:
    """`metric` against KL along training, one panel per family, one line per
    beta (seed means at each evaluation step), coloured by beta; the end points
    (final metrics, seed means) circled."""
    if trajectories.empty or not present(trajectories, [metric, "eval/kl"]):
        return None
    data = trajectories.dropna(subset=[metric, "eval/kl"])
    data = data[data["beta"] > 0]
    names = sorted(series(data).unique())
    norm = LogNorm(data["beta"].min(), data["beta"].max() * (1 + 1e-9))
    fig = new_figure()
    nrows, ncols = panel_grid(len(names))
    axes = []
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        axes.append(ax)
        for beta, line in data[series(data) == name].groupby("beta", sort=True):
            line = line.sort_values("step")
            ax.plot(line["eval/kl"], line[metric], color=BETA_COLOURS(norm(beta)), linewidth=1.2, marker=".")
        ends = table[(series(table) == name)].dropna(subset=[metric, "eval/kl"]) if metric in table else table[:0]
        ax.scatter(ends["eval/kl"], ends[metric], c=[BETA_COLOURS(norm(b)) for b in ends["beta"]],
                   edgecolors="black", s=40, zorder=3, label="end of training (seed mean)")
        reference_line(ax, table, metric)
        ax.set_title(name)
        ax.set_xlabel(spec("eval/kl").axis_label)
        ax.set_ylabel(spec(metric).axis_label)
        ax.grid(True, alpha=0.3)
    fig.colorbar(_mappable(norm), ax=axes, label="β (dimensionless, log scale)")
    handles, labels = unique_legend(fig)
    fig.legend(handles, labels, loc="outside lower center", ncols=2)
    fig.suptitle(f"GPO sweep: {spec(metric).label} against KL along training "
                 "(one line per β, seed means at each evaluation step)")
    return save(fig, path)


def _mappable(norm):
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=norm, cmap=BETA_COLOURS)


def plot_regulariser(trajectories: pd.DataFrame, path: str | Path, n_betas: int = 3,
                     kl_factor: float = 2.0) -> Path | None:
    """The offline regulariser E_data[ρ²]/2 and kl_factor · KL(π‖π_ref) against
    training step, one panel per family, for `n_betas` betas spanning its grid.
    With on-policy pairs and near the reference, E[ρ²]/2 ≈ 2·KL to second order
    (derived): the lines agree there and part where the data's support stops
    constraining the policy."""
    keys = ["eval/offline_regulariser", "eval/kl"]
    if trajectories.empty or len(present(trajectories, keys)) < 2:
        return None
    data = trajectories.dropna(subset=keys)
    data = data[data["beta"] > 0]
    names = sorted(series(data).unique())
    norm = LogNorm(data["beta"].min(), data["beta"].max() * (1 + 1e-9))
    fig = new_figure()
    nrows, ncols = panel_grid(len(names))
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        family = data[series(data) == name]
        grid = np.sort(family["beta"].unique())
        chosen = grid[np.unique(np.round(np.linspace(0, len(grid) - 1, min(n_betas, len(grid)))).astype(int))]
        for beta in chosen:
            line = family[family["beta"] == beta].sort_values("step")
            colour = BETA_COLOURS(norm(beta))
            ax.plot(line["step"], line["eval/offline_regulariser"], color=colour, linestyle="--",
                    label=f"β={beta:.3g}: E_data[ρ²]/2")
            ax.plot(line["step"], kl_factor * line["eval/kl"], color=colour, label=f"β={beta:.3g}: {kl_factor:g}·KL")
        ax.set_title(name)
        ax.set_xlabel("training step")
        ax.set_ylabel("nats² (E[ρ²]/2), nats (KL)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Offline regulariser E_data[ρ²]/2 (dashed) vs {kl_factor:g}·KL(π‖π_ref) (solid) along training\n"
                 "near the reference and on-policy the two agree to second order (derived); "
                 "they part where the data stop constraining the policy")
    return save(fig, path)
