"""Numbers from the run table: seed aggregation, families compared at matched
KL(pi || pi_ref) and the largest gap between their curves.

The best beta with its bootstrap interval is in `gpo.report.best_beta`; the
theory's predictions in `gpo.report.theory`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from gpo.infra.summary import FINISHED
from gpo.report.load import finished, metric_columns
from gpo.report.metrics import SELECTION_METRICS, STDERR_SUFFIX


def per_group(frame: pd.DataFrame, by: str | None, fn, *args, **kwargs) -> pd.DataFrame:
    """fn(frame) or, with `by`, fn applied to each group of `frame[by]`,
    concatenated with the group value as the first column."""
    if not by:
        return fn(frame, *args, **kwargs)
    parts = []
    for value, group in frame.groupby(by, sort=True):
        part = fn(group, *args, **kwargs)
        part.insert(0, by, value)
        parts.append(part)
    result = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[by])
    if parts:
        result.attrs = dict(parts[0].attrs)
    return result


def seed_matrices(family: pd.DataFrame, columns: list[str], seeds) -> tuple[np.ndarray, list[np.ndarray]]:
    """(betas, [values (seeds x betas)]) of one family's runs: each column's value at every
    (seed, beta), NaN where that run is missing; repeated runs of a cell averaged."""
    cells = family.groupby(["seed", "beta"])[columns].mean()
    betas = np.sort(family["beta"].unique()).astype(float)
    tables = [cells[c].unstack("beta").reindex(index=seeds, columns=betas).to_numpy(float) for c in columns]
    return betas, tables


def aggregate(runs: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """One row per (loss, beta), or per (by, loss, beta), sorted.

    `n_failed` counts every run that did not finish (failed, crashed, ...).
    Metrics are averaged over the finished seeds only (a failed run's partial
    metrics would bias the mean). `m_stderr` is the standard error of that
    mean, std/sqrt(n) over seeds; with a single seed it falls back to the
    run's own sampling error when the run reported one.
    """
    metrics = metric_columns(runs)
    keys = ([by] if by else []) + ["loss", "beta"]
    rows = []
    for values, group in runs.groupby(keys, sort=True):
        done = finished(group)
        scale = group["regularisation_scale"].dropna()
        row = dict(zip(keys, values))
        requested = group["beta_requested"].dropna().unique()  # beta as given; `beta` is the one the loss used
        row["beta_requested"] = requested[0] if len(requested) == 1 else np.nan
        row.update(regularisation_scale=scale.iloc[0] if len(scale) else np.nan,
                   n_runs=len(group), n_finished=len(done), n_failed=len(group) - len(done),
                   status=", ".join(f"{n} {s}" for s, n in group["status"].value_counts().items()))
        for metric in metrics:
            values = done[metric].dropna()
            row[metric] = values.mean() if len(values) else np.nan
            err = metric + STDERR_SUFFIX
            if len(values) > 1:
                row[err] = values.std(ddof=1) / math.sqrt(len(values))
            elif len(values) == 1 and err in done:
                row[err] = done.loc[values.index[0], err]
            else:
                row[err] = np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=keys + ["scaled_beta", "regularisation_scale", "n_runs", "n_finished"])
    table.insert(len(keys), "scaled_beta", table["beta"] * table["regularisation_scale"])
    return table.reset_index(drop=True)


def error_bar_words(table: pd.DataFrame) -> str:
    """What the ± and the plots' error bars are, given how many seeds the points have."""
    seeds = table["n_finished"] if "n_finished" in table else pd.Series(dtype=float)
    if not len(seeds) or (seeds == 0).all():
        return "(no run finished)"
    if (seeds <= 1).all():
        return "± the run's own sampling error (one seed per point; no between-seed error)"
    if (seeds <= 1).any():
        return "± standard error over seeds (points with one seed: the run's own sampling error)"
    return "± standard error over seeds"


def aggregate_trajectories(trajectories: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """Seed means of the finished runs' trajectories, one row per (by, loss, beta, step)."""
    keys = ([by] if by else []) + ["loss", "beta", "step"]
    done = finished(trajectories) if "status" in trajectories else trajectories
    # Metrics are namespaced ("eval/kl"); override keys are not.
    values = [c for c in done.columns if "/" in c and c not in keys and pd.api.types.is_numeric_dtype(done[c])]
    if done.empty:
        return pd.DataFrame(columns=keys + values)
    return done.groupby(keys, sort=True)[values].mean().reset_index()


def present(table: pd.DataFrame, keys: list[str]) -> list[str]:
    """The keys with at least one value in the table (missing metrics are skipped)."""
    return [k for k in keys if k in table and table[k].notna().any()]


def failed_runs(runs: pd.DataFrame) -> pd.DataFrame:
    failed = runs[runs["status"] != FINISHED]
    return failed[["loss", "beta", "seed", "status", "error", "overrides", "path"]].sort_values(
        ["loss", "beta", "seed"]).reset_index(drop=True)


def default_selection_metric(table: pd.DataFrame) -> str:
    """Gold win rate when the data has a gold reward, else preference accuracy."""
    available = present(table, SELECTION_METRICS)
    if not available:
        raise ValueError(f"none of {', '.join(SELECTION_METRICS)} in the data")
    return available[0]


# ------------------------------------------------------------ matched KL


def _curve(group: pd.DataFrame, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """y against x sorted by x, duplicate x merged: what np.interp needs."""
    curve = group.dropna(subset=[x, y]).groupby(x)[y].mean()
    return curve.index.to_numpy(float), curve.to_numpy(float)


def _log_beta_vs_log_kl(group: pd.DataFrame, kl_metric: str) -> tuple[np.ndarray, np.ndarray]:
    group = group[group[kl_metric] > 0]
    return _curve(group.assign(log_kl=np.log(group[kl_metric]), log_beta=np.log(group["beta"])),
                  "log_kl", "log_beta")


def default_kls(table: pd.DataFrame, kl_metric: str = "eval/kl", n: int = 3) -> list[float]:
    """n KL values log-spaced inside the range every family covers (2 significant digits)."""
    ranges = table.dropna(subset=[kl_metric]).groupby("loss")[kl_metric].agg(["min", "max"])
    lo, hi = ranges["min"].max(), ranges["max"].min()
    if not 0 < lo < hi:
        return []
    edges = np.geomspace(lo, hi, n + 2)[1:-1]  # strictly inside: no extrapolation at the ends
    return sorted({float(f"{k:.2g}") for k in edges})  # rounding may merge close values


def matched_kl(table: pd.DataFrame, kls: list[float] | None = None, metric: str = "eval/win_rate",
               kl_metric: str = "eval/kl", reference: str = "ipo") -> pd.DataFrame:
    """One row per (family, target KL): the metric and the beta there, by
    piecewise-linear interpolation between the family's grid points (metric
    linear in KL, log beta linear in log KL); NaN outside the family's KL range.
    `beta_ratio` is beta / beta(reference) at the same KL, `taylor_ratio`
    scale(reference) / scale(family) (NaN for scale 0, e.g. hinge)."""
    kls = default_kls(table, kl_metric) if kls is None else list(dict.fromkeys(kls))
    scales = table.groupby("loss")["regularisation_scale"].first()
    err = metric + STDERR_SUFFIX
    rows = []
    for loss, group in table[table[kl_metric] > 0].groupby("loss", sort=True):
        kl_x, value = _curve(group, kl_metric, metric)
        stderr_x, stderr = _curve(group, kl_metric, err) if err in group else (kl_x, kl_x * np.nan)
        log_kl, log_beta = _log_beta_vs_log_kl(group, kl_metric)
        for kl in kls:
            inside = len(kl_x) >= 2 and kl_x[0] <= kl <= kl_x[-1]
            rows.append({
                "loss": loss, "kl": kl,
                metric: np.interp(kl, kl_x, value) if inside else np.nan,
                err: np.interp(kl, stderr_x, stderr) if inside and len(stderr_x) else np.nan,
                "beta": float(np.exp(np.interp(np.log(kl), log_kl, log_beta))) if inside else np.nan,
            })
    result = pd.DataFrame(rows, columns=["loss", "kl", metric, err, "beta"])
    reference_beta = result[result["loss"] == reference].set_index("kl")["beta"]
    result["beta_ratio"] = result["beta"] / result["kl"].map(reference_beta)
    scale = result["loss"].map(scales)
    result["taylor_ratio"] = (scales.get(reference, np.nan) / scale.where(scale > 0)).astype(float)
    result.attrs.update(metric=metric, reference=reference)
    return result


def matched_kl_ratios(table: pd.DataFrame, reference: str = "ipo", kl_metric: str = "eval/kl",
                      n: int = 9) -> pd.DataFrame:
    """Per family, beta(family) / beta(reference) at matched KL, summarised over
    the KL range the two share: the geometric mean (and the min and max) of the
    ratio at `n` log-spaced KLs spanning that range (ends included). Both
    curves are log beta piecewise linear in log KL."""
    columns = ["loss", "ratio", "ratio_min", "ratio_max", "kl_lo", "kl_hi"]
    curves = {loss: _log_beta_vs_log_kl(group, kl_metric)
              for loss, group in table.dropna(subset=[kl_metric]).groupby("loss", sort=True)}
    curves = {loss: c for loss, c in curves.items() if len(c[0]) >= 2}
    if reference not in curves:
        return pd.DataFrame(columns=columns).assign(reference=reference)
    ref_x, ref_y = curves[reference]
    rows = []
    for loss, (x, y) in curves.items():
        lo, hi = max(x[0], ref_x[0]), min(x[-1], ref_x[-1])
        if loss == reference or not lo < hi:
            continue
        grid = np.linspace(lo, hi, n)
        ratios = np.exp(np.interp(grid, x, y) - np.interp(grid, ref_x, ref_y))
        rows.append({"loss": loss, "ratio": float(np.exp(np.mean(np.log(ratios)))),
                     "ratio_min": float(ratios.min()), "ratio_max": float(ratios.max()),
                     "kl_lo": float(np.exp(lo)), "kl_hi": float(np.exp(hi))})
    result = pd.DataFrame(rows, columns=columns)
    result["reference"] = reference
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
        rows.append({"family_a": a, "family_b": b, "max_gap": float(diff[i]), "at_kl": float(to_kl(knots[i]))})
    result.pairwise = pd.DataFrame(rows).sort_values("max_gap", ascending=False, ignore_index=True)
    top = result.pairwise.iloc[0]
    result.gap, result.pair, result.kl = top["max_gap"], (top["family_a"], top["family_b"]), top["at_kl"]
    return result
