"""Figures that set measured beta ratios against the Taylor and link predictions
(same pixel size as every other plot, see `gpo.report.plots`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from gpo.report.plots import new_figure, save, styles

TAYLOR_STYLE = dict(marker="_", markersize=22, markeredgewidth=2.5, linestyle="none", color="black")
LINK_STYLE = dict(marker="x", markersize=10, markeredgewidth=2, linestyle="none", color="crimson")


def plot_best_beta(best: pd.DataFrame, path: str | Path) -> Path | None:
    """Per family: best beta / best beta(reference) with its bootstrap interval,
    next to the Taylor and link predictions; log y. A family whose peak is at a
    grid end is drawn as a triangle pointing the way the bound goes."""
    if best.empty or not best["ratio"].notna().any():
        return None
    by, reference = best.attrs.get("by"), best.attrs.get("reference", "reference")
    rows = best.reset_index(drop=True)
    short = by.rsplit(".", 1)[-1] if by else ""
    labels = [f"{r['loss']}\n{short}={r[by]:g}" if by and isinstance(r[by], float) else
              f"{r['loss']}\n{short}={r[by]}" if by else r["loss"] for _, r in rows.iterrows()]
    style = styles(rows["loss"].unique())
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(rows))
    for i, r in rows.iterrows():
        colour = style[r["loss"]]["color"]
        bound = r.get("ratio_bound", "")
        if bound:
            ax.plot(x[i], r["ratio"], marker={"≥": "^", "≤": "v"}.get(bound, "d"), markersize=10,
                    markerfacecolor="none", color=colour, linestyle="none",
                    label="measured, peak at a grid end (a bound)")
        else:
            yerr = None
            if np.isfinite(r["ratio_lo"]):
                yerr = [[r["ratio"] - r["ratio_lo"]], [r["ratio_hi"] - r["ratio"]]]
            ax.errorbar(x[i], r["ratio"], yerr=yerr, capsize=5, marker="o", color=colour, linestyle="none",
                        label=f"measured (quadratic-fit peak, {100 * best.attrs.get('level', 0.95):g}% bootstrap CI)")
        if "taylor_ratio" in r and np.isfinite(r["taylor_ratio"]):
            ax.plot(x[i], r["taylor_ratio"], label="Taylor: scale(ref)/scale(family) (paper)", **TAYLOR_STYLE)
        if "link_ratio" in r and np.isfinite(r["link_ratio"]):
            ax.plot(x[i], r["link_ratio"], label="link: RMS t*(p) ratio (derived here)", **LINK_STYLE)
    ax.set_yscale("log")
    ax.set_xticks(x, labels)
    ax.set_ylabel(f"best β / best β({reference}) (dimensionless, log scale)")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.grid(True, which="both", axis="y", alpha=0.3)
    handles, names = _unique(ax)
    ax.legend(handles, names, loc="best")
    fig.suptitle(f"Best β per family relative to {reference} (selection metric {best.attrs.get('metric', '')}), "
                 "against the Taylor and link predictions")
    return save(fig, path)


def plot_ratio_vs_key(check: pd.DataFrame, by: str, path: str | Path) -> Path | None:
    """Matched-KL ratio beta(family)/beta(reference) against the `by` value: the
    measured geometric mean (bars: min to max over the shared KL range), the
    link prediction for each group's preference probabilities (line) and the
    Taylor constant (dashed)."""
    if check.empty or not check["ratio"].notna().any():
        return None
    reference = check["reference"].iloc[0] if "reference" in check else "reference"
    numeric = pd.to_numeric(check[by], errors="coerce")
    x_values = numeric if numeric.notna().all() else pd.Series(pd.factorize(check[by], sort=True)[0], index=check.index)
    style = styles(check["loss"].unique())
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for loss, group in check.assign(_x=x_values).sort_values("_x").groupby("loss", sort=True):
        colour = style[loss]["color"]
        ax.errorbar(group["_x"], group["ratio"], capsize=4, marker=style[loss]["marker"], color=colour,
                    linestyle="none", label=f"{loss}: measured (geometric mean over shared KL range)",
                    yerr=[group["ratio"] - group["ratio_min"], group["ratio_max"] - group["ratio"]])
        if group["link_ratio"].notna().any():
            ax.plot(group["_x"], group["link_ratio"], color=colour, marker="x", markersize=9,
                    label=f"{loss}: link prediction (derived)")
        if group["taylor_ratio"].notna().any():
            ax.axhline(group["taylor_ratio"].dropna().iloc[0], color=colour, linestyle="--",
                       label=f"{loss}: Taylor prediction (paper)")
    if numeric.notna().all() and (numeric > 0).all():
        ax.set_xscale("log")
        ax.set_xticks(sorted(numeric.unique()), [f"{v:g}" for v in sorted(numeric.unique())])
        ax.xaxis.set_minor_formatter(NullFormatter())
    elif not numeric.notna().all():
        codes = sorted(set(zip(x_values, check[by])))
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
