"""Sweep report: tables and plots over a Hydra multirun of GPO training jobs.

Every training job writes a `summary.json` (loss, beta, seed, status, the
family's Taylor coefficients and a flat `metrics` dict). This module loads
them into one DataFrame, aggregates seeds (mean and standard error), and
writes what a reader needs to check the GPO paper's claims:

- the per-family curves of gold win rate against KL lie close together
  (`max_matched_kl_gap`);
- the best beta differs between families as f''(0)/|f'(0)| predicts
  (`best_beta`);
- with beta rescaled by f''(0)/|f'(0)| the curves line up
  (`plot_metrics_vs_beta(..., scaled=True)`).

Entry point: `write_report(directory)`; `src/report.py` is its CLI.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from gpo.matched_kl import matched_kl, matched_kl_frame

# Fixed so that every plot has the same pixel size (1200 x 800), whatever it shows.
FIGSIZE = (12, 8)
DPI = 100


@dataclass(frozen=True)
class Metric:
    key: str  # the name in summary.json / the W&B run summary
    label: str
    unit: str
    higher_is_better: bool

    @property
    def axis_label(self) -> str:
        return f"{self.label} ({self.unit})"


# Rewards are beta * log-ratios, so they are in nats like the log-probabilities.
METRICS = {
    m.key: m
    for m in [
        Metric("val/loss", "val loss E[f(β·ρ)]", "dimensionless", False),
        Metric("val/rewards/accuracies", "val preference accuracy", "fraction", True),
        Metric("val/rewards/margins", "val reward margin β·ρ", "nats", True),
        Metric("val/rewards/chosen", "val reward, chosen", "nats", True),
        Metric("val/rewards/rejected", "val reward, rejected", "nats", False),
        Metric("val/logps/chosen", "val log π(y_w|x)", "nats", True),
        Metric("val/logps/rejected", "val log π(y_l|x)", "nats", False),
        Metric("train/loss", "train loss E[f(β·ρ)]", "dimensionless", False),
        Metric("eval/kl", "KL(π‖π_ref)", "nats", False),
        Metric("eval/gold_reward", "gold reward of policy samples", "gold-reward units", True),
        Metric("eval/gold_reward_reference", "gold reward of reference samples", "gold-reward units", True),
        Metric("eval/win_rate", "gold win rate vs reference", "fraction", True),
        Metric("wall_time_s", "wall time", "s", False),
    ]
}

TABLE_METRICS = [
    "val/loss",
    "val/rewards/accuracies",
    "val/rewards/margins",
    "eval/kl",
    "eval/gold_reward",
    "eval/win_rate",
    "wall_time_s",
]
PLOT_METRICS = [
    "val/loss",
    "val/rewards/accuracies",
    "val/rewards/margins",
    "eval/kl",
    "eval/gold_reward",
    "eval/win_rate",
]

# Per-run fields that identify or describe a run rather than measure it.
RUN_FIELDS = ["loss", "beta", "seed", "status", "error", "overrides", "path",
              "f0", "df0", "d2f0", "regularisation_scale"]
# A metric `m` may come with a per-run sampling error `m + STDERR_SUFFIX`.
STDERR_SUFFIX = "_stderr"
FINISHED = "finished"


# ---------------------------------------------------------------- loading


def load_summaries(directory: str | Path) -> pd.DataFrame:
    """One row per `summary.json` found (recursively) under `directory`."""
    directory = Path(directory)
    paths = sorted(directory.rglob("summary.json"))
    if not paths:
        raise FileNotFoundError(f"no summary.json under {directory}")
    records = []
    for path in paths:
        summary = json.loads(path.read_text())
        record = _select(summary)
        record.update(_select(summary.get("metrics") or {}))
        record["path"] = str(path.parent.relative_to(directory))
        records.append(record)
    return _normalise(pd.DataFrame.from_records(records))


def load_wandb_runs(group: str, project: str | None = None,
                    entity: str | None = None) -> pd.DataFrame:
    """The same table as `load_summaries`, read from W&B run summaries of a group."""
    import wandb  # only needed online

    api = wandb.Api()
    path = "/".join(p for p in (entity or api.default_entity, project) if p)
    records = []
    for run in api.runs(path, filters={"group": group}):
        summary = dict(run.summary)
        # W&B adds its own bookkeeping (_step, _runtime, ...) to every summary.
        record = _select({k: v for k, v in summary.items() if not k.startswith("_")})
        for key in ("loss", "beta", "seed"):
            # The trainer may have put the sweep axes in the config instead.
            if key not in record and not isinstance(run.config.get(key), dict):
                record[key] = run.config.get(key)
        record.setdefault("status", run.state)
        record.setdefault("wall_time_s", summary.get("_runtime"))
        record["path"] = run.url
        records.append(record)
    if not records:
        raise LookupError(f"no W&B runs in group {group!r} of {path!r}")
    return _normalise(pd.DataFrame.from_records(records))


def _select(fields: dict) -> dict:
    """Run fields, and measurements that are plain numbers (or missing)."""
    return {k: v for k, v in fields.items() if k in RUN_FIELDS or (
        not isinstance(v, bool) and (v is None or isinstance(v, (int, float))))}


def _normalise(runs: pd.DataFrame) -> pd.DataFrame:
    for col in RUN_FIELDS:
        if col not in runs:
            runs[col] = np.nan
    runs["status"] = runs["status"].fillna("unknown")
    # Older summaries may lack the scale; it follows from the Taylor coefficients.
    runs["regularisation_scale"] = runs["regularisation_scale"].fillna(
        runs["d2f0"] / runs["df0"].abs())
    for col in value_columns(runs) + ["beta", "seed", "regularisation_scale"]:
        runs[col] = pd.to_numeric(runs[col], errors="coerce")
    return runs


def value_columns(runs: pd.DataFrame) -> list[str]:
    """Measured quantities: every column that is not a run field."""
    return [c for c in runs.columns if c not in RUN_FIELDS]


# ------------------------------------------------------------ aggregation


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (loss, beta), sorted by loss then beta.

    `n_failed` counts every run that did not finish (failed, crashed, ...).

    Metrics are averaged over the finished seeds only (a failed run's partial
    metrics would bias the mean). `m_stderr` is the standard error of that
    mean, std/sqrt(n) over seeds; with a single seed it falls back to the
    run's own sampling error when the run reported one.
    """
    metrics = [c for c in value_columns(runs) if not c.endswith(STDERR_SUFFIX)]
    rows = []
    for (loss, beta), group in runs.groupby(["loss", "beta"], sort=True):
        finished = group[group["status"] == FINISHED]
        counts = group["status"].value_counts()
        row = {
            "loss": loss,
            "beta": beta,
            "regularisation_scale": group["regularisation_scale"].dropna().iloc[0]
            if group["regularisation_scale"].notna().any() else np.nan,
            "n_runs": len(group),
            "n_finished": len(finished),
            "n_failed": len(group) - len(finished),
            "status": ", ".join(f"{n} {s}" for s, n in counts.items()),
        }
        for metric in metrics:
            values = finished[metric].dropna()
            row[metric] = values.mean() if len(values) else np.nan
            if len(values) > 1:
                row[metric + STDERR_SUFFIX] = values.std(ddof=1) / math.sqrt(len(values))
            elif len(values) == 1 and metric + STDERR_SUFFIX in finished:
                row[metric + STDERR_SUFFIX] = finished.loc[values.index[0], metric + STDERR_SUFFIX]
            else:
                row[metric + STDERR_SUFFIX] = np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    table.insert(3, "scaled_beta", table["beta"] * table["regularisation_scale"])
    return table.reset_index(drop=True)


def present(table: pd.DataFrame, keys: list[str]) -> list[str]:
    """The keys with at least one value in the table (missing metrics are skipped)."""
    return [k for k in keys if k in table and table[k].notna().any()]


def failed_runs(runs: pd.DataFrame) -> pd.DataFrame:
    failed = runs[runs["status"] != FINISHED]
    return failed[["loss", "beta", "seed", "status", "error", "overrides", "path"]].sort_values(
        ["loss", "beta", "seed"]).reset_index(drop=True)


# ----------------------------------------------------- theory predictions


def default_selection_metric(table: pd.DataFrame) -> str:
    """Gold win rate when the data has a gold reward, else preference accuracy."""
    available = present(table, ["eval/win_rate", "val/rewards/accuracies"])
    if not available:
        raise ValueError("neither eval/win_rate nor val/rewards/accuracies in the data")
    return available[0]


def best_beta(table: pd.DataFrame, metric: str | None = None,
              reference: str = "ipo") -> pd.DataFrame:
    """Per family, the beta with the best `metric`, and the beta theory predicts.

    The prediction matches the local regularisation beta * f''(0)/|f'(0)| of
    the `reference` family at its best beta:
        predicted_beta = best_beta(reference) * scale(reference) / scale(family).
    It is undefined (NaN) for families with scale 0 (hinge) or when the
    reference family is absent.
    """
    metric = metric or default_selection_metric(table)
    sign = 1 if METRICS.get(metric, Metric(metric, metric, "", True)).higher_is_better else -1
    rows = []
    for loss, group in table.dropna(subset=[metric]).groupby("loss", sort=True):
        best = group.loc[(sign * group[metric]).idxmax()]
        rows.append({
            "loss": loss,
            "regularisation_scale": best["regularisation_scale"],
            "best_beta": best["beta"],
            "best_scaled_beta": best["beta"] * best["regularisation_scale"],
            metric: best[metric],
            metric + STDERR_SUFFIX: best.get(metric + STDERR_SUFFIX, np.nan),
        })
    result = pd.DataFrame(rows)
    ref = result[result["loss"] == reference]
    if len(ref) and ref["best_scaled_beta"].iloc[0] > 0:
        scale = result["regularisation_scale"].where(result["regularisation_scale"] > 0)
        result["predicted_beta"] = ref["best_scaled_beta"].iloc[0] / scale
    else:
        result["predicted_beta"] = np.nan
    result["best/predicted"] = result["best_beta"] / result["predicted_beta"]
    result.attrs.update(metric=metric, reference=reference)
    return result


@dataclass
class KLGap:
    """Largest vertical distance between two families' metric-vs-KL curves."""

    metric: str
    gap: float = np.nan
    pair: tuple[str, str] | None = None
    kl: float = np.nan  # where the largest gap is
    kl_range: tuple[float, float] | None = None  # the common KL range compared
    pairwise: pd.DataFrame = field(default_factory=pd.DataFrame)


def max_matched_kl_gap(table: pd.DataFrame, metric: str = "eval/win_rate",
                       kl_metric: str = "eval/kl", log_kl: bool = False) -> KLGap:
    """Max pairwise gap of `metric` between families at matched KL.

    Each family's curve is the piecewise-linear interpolation (in KL, or in
    log KL with `log_kl`) of its seed-averaged points, compared on the KL
    range that all families cover. The difference of two piecewise-linear
    functions is extreme at a knot of one of them or at an end of the range,
    so evaluating there gives the exact maximum, not a grid approximation.
    Families with fewer than two distinct KL values have no curve and are left out.
    """
    result = KLGap(metric=metric)
    if len(present(table, [metric, kl_metric])) < 2:
        return result
    curves = {}
    for loss, group in table.dropna(subset=[metric, kl_metric]).groupby("loss", sort=True):
        if log_kl:
            group = group[group[kl_metric] > 0]
        x = np.log(group[kl_metric]) if log_kl else group[kl_metric]
        curve = group[metric].groupby(x.to_numpy()).mean()  # sorted by KL, duplicates merged
        if len(curve) >= 2:
            curves[loss] = (curve.index.to_numpy(float), curve.to_numpy(float))
    lo = max((x[0] for x, _ in curves.values()), default=np.nan)
    hi = min((x[-1] for x, _ in curves.values()), default=np.nan)
    if len(curves) < 2 or not lo <= hi:
        return result

    to_kl = np.exp if log_kl else (lambda v: v)
    result.kl_range = (float(to_kl(lo)), float(to_kl(hi)))
    rows = []
    for a, b in itertools.combinations(curves, 2):
        (xa, ya), (xb, yb) = curves[a], curves[b]
        knots = np.concatenate([xa, xb, [lo, hi]])
        knots = np.unique(knots[(knots >= lo) & (knots <= hi)])
        diff = np.abs(np.interp(knots, xa, ya) - np.interp(knots, xb, yb))
        i = int(np.argmax(diff))
        rows.append({"family_a": a, "family_b": b, "max_gap": float(diff[i]),
                     "at_kl": float(to_kl(knots[i]))})
    result.pairwise = pd.DataFrame(rows).sort_values("max_gap", ascending=False,
                                                     ignore_index=True)
    top = result.pairwise.iloc[0]
    result.gap, result.pair, result.kl = top["max_gap"], (top["family_a"], top["family_b"]), top["at_kl"]
    return result


# ------------------------------------------------------------------ plots


def _styles(families) -> dict[str, dict]:
    """The same colour and marker for a family in every plot."""
    markers = "osD^vPX*<>"
    return {f: {"color": f"C{i % 10}", "marker": markers[i % len(markers)]}
            for i, f in enumerate(sorted(families))}


def unscalable_families(table: pd.DataFrame) -> list[str]:
    """Families whose f''(0) = 0 (e.g. hinge): beta cannot be rescaled for them."""
    scale = table.groupby("loss")["regularisation_scale"].first()
    return sorted(scale.index[~(scale > 0)])


def _grid(n: int) -> tuple[int, int]:
    ncols = min(3, n)
    return math.ceil(n / ncols), ncols


def _log_x_at(ax, values: pd.Series) -> None:
    """Log x axis; with a short sweep grid, ticks at the grid values, labelled plainly."""
    ax.set_xscale("log")
    ticks = np.unique(values.dropna())
    if len(ticks) <= 8:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def _errors(group: pd.DataFrame, metric: str):
    col = metric + STDERR_SUFFIX
    return group[col].to_numpy(float) if col in group else None


def plot_metrics_vs_beta(table: pd.DataFrame, path: str | Path,
                         scaled: bool = False) -> Path | None:
    """A grid of metric-vs-beta panels, one line per family (None if nothing to plot).

    With `scaled`, the x axis is beta * f''(0)/|f'(0)|, under which families
    with the same local regularisation line up; families with scale 0 are
    left out and named in the title.
    """
    metrics = present(table, PLOT_METRICS)
    x_col = "scaled_beta" if scaled else "beta"
    omitted = unscalable_families(table) if scaled else []
    data = table[~table["loss"].isin(omitted) & (table[x_col] > 0)]
    if not metrics or data.empty:
        return None

    styles = _styles(table["loss"].unique())
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    nrows, ncols = _grid(len(metrics))
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for loss, group in data.groupby("loss", sort=True):
            group = group.dropna(subset=[metric]).sort_values(x_col)
            if group.empty:
                continue
            scale = group["regularisation_scale"].iloc[0]
            ax.errorbar(group[x_col], group[metric], yerr=_errors(group, metric),
                        capsize=3, label=f"{loss} (f''(0)/|f'(0)| = {scale:g})",
                        **styles[loss])
        _log_x_at(ax, data[x_col])
        ax.set_xlabel("β · f''(0)/|f'(0)| (dimensionless)" if scaled else "β (dimensionless)")
        ax.set_ylabel(METRICS[metric].axis_label)
        ax.set_title(METRICS[metric].label)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = _unique_legend(fig)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4),
               title="loss family (error bars: ± standard error over seeds)")
    title = ("GPO sweep: metrics vs rescaled β = β·f''(0)/|f'(0)|" if scaled
             else "GPO sweep: metrics vs β")
    if omitted:
        title += f"\nomitted, f''(0) = 0 so β cannot be rescaled: {', '.join(omitted)}"
    fig.suptitle(title)
    return _save(fig, path)


def plot_gold_vs_kl(table: pd.DataFrame, path: str | Path) -> Path | None:
    """Gold win rate and gold reward against KL(π‖π_ref), one curve per family.

    Points along a curve are ordered by beta (large beta = close to the
    reference = small KL). None when the data has no gold metrics.
    """
    metrics = present(table, ["eval/win_rate", "eval/gold_reward"])
    if "eval/kl" not in present(table, ["eval/kl"]) or not metrics:
        return None

    styles = _styles(table["loss"].unique())
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for loss, group in table.groupby("loss", sort=True):
            group = group.dropna(subset=[metric, "eval/kl"]).sort_values("beta")
            if group.empty:
                continue
            ax.errorbar(group["eval/kl"], group[metric], yerr=_errors(group, metric),
                        xerr=_errors(group, "eval/kl"), capsize=3, label=loss, **styles[loss])
            for _, point in group.iterrows():
                ax.annotate(f"β={point['beta']:g}", (point["eval/kl"], point[metric]),
                            textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=styles[loss]["color"])
        _reference_line(ax, table, metric)
        ax.set_xlabel(METRICS["eval/kl"].axis_label)
        ax.set_ylabel(METRICS[metric].axis_label)
        ax.set_title(f"{METRICS[metric].label}, against KL")
        ax.grid(True, alpha=0.3)
    handles, labels = _unique_legend(fig)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5),
               title="loss family (error bars: ± standard error)")
    fig.suptitle("GPO sweep: gold-reward trade-off against KL from the reference policy")
    return _save(fig, path)


def _reference_line(ax, table: pd.DataFrame, metric: str) -> None:
    """What the reference policy itself scores, for scale."""
    if metric == "eval/win_rate":
        ax.axhline(0.5, color="grey", linestyle="--", label="reference policy (win rate 0.5)")
    elif "eval/gold_reward_reference" in present(table, ["eval/gold_reward_reference"]):
        ax.axhline(table["eval/gold_reward_reference"].mean(), color="grey",
                   linestyle="--", label="reference policy (mean gold reward)")


def _unique_legend(fig: Figure):
    entries = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    return list(entries.values()), list(entries.keys())


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    # No bbox_inches="tight": it would change the pixel size from plot to plot.
    fig.savefig(path, dpi=DPI)
    return path


# -------------------------------------------------------- tables / output


def _fmt(value, stderr=np.nan) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (float, np.floating)):
        text = f"{value:.4g}"
        return text if math.isnan(stderr) else f"{text} ± {stderr:.2g}"
    return str(value)


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of already formatted cells."""
    def escape(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    cells = frame.map(escape)
    lines = ["| " + " | ".join(escape(c) for c in frame.columns) + " |",
             "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


def results_markdown(table: pd.DataFrame) -> str:
    """The per-(loss, beta) table: mean ± standard error over finished seeds."""
    out = pd.DataFrame({
        "loss": table["loss"],
        "β": table["beta"].map(lambda b: f"{b:g}"),
        "n seeds": table["n_finished"],
        "n failed": table["n_failed"],
        "status": table["status"],
    })
    for metric in present(table, TABLE_METRICS):
        spec = METRICS[metric]
        out[f"{spec.label} ({spec.unit})"] = [
            _fmt(v, s) for v, s in zip(table[metric], table[metric + STDERR_SUFFIX])]
    return to_markdown(out)


def best_beta_markdown(best: pd.DataFrame) -> str:
    metric = best.attrs["metric"]
    out = pd.DataFrame({
        "loss": best["loss"],
        "f''(0)/|f'(0)|": best["regularisation_scale"].map(_fmt),
        "best β": best["best_beta"].map(_fmt),
        f"best {metric}": [_fmt(v, s) for v, s in
                           zip(best[metric], best[metric + STDERR_SUFFIX])],
        f"predicted β (from {best.attrs['reference']})": best["predicted_beta"].map(_fmt),
        "best / predicted": best["best/predicted"].map(_fmt),
    })
    return to_markdown(out)


def failed_markdown(failed: pd.DataFrame) -> str:
    if failed.empty:
        return "None."
    out = failed.assign(beta=failed["beta"].map(_fmt), seed=failed["seed"].map(_fmt),
                        error=failed["error"].fillna("(no message)"),
                        overrides=failed["overrides"].map(
                            lambda o: " ".join(o) if isinstance(o, list) else _fmt(o)))
    return to_markdown(out)


@dataclass
class Report:
    runs: pd.DataFrame
    table: pd.DataFrame
    best: pd.DataFrame | None
    gap: KLGap | None
    markdown: str
    paths: list[Path]


def write_report(directory: str | Path, runs: pd.DataFrame | None = None,
                 selection_metric: str | None = None, reference: str = "ipo") -> Report:
    """Load (unless `runs` is given), aggregate, and write report.{csv,md} and PNGs into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    runs = load_summaries(directory) if runs is None else runs
    table = aggregate(runs)
    paths = []

    csv_path = directory / "report.csv"
    table.to_csv(csv_path, index=False)
    paths.append(csv_path)

    try:
        best = best_beta(table, selection_metric, reference)
    except ValueError:
        best = None
    gap_metric = next(iter(present(table, ["eval/win_rate", "eval/gold_reward"])), None)
    gap = max_matched_kl_gap(table, gap_metric) if gap_metric else None

    plots = [
        plot_metrics_vs_beta(table, directory / "metrics_vs_beta.png"),
        plot_metrics_vs_beta(table, directory / "metrics_vs_scaled_beta.png", scaled=True),
        plot_gold_vs_kl(table, directory / "gold_vs_kl.png"),
    ]
    plots = [p for p in plots if p is not None]

    markdown = _markdown(directory, runs, table, best, gap, plots)
    md_path = directory / "report.md"
    md_path.write_text(markdown)
    paths += [md_path] + plots
    return Report(runs, table, best, gap, markdown, paths)


def gap_markdown(gap: KLGap) -> str:
    if gap.pair is None:
        return (f"Not computable for {gap.metric}: needs at least two families with "
                "two or more KL values and overlapping KL ranges.")
    lo, hi = gap.kl_range
    text = (f"Max vertical gap in {gap.metric} between families at matched KL: "
            f"**{gap.gap:.4g}** ({gap.pair[0]} vs {gap.pair[1]} at KL = {gap.kl:.4g} nats), "
            f"over the KL range all families cover, [{lo:.4g}, {hi:.4g}] nats "
            "(piecewise-linear interpolation of the seed means).\n\n")
    pairs = gap.pairwise.assign(max_gap=gap.pairwise["max_gap"].map(_fmt),
                                at_kl=gap.pairwise["at_kl"].map(_fmt))
    return text + to_markdown(pairs)


def _markdown(directory, runs, table, best, gap, plots) -> str:
    scales = table.groupby("loss")["regularisation_scale"].first()
    n_finished = int((runs["status"] == FINISHED).sum())
    parts = [
        "# GPO sweep report",
        f"Sweep directory: `{directory}`. {len(runs)} runs: {n_finished} finished, "
        f"{len(runs) - n_finished} not finished. Families and f''(0)/|f'(0)|: "
        + ", ".join(f"{loss} {scale:g}" for loss, scale in scales.items()) + ".",
        "## Results per (loss, β)",
        "Mean ± standard error (std/√n) over the finished seeds; "
        "with one seed, the run's own sampling error where it reported one.",
        results_markdown(table),
    ]
    if best is not None:
        parts += [
            "## Best β per family vs the f''(0)/|f'(0)| prediction",
            f"Best β by {best.attrs['metric']}; predicted β = best β({best.attrs['reference']}) "
            f"· scale({best.attrs['reference']}) / scale(family), scale = f''(0)/|f'(0)| "
            "(undefined where the scale is 0).",
            best_beta_markdown(best),
        ]
    if gap is not None:
        parts += ["## Curves vs KL at matched KL", gap_markdown(gap)]
        reference = best.attrs["reference"] if best is not None else "ipo"
        at_kl = matched_kl(table, metric=gap.metric, reference=reference)
        if at_kl[gap.metric].notna().any():
            parts += ["Each family interpolated at a few KL values inside the common range: the metric reached, and "
                      f"the β needed, against the Taylor prediction β/β_{reference} = scale({reference})/scale(family).",
                      to_markdown(matched_kl_frame(at_kl))]
    if plots:
        parts += ["## Plots", "\n".join(f"![{p.stem}]({p.name})" for p in plots)]
    parts += ["## Failed runs", failed_markdown(failed_runs(runs))]
    return "\n\n".join(parts) + "\n"
