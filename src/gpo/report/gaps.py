"""Families compared at matched KL(pi || pi_ref), seed by seed, with intervals.

A seed is one preference-data sample shared by every family, so two
families are compared within each seed and the seeds are the replicates:

- the gap in the metric at a target KL: each seed's curve (metric against
  log KL, piecewise linear between its runs) read at that KL, family minus
  reference, then a t interval over the seeds (`intervals.mean_interval`);
- the beta ratio at matched KL: each seed's log beta against log KL
  (piecewise linear), family minus reference, averaged over log-spaced KLs
  spanning the range every seed of both families covers; t interval over
  seeds, then exp.

Tests (tests/test_report_coverage.py) simulate sweeps with known gaps and
ratios and check the coverage at 3, 5 and 10 seeds. No extrapolation: a
seed whose runs do not reach a KL gives no value there.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gpo.report.analysis import aggregate, default_kls, per_group, seed_matrices
from gpo.report.intervals import mean_interval, nanmean, seed_quantile
from gpo.report.load import finished

KL = "eval/kl"


def at_kl(kl: np.ndarray, y: np.ndarray, targets) -> np.ndarray:
    """Each (replicate, seed)'s y, piecewise linear in log KL, at the target KLs (K,) or, per
    replicate, (R, K): (R, S, K); NaN outside its KL range. kl, y: (R, S, n), NaN = missing run."""
    kl, y = np.asarray(kl, float), np.asarray(y, float)
    if y.ndim == 2:
        kl, y = kl[None], y[None]
    targets = np.log(np.asarray(targets, float))
    valid = np.isfinite(kl) & np.isfinite(y) & (kl > 0)
    x = np.where(valid, np.log(np.where(valid, kl, 1.0)), np.inf)
    order = np.argsort(x, axis=2)
    x, y = np.take_along_axis(x, order, 2), np.take_along_axis(np.where(valid, y, np.nan), order, 2)
    count = valid.sum(axis=2)[..., None]  # R, S, 1
    t = targets[:, None, :] if targets.ndim == 2 else targets[None, None, :]
    j = np.clip((x[..., None] < t[..., None, :]).sum(axis=2) - 1, 0, np.maximum(count - 2, 0))  # R, S, K
    x0, x1 = np.take_along_axis(x, j, 2), np.take_along_axis(x, np.minimum(j + 1, x.shape[2] - 1), 2)
    y0, y1 = np.take_along_axis(y, j, 2), np.take_along_axis(y, np.minimum(j + 1, x.shape[2] - 1), 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(x1 > x0, y0 + (t - x0) / (x1 - x0) * (y1 - y0), (y0 + y1) / 2)
    last = np.take_along_axis(x, np.maximum(count - 1, 0), 2)
    inside = (count >= 2) & (x[..., :1] <= t) & (t <= last)
    return np.where(inside, value, np.nan)


def common_kl_range(*kls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per replicate: the KL range that every seed of every given family covers
    (seeds without two runs left out); low >= high where there is none."""
    lows, highs = [], []
    for kl in kls:
        valid = np.isfinite(kl) & (kl > 0)
        seeds = valid.sum(axis=2) >= 2
        lows.append(np.where(seeds, np.where(valid, kl, np.inf).min(axis=2), -np.inf).max(axis=1))
        highs.append(np.where(seeds, np.where(valid, kl, -np.inf).max(axis=2), np.inf).min(axis=1))
    return np.max(lows, axis=0), np.min(highs, axis=0)


def _families(runs: pd.DataFrame, columns: list[str]) -> dict:
    """{loss: [seed x beta matrices of `columns`, then of log beta]} of the finished runs."""
    runs = finished(runs).dropna(subset=[*columns, "beta", "seed"])
    runs = runs[(runs["beta"] > 0) & (runs[KL] > 0)]
    seeds = np.sort(runs["seed"].unique())
    out = {}
    for loss, family in runs.groupby("loss", sort=True):
        betas, tables = seed_matrices(family, columns, seeds)
        out[loss] = tables + [np.where(np.isfinite(tables[0]), np.log(betas)[None, :], np.nan)]
    return out


def _gaps(runs: pd.DataFrame, metric: str, reference: str, kls, level: float) -> pd.DataFrame:
    columns = ["loss", "kl", "gap", "gap_low", "gap_high", "n_seeds", "gap_sd"]
    families = _families(runs, [metric, KL])
    if reference not in families:
        return pd.DataFrame(columns=columns)
    if kls is None:
        kls = default_kls(aggregate(finished(runs)), KL)
    ref_kl, ref_values = families[reference][1], families[reference][0]
    ref_at = at_kl(ref_kl, ref_values, kls)[0] if len(kls) else None
    rows = []
    for loss, (values, kl, _) in families.items():
        if loss == reference or not len(kls):
            continue
        diff = at_kl(kl, values, kls)[0] - ref_at  # seeds x KLs
        mean, low, high, n = mean_interval(diff, level, axis=0)
        sd = np.nanstd(diff, axis=0, ddof=1) if len(diff) > 1 else np.full(len(kls), np.nan)
        for i, target in enumerate(kls):
            rows.append({"loss": loss, "kl": float(target), "gap": mean[i], "gap_low": low[i], "gap_high": high[i],
                         "n_seeds": int(n[i]), "gap_sd": sd[i] if n[i] >= 2 else np.nan})
    return pd.DataFrame(rows, columns=columns)


def matched_kl_gaps(runs: pd.DataFrame, metric: str, reference: str = "ipo", kls=None, by: str | None = None,
                    level: float = 0.95) -> pd.DataFrame:
    """Per family (per `by` group) and target KL: the metric's gap family - reference at that KL,
    mean over seeds [t interval] (see the module docstring). KLs: `kls`, or three log-spaced
    values inside the range every family's seed means cover."""
    result = per_group(runs, by, _gaps, metric, reference, kls, level)
    result.attrs.update(metric=metric, reference=reference, level=level, by=by)
    return result


def log_beta_ratio(kl_a: np.ndarray, log_beta_a: np.ndarray, kl_b: np.ndarray, log_beta_b: np.ndarray,
                   n: int = 9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(per-seed log beta_a - log beta_b at matched KL, averaged over n log-spaced KLs (R, S); the
    seed-mean difference at each of those KLs (R, n); the KL range (R, 2)). Inputs (R, S, betas);
    the range is the one every seed of both families covers (NaN where there is none)."""
    lo, hi = common_kl_range(kl_a, kl_b)
    ok = lo < hi
    targets = np.exp(np.log(np.where(ok, lo, 1.0))[:, None]
                     + np.log(np.where(ok, hi / lo, 2.0))[:, None] * np.linspace(0, 1, n)[None, :])
    targets = np.clip(targets, np.where(ok, lo, 1.0)[:, None], np.where(ok, hi, 2.0)[:, None])  # rounding at the ends
    diff = at_kl(kl_a, log_beta_a, targets) - at_kl(kl_b, log_beta_b, targets)  # R, S, n
    diff = np.where(ok[:, None, None], diff, np.nan)
    return diff.mean(axis=2), nanmean(diff, axis=1), np.stack([lo, hi], axis=1)


def _beta_ratios(runs: pd.DataFrame, reference: str, level: float, n: int) -> pd.DataFrame:
    columns = ["loss", "ratio", "ratio_low", "ratio_high", "ratio_min", "ratio_max", "kl_lo", "kl_hi", "n_seeds"]
    families = _families(runs, [KL])
    if reference not in families:
        return pd.DataFrame(columns=columns)
    ref_kl, ref_log_beta = families[reference]
    rows = []
    for loss, (kl, log_beta) in families.items():
        both = (np.isfinite(kl).sum(axis=1) >= 2) & (np.isfinite(ref_kl).sum(axis=1) >= 2)
        if loss == reference or not both.any():
            continue
        seeds, curve, (lo, hi) = (a[0] for a in log_beta_ratio(kl[both][None], log_beta[both][None],
                                                                ref_kl[both][None], ref_log_beta[both][None], n))
        if not lo < hi:
            continue
        mean, low, high, count = mean_interval(seeds, level, axis=0)
        rows.append({"loss": loss, "ratio": float(np.exp(mean)), "ratio_low": float(np.exp(low)),
                     "ratio_high": float(np.exp(high)), "ratio_min": float(np.exp(curve.min())),
                     "ratio_max": float(np.exp(curve.max())), "kl_lo": float(lo), "kl_hi": float(hi),
                     "n_seeds": int(count)})
    return pd.DataFrame(rows, columns=columns)


def matched_kl_beta_ratios(runs: pd.DataFrame, reference: str = "ipo", by: str | None = None,
                           level: float = 0.95, n: int = 9) -> pd.DataFrame:
    """Per family (per `by` group): beta(family) / beta(reference) at matched KL, the geometric
    mean over `n` log-spaced KLs spanning the range every seed of both covers, with a t interval
    over seeds; `ratio_min`, `ratio_max`: the seed-mean ratio's range along that KL range."""
    result = per_group(runs, by, _beta_ratios, reference, level, n)
    result.attrs.update(reference=reference, level=level, by=by)
    return result


def largest_gap(gaps: pd.DataFrame, level: float = 0.95) -> dict | None:
    """The largest |gap| among those measured, with its pointwise interval and the interval
    Bonferroni-adjusted for the number of gaps it was picked from (a maximum over many
    comparisons lies further from zero than any one of them)."""
    measured = gaps.dropna(subset=["gap"])
    if measured.empty:
        return None
    row = measured.loc[measured["gap"].abs().idxmax()].to_dict()
    m = len(measured)
    adjusted = 1 - (1 - level) / m
    half = seed_quantile(adjusted, row["n_seeds"]) * row["gap_sd"] / np.sqrt(max(row["n_seeds"], 1))
    return {**row, "m": m, "adjusted_level": adjusted, "adjusted_low": row["gap"] - half,
            "adjusted_high": row["gap"] + half}
