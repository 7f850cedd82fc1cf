"""Sweep report: tables and plots over a Hydra multirun of GPO training jobs.

Modules, one job each:
- `load`: summary.json files (or W&B runs) -> the run table and the trajectories;
- `analysis`: seed aggregation, families at matched KL, the largest gap between curves;
- `best_beta`: the best beta per family and its ratio to a reference family,
  with bootstrap intervals over seeds;
- `theory`: the Taylor (paper) and link-function (derived) predictions of those ratios;
- `plots`, `theory_plots`: the figures; `markdown`: the tables and the page.

Entry point: `write_report(directory)`; `src/report.py` is its CLI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from gpo.report.analysis import (
    KLGap,
    aggregate,
    aggregate_trajectories,
    default_kls,
    default_selection_metric,
    failed_runs,
    matched_kl,
    matched_kl_ratios,
    max_matched_kl_gap,
    per_group,
    present,
)
from gpo.report.best_beta import best_beta, fit_peak
from gpo.report.load import (
    load_summaries,
    load_sweep,
    load_wandb_runs,
    normalise,
    override_columns,
    read_summaries,
    runs_frame,
    trajectories_frame,
)
from gpo.report.markdown import (
    best_beta_markdown,
    failed_markdown,
    gap_markdown,
    label_check_markdown,
    matched_kl_markdown,
    report_markdown,
    results_markdown,
    to_markdown,
)
from gpo.report.metrics import METRICS, Metric
from gpo.report.plots import (
    DPI,
    FIGSIZE,
    plot_gold_vs_kl,
    plot_metrics_vs_beta,
    plot_regulariser,
    plot_trajectories,
    unscalable_families,
)
from gpo.report.theory import link_ratios, pooled_histogram, predictions, taylor_ratio
from gpo.report.theory_plots import plot_best_beta, plot_ratio_vs_key

__all__ = ["DPI", "FIGSIZE", "KLGap", "METRICS", "Metric", "Report", "aggregate", "aggregate_trajectories",
           "best_beta", "best_beta_markdown", "default_kls", "default_selection_metric", "failed_markdown",
           "failed_runs", "fit_peak", "gap_markdown", "label_check_markdown", "link_ratios", "load_summaries",
           "load_sweep", "load_wandb_runs", "matched_kl", "matched_kl_markdown", "matched_kl_ratios",
           "max_matched_kl_gap", "normalise", "override_columns", "per_group", "plot_best_beta", "plot_gold_vs_kl",
           "plot_metrics_vs_beta", "plot_ratio_vs_key", "plot_regulariser", "plot_trajectories", "pooled_histogram",
           "predictions", "present", "read_summaries", "report_markdown", "results_markdown", "runs_frame",
           "taylor_ratio", "to_markdown", "trajectories_frame", "unscalable_families", "write_report"]


@dataclass
class Report:
    runs: pd.DataFrame
    table: pd.DataFrame  # one row per ([by,] loss, beta)
    best: pd.DataFrame | None  # best beta per family, ratios, predictions
    gap: KLGap | None  # the whole sweep's (the first group's with `by`)
    markdown: str
    paths: list[Path]
    trajectories: pd.DataFrame = field(default_factory=pd.DataFrame)
    at_kl: pd.DataFrame | None = None  # matched_kl, with the link ratio
    check: pd.DataFrame | None = None  # matched-KL ratio by `by` group vs predictions
    predictions: pd.DataFrame | None = None
    gaps: dict = field(default_factory=dict)


def _with_series(frame: pd.DataFrame, by: str | None) -> pd.DataFrame:
    """Plots draw one curve per family, or per (family, group) with `by`."""
    if not by or frame.empty:
        return frame
    short = by.rsplit(".", 1)[-1]  # data.source.reward_temperature -> reward_temperature
    values = [f"{v:g}" if isinstance(v, float) else str(v) for v in frame[by]]
    return frame.assign(series=[f"{loss} ({short}={value})" for loss, value in zip(frame["loss"], values)])


def _merge_predictions(frame: pd.DataFrame, preds: pd.DataFrame, keys: list[str], columns: list[str]) -> pd.DataFrame:
    attrs = dict(frame.attrs)
    merged = frame.drop(columns=[c for c in columns if c in frame]).merge(preds[keys + columns], on=keys, how="left")
    merged.attrs = attrs
    return merged


def _plots(directory: Path, table, trajectories, best, check, by) -> list[Path]:
    plot_table = _with_series(table, by)
    steps = _with_series(aggregate_trajectories(trajectories, by), by) if not trajectories.empty else trajectories
    plots = [plot_metrics_vs_beta(plot_table, directory / "metrics_vs_beta.png"),
             plot_metrics_vs_beta(plot_table, directory / "metrics_vs_scaled_beta.png", scaled=True),
             plot_gold_vs_kl(plot_table, directory / "gold_vs_kl.png"),
             plot_trajectories(steps, plot_table, directory / "trajectories_win_rate.png", "eval/win_rate"),
             plot_trajectories(steps, plot_table, directory / "trajectories_gold_reward.png", "eval/gold_reward"),
             plot_regulariser(steps, directory / "regulariser_vs_kl.png"),
             plot_best_beta(best, directory / "best_beta.png") if best is not None else None]
    if by and check is not None:
        plots.append(plot_ratio_vs_key(check, by, directory / f"ratio_vs_{re.sub(r'[^A-Za-z0-9_.-]', '_', by)}.png"))
    return [p for p in plots if p is not None]


def write_report(directory: str | Path, runs: pd.DataFrame | None = None, selection_metric: str | None = None,
                 reference: str = "ipo", by: str | None = None, trajectories: pd.DataFrame | None = None,
                 level: float = 0.95, n_boot: int = 1000, bootstrap_seed: int = 0, half_width: int = 1,
                 plots: bool = True) -> Report:
    """Load (unless `runs` is given), analyse, and write report.{csv,md} and (with `plots`) PNGs into
    `directory`. `by`: an override key (a run-table column) whose values split the sweep into groups;
    level, n_boot, bootstrap_seed, half_width: see `gpo.report.best_beta`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if runs is None:
        runs, trajectories = load_sweep(directory)
    trajectories = pd.DataFrame() if trajectories is None else trajectories
    if by and (by not in runs or runs[by].isna().all()):
        known = ", ".join(override_columns(runs)) or "none"
        raise LookupError(f"no run has {by!r} (override keys in this sweep: {known})")
    if by:
        runs = runs.dropna(subset=[by])
    table = aggregate(runs, by)
    paths = [directory / "report.csv"]
    table.to_csv(paths[0], index=False)

    keys = ([by] if by else []) + ["loss"]
    preds = predictions(runs, reference, by)
    try:
        best = best_beta(runs, selection_metric, reference, by, level, n_boot, bootstrap_seed, half_width)
        best = _merge_predictions(best, preds, keys, ["taylor_ratio", "link_ratio", "link_ratio_lsq"])
    except ValueError:
        best = None
    gap_metric = next(iter(present(table, ["eval/win_rate", "eval/gold_reward"])), None)
    at_kl = check = None
    gaps = {}
    if gap_metric and present(table, ["eval/kl"]):
        at_kl = per_group(table, by, matched_kl, metric=gap_metric, reference=reference)
        at_kl = _merge_predictions(at_kl, preds, keys, ["link_ratio"])
        at_kl.attrs.update(metric=gap_metric, reference=reference, by=by)
        groups = table.groupby(by, sort=True) if by else [("", table)]
        gaps = {(f"{by}={value}" if by else ""): max_matched_kl_gap(group, gap_metric) for value, group in groups}
        if by:
            check = per_group(table, by, matched_kl_ratios, reference)
            check = _merge_predictions(check, preds, keys, ["taylor_ratio", "link_ratio", "link_ratio_lsq"])
            check.attrs.update(reference=reference, by=by)

    figures = _plots(directory, table, trajectories, best, check, by) if plots else []
    markdown = report_markdown(directory, runs, table, best, at_kl, check, gaps, figures, failed_runs(runs), by)
    md_path = directory / "report.md"
    md_path.write_text(markdown)
    paths += [md_path] + figures
    gap = next(iter(gaps.values()), None)
    return Report(runs, table, best, gap, markdown, paths, trajectories, at_kl, check, preds, gaps)
