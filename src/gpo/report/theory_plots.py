"""Figures that set measured beta ratios, with their intervals, against the
predictions (same pixel size as every other plot, see `gpo.report.plots`).
Only a ratio with an interval is drawn; the others are named on the axis
with the reason, so no bound is ever drawn as a value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, NullFormatter

from gpo.report.best_beta import REFERENCE
from gpo.report.markdown import predictor_columns, predictor_label
from gpo.report.plots import new_figure, save, styles

# One marker per predictor, in the order of `predictor_columns`.
PREDICTOR_STYLES = [dict(marker="_", markersize=22, markeredgewidth=2.5, color="black"),
                    dict(marker="x", markersize=10, markeredgewidth=2, color="crimson"),
                    dict(marker="+", markersize=12, markeredgewidth=2, color="darkgreen"),
                    dict(marker="1", markersize=12, markeredgewidth=2, color="purple")]


def _style(i: int) -> dict:
    return {**PREDICTOR_STYLES[i % len(PREDICTOR_STYLES)], "linestyle": "none"}


def _label(row: dict, by: str | None) -> str:
    if not by:
        return row["loss"]
    value = row[by]
    return f"{row['loss']}\n{by.rsplit('.', 1)[-1]}={value:g}" if isinstance(value, float) else \
        f"{row['loss']}\n{by.rsplit('.', 1)[-1]}={value}"


def plot_best_beta(best: pd.DataFrame, path: str | Path) -> Path | None:
    """Per family: best beta / best beta(reference) with its interval, next to every prediction;
    log y. None when no family has a ratio interval."""
    drawn = best[np.isfinite(best["ratio_low"]) & np.isfinite(best["ratio_high"])] if not best.empty else best
    if drawn.empty:
        return None
    by, reference = best.attrs.get("by"), best.attrs.get("reference", "reference")
    level = f"{100 * best.attrs.get('level', 0.95):g}%"
    rows = drawn.to_dict("records")
    colours = styles(drawn["loss"].unique())
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for i, r in enumerate(rows):
        ax.errorbar(i, r["ratio"], yerr=[[r["ratio"] - r["ratio_low"]], [r["ratio_high"] - r["ratio"]]], capsize=5,
                    marker="o", color=colours[r["loss"]]["color"], linestyle="none",
                    label=f"measured, {level} interval (cubic fit per seed, paired seeds)")
        for k, column in enumerate(predictor_columns(drawn)):
            if np.isfinite(r[column]):
                ax.plot(i, r[column], label=predictor_label(column), **_style(k))
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xticks(range(len(rows)), [_label(r, by) for r in rows])
    ax.set_ylabel(f"best β / best β({reference}) (dimensionless, log scale)")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.grid(True, which="both", axis="y", alpha=0.3)
    handles, names = _unique(ax)
    ax.legend(handles, names, loc="best")
    rest = best[~best.index.isin(drawn.index)]
    left_out = [f"{r['loss']}" + (f" ({by}={r[by]})" if by else "") for r in rest.to_dict("records")
                if r.get("ratio_note") != REFERENCE]
    title = f"Best β per family relative to {reference} (selection metric {best.attrs.get('metric', '')})"
    if left_out:
        title += f"\nnot drawn, no interval (see report.md): {', '.join(left_out)}"
    fig.suptitle(title)
    return save(fig, path)


def plot_ratio_vs_key(ratios: pd.DataFrame, by: str, path: str | Path) -> Path | None:
    """Matched-KL ratio beta(family)/beta(reference) against the `by` value, with its interval
    where it has one, and each prediction per group."""
    if ratios.empty or not ratios["ratio"].notna().any():
        return None
    reference = ratios.attrs.get("reference", "reference")
    numeric = pd.to_numeric(ratios[by], errors="coerce")
    x_values = numeric if numeric.notna().all() else pd.Series(pd.factorize(ratios[by], sort=True)[0],
                                                                index=ratios.index)
    colours = styles(ratios["loss"].unique())
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for loss, group in ratios.assign(_x=x_values).sort_values("_x").groupby("loss", sort=True):
        colour = colours[loss]["color"]
        bounded = np.isfinite(group["ratio_low"]) & np.isfinite(group["ratio_high"])
        ax.errorbar(group["_x"][bounded], group["ratio"][bounded], capsize=4, marker=colours[loss]["marker"],
                    color=colour, linestyle="none", label=f"{loss}: measured, with its interval",
                    yerr=[group["ratio"][bounded] - group["ratio_low"][bounded],
                          group["ratio_high"][bounded] - group["ratio"][bounded]])
        if (~bounded).any():
            ax.plot(group["_x"][~bounded], group["ratio"][~bounded], marker=colours[loss]["marker"], color=colour,
                    markerfacecolor="none", linestyle="none", label=f"{loss}: measured, no interval (one seed)")
        for k, column in enumerate(predictor_columns(ratios)):
            if group[column].notna().any():
                ax.plot(group["_x"], group[column], color=colour, marker=_style(k)["marker"], markersize=9,
                        linestyle=":", label=f"{loss}: {predictor_label(column)}")
    if numeric.notna().all() and (numeric > 0).all():
        ax.set_xscale("log")
        ax.set_xticks(sorted(numeric.unique()), [f"{v:g}" for v in sorted(numeric.unique())])
        ax.xaxis.set_minor_formatter(NullFormatter())
    elif not numeric.notna().all():
        codes = sorted(set(zip(x_values, ratios[by])))
        ax.set_xticks([c for c, _ in codes], [str(v) for _, v in codes])
    ax.set_xlabel(by)
    ax.set_ylabel(f"β / β({reference}) at matched KL (dimensionless)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"β ratio to {reference} at matched KL, by {by}: measured vs predicted")
    return save(fig, path)


def _unique(ax):
    entries = {}
    for handle, label in zip(*ax.get_legend_handles_labels()):
        entries.setdefault(label, handle)
    return list(entries.values()), list(entries.keys())
