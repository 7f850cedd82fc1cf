"""The sweep report, written: load the runs, compute every frame, write
report.csv (one row per (loss, beta)), best_beta.csv (one row per family),
report.md and the plots. `src/report.py` is its CLI; the end-of-sweep Hydra
callback (`gpo.sweeps.outcomes.WriteSweepReport`) calls `write_report` too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from gpo.report.advisor import gap_advice, ratio_advice
from gpo.report.analysis import aggregate, aggregate_trajectories, failed_runs, present
from gpo.report.best_beta import best_beta, csv_frame
from gpo.report.diagnostics import plot_diagnostics
from gpo.report.gao import gao_fits
from gpo.report.gaps import largest_gap, matched_kl_beta_ratios, matched_kl_gaps
from gpo.report.load import check_unique, load_sweep, metric_columns, override_columns
from gpo.report.markdown import report_markdown
from gpo.report.metrics import SELECTION_METRICS
from gpo.report.peak import DROP
from gpo.report.plots import plot_gold_vs_kl, plot_metrics_vs_beta, plot_regulariser, plot_trajectories
from gpo.report.theory import predictions
from gpo.report.theory_plots import plot_best_beta, plot_ratio_vs_key

GAP_METRICS = ["eval/win_rate", "eval/gold_reward"]
GAO_METRICS = ["eval/gold_reward", "eval/win_rate"]  # Gao et al. fit the gold reward model's score


@dataclass
class Report:
    runs: pd.DataFrame
    table: pd.DataFrame  # one row per ([by,] loss, beta): report.csv
    best: pd.DataFrame | None  # one row per family: best beta, ratio, predictions (best_beta.csv: `csv_frame`)
    by: str | None = None
    trajectories: pd.DataFrame = field(default_factory=pd.DataFrame)
    predictions: pd.DataFrame | None = None
    gaps: pd.DataFrame | None = None  # matched-KL gaps with intervals
    largest_gap: dict | None = None
    beta_ratios: pd.DataFrame | None = None  # beta ratio at matched KL with intervals
    gao: pd.DataFrame | None = None  # Gao et al.'s forms: peak KL
    advice_ratio: pd.DataFrame | None = None
    advice_gap: pd.DataFrame | None = None
    failed: pd.DataFrame = field(default_factory=pd.DataFrame)
    figures: list[Path] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    markdown: str = ""


def _with_series(frame: pd.DataFrame, by: str | None) -> pd.DataFrame:
    """Plots draw one curve per family, or per (family, group) with `by`."""
    if not by or frame.empty:
        return frame
    short = by.rsplit(".", 1)[-1]  # data.source.reward_temperature -> reward_temperature
    values = [f"{v:g}" if isinstance(v, float) else str(v) for v in frame[by]]
    return frame.assign(series=[f"{loss} ({short}={value})" for loss, value in zip(frame["loss"], values)])


def _with_predictions(frame: pd.DataFrame, preds: pd.DataFrame, by: str | None) -> pd.DataFrame:
    """Every `*_ratio` prediction column joined on ([by,] loss): a new predictor needs no edit here."""
    keys = ([by] if by else []) + ["loss"]
    columns = [c for c in preds.columns if c.endswith("_ratio")]
    attrs = dict(frame.attrs)
    merged = frame.drop(columns=[c for c in columns if c in frame]).merge(preds[keys + columns], on=keys, how="left")
    merged.attrs = attrs
    return merged


def _plots(directory: Path, report: Report) -> list[Path]:
    by = report.by
    table = _with_series(report.table, by)
    trajectories = report.trajectories
    steps = _with_series(aggregate_trajectories(trajectories, by), by) if not trajectories.empty else trajectories
    plots = [plot_metrics_vs_beta(table, directory / "metrics_vs_beta.png"),
             plot_metrics_vs_beta(table, directory / "metrics_vs_scaled_beta.png", scaled=True),
             plot_gold_vs_kl(table, directory / "gold_vs_kl.png"),
             plot_trajectories(steps, table, directory / "trajectories_win_rate.png", "eval/win_rate"),
             plot_trajectories(steps, table, directory / "trajectories_gold_reward.png", "eval/gold_reward"),
             plot_regulariser(steps, directory / "regulariser_vs_kl.png"),
             plot_diagnostics(table, directory / "diagnostics_vs_kl.png"),
             plot_best_beta(report.best, directory / "best_beta.png") if report.best is not None else None]
    if by and report.beta_ratios is not None:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", by)
        plots.append(plot_ratio_vs_key(report.beta_ratios, by, directory / f"ratio_vs_{name}.png"))
    return [p for p in plots if p is not None]


def write_report(directory: str | Path, runs: pd.DataFrame | None = None, selection_metric: str | None = None,
                 reference: str = "ipo", by: str | None = None, trajectories: pd.DataFrame | None = None,
                 level: float = 0.95, drop: float = DROP, precision: float = 0.1, gap: float | None = None,
                 plots: bool = True, out: str | Path | None = None) -> Report:
    """Load (unless `runs` is given) the sweep in `directory`, analyse, and write report.{csv,md},
    best_beta.csv and (with `plots`) PNGs into `out` (default: `directory` itself; another folder
    leaves a sweep that is still running, or read-only, untouched). `by`: an override key whose
    values split the sweep into groups; `drop`: the fit window (see `gpo.report.peak`); `precision`,
    `gap`: the seed advisor's targets (a relative half-width on the best-beta ratio; a gap at matched
    KL, default the largest measured)."""
    directory = Path(directory)
    out = directory if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if runs is None:
        runs, trajectories = load_sweep(directory)
    check_unique(runs)
    if by and (by not in runs or runs[by].isna().all()):
        known = ", ".join(override_columns(runs)) or "none"
        raise LookupError(f"no run has {by!r} (override keys in this sweep: {known})")
    if by:
        runs = runs.dropna(subset=[by])
    if selection_metric and (selection_metric not in runs or runs[selection_metric].isna().all()):
        known = ", ".join(metric_columns(runs)) or "none"
        raise LookupError(f"no run has the metric {selection_metric!r} (metrics in this sweep: {known})")
    report = Report(runs, aggregate(runs, by), None, by,
                    pd.DataFrame() if trajectories is None else trajectories, failed=failed_runs(runs))
    report.predictions = predictions(runs, reference, by)
    metric = selection_metric or next(iter(present(runs, SELECTION_METRICS)), None)
    if metric is not None:  # else the runs measured nothing to select a beta by
        report.best = _with_predictions(best_beta(runs, metric, reference, by, level, drop), report.predictions, by)
        report.advice_ratio = ratio_advice(report.best, precision, level)
    gap_metric = next(iter(present(report.table, GAP_METRICS)), None)
    if gap_metric and present(report.table, ["eval/kl"]):
        report.gaps = matched_kl_gaps(runs, gap_metric, reference, by=by, level=level)
        report.largest_gap = largest_gap(report.gaps, level)
        report.advice_gap = gap_advice(report.gaps, gap, level)
        report.beta_ratios = _with_predictions(matched_kl_beta_ratios(runs, reference, by, level),
                                               report.predictions, by)
        report.gao = gao_fits(runs, next(iter(present(report.table, GAO_METRICS))), by, level)

    report.paths = [out / "report.csv", out / "best_beta.csv", out / "report.md"]
    report.table.to_csv(report.paths[0], index=False)
    best_csv = csv_frame(report.best) if report.best is not None else pd.DataFrame(columns=["loss"])
    best_csv.to_csv(report.paths[1], index=False)
    report.figures = _plots(out, report) if plots else []
    report.markdown = report_markdown(report, directory)
    report.paths[2].write_text(report.markdown)
    report.paths += report.figures
    return report
