"""The best beta per family, with a bootstrap interval over seeds.

Point estimate: the seed-mean selection metric on the family's beta grid;
around its grid maximum, a quadratic in log beta is fitted by least squares
to the maximum and `half_width` neighbours on each side (default 1: the
parabola through three points); its vertex is the best beta. A maximum at a
grid end has no interior peak: the end is reported, flagged (`edge` = "low"
or "high"), without an interval.

Interval: percentile bootstrap over seeds. A seed is one preference-data
sample shared by every beta and family, so each replicate draws the seed
indices with replacement once, jointly for all betas and families; each
family's seed means are recomputed with those multiplicities and refitted.
A replicate whose maximum falls at a grid end contributes that end. The ratio
best beta(family) / best beta(reference) uses the same replicates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gpo.report.analysis import default_selection_metric, per_group
from gpo.report.load import finished
from gpo.report.metrics import spec

LOW, HIGH = "low", "high"


def fit_peak(log_beta: np.ndarray, values: np.ndarray, half_width: int = 1) -> tuple[float, float, str]:
    """(log beta, value, edge) at the maximum of `values` over the sorted grid
    `log_beta` (NaNs skipped). edge is "" for an interior peak (vertex of the
    fitted quadratic, kept within the fit window), else LOW/HIGH and the end."""
    ok = np.isfinite(values)
    x, y = np.asarray(log_beta, float)[ok], np.asarray(values, float)[ok]
    if not len(x):
        return np.nan, np.nan, ""
    i = int(np.argmax(y))
    if i == 0 or i == len(x) - 1:
        return float(x[i]), float(y[i]), LOW if i == 0 else HIGH
    lo, hi = max(0, i - half_width), min(len(x), i + half_width + 1)
    a, b, c = np.polyfit(x[lo:hi], y[lo:hi], 2)
    if not a < 0:  # flat or convex around a grid maximum: no vertex to trust
        return float(x[i]), float(y[i]), ""
    vertex = float(np.clip(-b / (2 * a), x[lo], x[hi - 1]))
    return vertex, float(np.polyval([a, b, c], vertex)), ""


def _seed_grid(runs: pd.DataFrame, metric: str, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(betas, values[beta, seed]) for one family: the metric of each (beta, seed), NaN if absent."""
    cells = runs.groupby(["beta", "seed"])[metric].mean().unstack("seed").reindex(columns=seeds)
    return cells.index.to_numpy(float), cells.to_numpy(float)


def _fits(log_beta, grid, weights, sign, half_width):
    """Fits for each row of `weights` (replicates x seeds): arrays of best log beta, value, edge."""
    if not len(weights):
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=str)
    valid = np.isfinite(grid)
    num = weights @ np.where(valid, grid, 0.0).T  # replicates x betas
    den = weights @ valid.T.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sign * num / den
    out = [fit_peak(log_beta, row, half_width) for row in means]
    best, value, edge = (np.array(v) for v in zip(*out))
    return best, sign * value.astype(float), edge


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return np.nan, np.nan
    tail = (1 - level) / 2
    lo, hi = np.quantile(samples, [tail, 1 - tail])
    return float(lo), float(hi)


def _best_beta(runs, metric, reference, level, n_boot, seed, half_width) -> pd.DataFrame:
    runs = finished(runs).dropna(subset=[metric, "beta", "seed"])
    runs = runs[runs["beta"] > 0]
    seeds = np.sort(runs["seed"].unique())
    sign = 1.0 if spec(metric).higher_is_better else -1.0
    rng = np.random.default_rng(seed)
    can_resample = len(seeds) >= 2 and n_boot > 0
    weights = np.zeros((0, len(seeds)))  # replicates x seeds: how often each seed is drawn
    if can_resample:
        draws = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
        weights = np.stack([np.bincount(row, minlength=len(seeds)) for row in draws]).astype(float)

    rows, replicates = [], {}
    for loss, group in runs.groupby("loss", sort=True):
        betas, grid = _seed_grid(group, metric, seeds)
        log_beta = np.log(betas)
        (best,), (value,), (edge,) = _fits(log_beta, grid, np.ones((1, len(seeds))), sign, half_width)
        rep_best, rep_value, rep_edge = _fits(log_beta, grid, weights, sign, half_width)
        replicates[loss] = rep_best
        interior = can_resample and not edge
        beta_lo, beta_hi = _interval(np.exp(rep_best), level) if interior else (np.nan, np.nan)
        value_lo, value_hi = _interval(rep_value, level) if interior else (np.nan, np.nan)
        scale = group["regularisation_scale"].dropna()
        rows.append({"loss": loss, "regularisation_scale": scale.iloc[0] if len(scale) else np.nan,
                     "n_seeds": int(group["seed"].nunique()), "n_betas": len(betas),
                     "best_beta": float(np.exp(best)), "best_beta_lo": beta_lo, "best_beta_hi": beta_hi,
                     "edge": edge, "edge_fraction": float(np.mean(rep_edge != "")) if can_resample else np.nan,
                     metric: value, f"{metric}_lo": value_lo, f"{metric}_hi": value_hi})
    columns = ["loss", "regularisation_scale", "n_seeds", "n_betas", "best_beta", "best_beta_lo",
               "best_beta_hi", "edge", "edge_fraction", metric, f"{metric}_lo", f"{metric}_hi"]
    result = pd.DataFrame(rows, columns=columns)

    # Ratio to the reference family, on the same replicates.
    result["ratio"] = result["ratio_lo"] = result["ratio_hi"] = np.nan
    if reference in replicates:
        ref = result.set_index("loss").loc[reference]
        result["ratio"] = result["best_beta"] / ref["best_beta"]
        for i, row in result.iterrows():
            if can_resample and not row["edge"] and not ref["edge"]:
                result.loc[i, ["ratio_lo", "ratio_hi"]] = _interval(
                    np.exp(replicates[row["loss"]] - replicates[reference]), level)
    # At a grid end the best beta is only a bound: beyond the end; the ratio accordingly.
    reference_edge = result.set_index("loss")["edge"].get(reference, "")
    result["ratio_bound"] = [_bound(edge, reference_edge) for edge in result["edge"]]
    return result


def _bound(edge: str, reference_edge: str) -> str:
    """'≥', '≤' when the ratio is a one-sided bound, '?' when unbounded both ways, '' when a point."""
    up = edge == HIGH or reference_edge == LOW  # best beta above the grid, or the reference's below
    down = edge == LOW or reference_edge == HIGH
    return "?" if up and down else "≥" if up else "≤" if down else ""


def best_beta(runs: pd.DataFrame, metric: str | None = None, reference: str = "ipo", by: str | None = None,
              level: float = 0.95, n_boot: int = 1000, seed: int = 0, half_width: int = 1) -> pd.DataFrame:
    """One row per family (per `by` group if given): best beta [lo, hi], the
    metric there [lo, hi] and the ratio to `reference` [lo, hi] (see the module
    docstring). Intervals are NaN with one seed or a peak at a grid end."""
    metric = metric or default_selection_metric(runs)
    result = per_group(runs, by, _best_beta, metric, reference, level, n_boot, seed, half_width)
    result.attrs.update(metric=metric, reference=reference, level=level, n_boot=n_boot,
                        seed=seed, half_width=half_width, by=by)
    return result
