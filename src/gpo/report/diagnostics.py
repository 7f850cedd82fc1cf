"""The run diagnostics of a sweep against KL(π‖π_ref): how long the samples got,
the win rate with and without length control, and where the training
responses' log-probabilities went (likelihood displacement). The metrics come
from every run's sample evaluation (gpo.evaluation: eval/length,
eval/lc_win_rate, eval/logratio_chosen, ...)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gpo.report.analysis import error_bar_words, present
from gpo.report.plots import errors, legend_columns, new_figure, save, series, styles, unique_legend

# (panel title, y label, [(metric, line style)], the reference policy's level: a number or a column)
PANELS = [
    ("mean length of policy samples", "tokens", [("eval/length", "-")], "eval/length_reference"),
    ("gold win rate vs reference: length-controlled (solid), raw (dashed)", "fraction",
     [("eval/lc_win_rate", "-"), ("eval/win_rate", "--")], 0.5),
    ("training responses: log π/π_init, chosen (solid), rejected (dashed)", "nats",
     [("eval/logratio_chosen", "-"), ("eval/logratio_rejected", "--")], 0.0),
    ("training pairs whose chosen response fell below π_init", "fraction", [("eval/chosen_below_initial", "-")], None),
]


def plot_diagnostics(table: pd.DataFrame, path: str | Path) -> Path | None:
    """Four panels against KL at the end of training, one curve per family (series), points by beta."""
    if "eval/kl" not in table:
        return None
    panels = [panel for panel in PANELS if present(table, [metric for metric, _ in panel[2]])]
    if not panels:
        return None
    style = styles(series(table).unique())
    fig = new_figure()
    for i, (title, unit, lines, level) in enumerate(panels):
        ax = fig.add_subplot(2, 2, i + 1)
        for name, group in table.groupby(series(table), sort=True):
            for metric, linestyle in lines:
                points = group.dropna(subset=[metric, "eval/kl"]).sort_values("beta") if metric in group else group[:0]
                if not points.empty:
                    ax.errorbar(points["eval/kl"], points[metric], yerr=errors(points, metric), capsize=2,
                                linestyle=linestyle, label=name, **style[name])
        reference = table[level].mean() if isinstance(level, str) and level in table else level
        if reference is not None and pd.notna(reference):
            ax.axhline(reference, color="grey", linestyle=":", label="reference policy")
        ax.set_title(title, fontsize=10)
        if (table["eval/kl"].dropna() > 0).all():
            ax.set_xscale("log")  # KL spans orders of magnitude across a beta grid
        ax.set_xlabel("KL(π‖π_ref) (nats, log scale)" if ax.get_xscale() == "log" else "KL(π‖π_ref) (nats)")
        ax.set_ylabel(unit)
        ax.grid(True, alpha=0.3)
    handles, labels = unique_legend(fig)
    fig.legend(handles, labels, loc="outside lower center", ncols=legend_columns(labels, 4),
               title=f"loss family and method (error bars: {error_bar_words(table)})")
    fig.suptitle("Diagnostics against KL (end of training): length, length-controlled win rate, "
                 "likelihood displacement")
    return save(fig, path)
