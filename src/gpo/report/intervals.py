"""Intervals over seeds, the replication unit of a sweep (a seed is one
preference-data sample, shared by every beta and family), and the words the
report puts next to them.

- `mean_interval`: the t interval of a mean over seeds (exact for normal,
  independent seed values);
- `root_set`: where the seed mean of per-seed functions crosses zero, with
  the set of points where a t-test does not reject a zero mean (Fieller's
  construction; used for maxima, `gpo.report.peak`, and `gpo.report.gao`);
- `verdict`: "agrees" only when a prediction lies inside the interval.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
from scipy import stats

MIN_SEEDS = 3  # the fewest seeds an interval is given from: the smallest size the coverage tests check


def seed_quantile(level: float, n) -> np.ndarray:
    """The t critical value for a mean over n seeds; NaN below MIN_SEEDS (no interval)."""
    n = np.asarray(n)
    return np.where(n >= MIN_SEEDS, t_quantile(level, n - 1), np.nan)


def t_quantile(level: float, df) -> np.ndarray:
    """Two-sided t critical value; NaN for df < 1."""
    df = np.asarray(df, float)
    return np.where(df >= 1, stats.t.ppf((1 + level) / 2, np.maximum(df, 1)), np.nan)


def _crossing(grid, f, j):
    """Linear interpolation of the zero of f between grid points j and j+1 (batched over rows)."""
    r = np.arange(len(j))
    f0, f1 = f[r, j], f[r, j + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(f0 != f1, f0 / (f0 - f1), 0.5)
    return grid[r, j] + np.clip(np.nan_to_num(frac), 0, 1) * (grid[r, j + 1] - grid[r, j])


@dataclass
class RootSet:
    """Where the seed-mean of per-seed functions crosses zero downwards, with the t-inversion set."""

    estimate: np.ndarray  # (R,)
    low: np.ndarray  # (R,)
    high: np.ndarray
    touches: np.ndarray  # (R,) the set reaches an end of the grid searched
    found: np.ndarray  # (R,) a downward crossing exists inside the grid searched


def root_set(grid: np.ndarray, slope: np.ndarray, value: np.ndarray, level: float) -> RootSet:
    """grid: (R, m) sorted points; slope: (R, S, m) each seed's derivative there (NaN: seed left out);
    value: (R, m) the mean function, whose interior maximum is the estimate."""
    n = np.isfinite(slope[..., 0]).sum(axis=1)
    k = np.maximum(n, 1)[:, None]
    mean = np.nansum(slope, axis=1) / k
    spread = np.sqrt(np.nansum((slope - mean[:, None, :]) ** 2, axis=1) / np.maximum(k - 1, 1))
    return set_around_maximum(grid, mean, seed_quantile(level, n)[:, None] * spread / np.sqrt(k), value)


def set_around_maximum(grid: np.ndarray, slope: np.ndarray, half: np.ndarray, value: np.ndarray) -> RootSet:
    """The estimate: the interior maximum of `value` (R, m), refined to the zero of `slope` (R, m);
    the set: the run of grid points around it where |slope| <= half (R, m), ends refined linearly."""
    R, m = slope.shape
    rows = np.arange(R)
    a = np.argmax(np.where(np.isfinite(value), value, -np.inf), axis=1)
    found = (a > 0) & (a < m - 1)
    a = np.clip(a, 1, m - 2)
    j = np.where(slope[rows, a] < 0, a - 1, a)  # the zero lies between j and j + 1
    estimate = _crossing(grid, slope, j)
    excess = np.abs(slope) - half  # <= 0 inside the set
    outside = ~(excess <= 0)
    idx = np.arange(m)[None, :]
    left = np.where(outside & (idx <= j[:, None]), idx, -1).max(axis=1)
    right = np.where(outside & (idx > j[:, None]), idx, m).min(axis=1)
    low = _crossing(grid, excess, np.clip(left, 0, m - 2))
    high = _crossing(grid, excess, np.clip(right - 1, 0, m - 2))
    # A set narrower than the grid's step: its ends lie between the estimate (where the excess is
    # -half) and the grid points j, j + 1 next to it.
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = (estimate - grid[rows, j]) / (grid[rows, j + 1] - grid[rows, j])
        at_estimate = -(half[rows, j] + frac * (half[rows, j + 1] - half[rows, j]))
        near_low = grid[rows, j] + excess[rows, j] / (excess[rows, j] - at_estimate) * (estimate - grid[rows, j])
        near_high = estimate - at_estimate / (excess[rows, j + 1] - at_estimate) * (grid[rows, j + 1] - estimate)
    low = np.where(left == j, np.where(np.isfinite(near_low), near_low, estimate), low)
    high = np.where(right == j + 1, np.where(np.isfinite(near_high), near_high, estimate), high)
    return RootSet(estimate, low, high, (left < 0) | (right >= m), found)


CHUNK = 256  # replicates per block in `batched`: bounds the memory of the (R, S, fine grid) arrays


def batched(fn):
    """Run `fn` on blocks of CHUNK replicates (the leading axis of its 3-D array arguments) and
    join the dataclass it returns field by field."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        arrays = [i for i, a in enumerate(args) if isinstance(a, np.ndarray) and a.ndim == 3]
        size = len(args[arrays[0]]) if arrays else 0
        if size <= CHUNK:
            return fn(*args, **kwargs)
        parts = [fn(*[a[start:start + CHUNK] if i in arrays else a for i, a in enumerate(args)], **kwargs)
                 for start in range(0, size, CHUNK)]
        return dataclasses.replace(parts[0], **{
            f.name: np.concatenate([getattr(p, f.name) for p in parts])
            for f in dataclasses.fields(parts[0]) if isinstance(getattr(parts[0], f.name), np.ndarray)})
    return wrapper


def nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean over `axis` without NaNs; NaN (and no warning) where nothing is left."""
    count = np.isfinite(values).sum(axis=axis)
    return np.where(count > 0, np.nansum(values, axis=axis) / np.maximum(count, 1), np.nan)


def mean_interval(values: np.ndarray, level: float = 0.95, axis: int = 1):
    """(mean, low, high, n) over `axis` (the seeds), NaN values left out; no interval below MIN_SEEDS."""
    n = np.isfinite(values).sum(axis=axis)
    k = np.maximum(n, 1)
    mean = np.where(n > 0, np.nansum(values, axis=axis) / k, np.nan)
    dev = values - np.expand_dims(mean, axis)
    spread = np.sqrt(np.nansum(dev**2, axis=axis) / np.maximum(k - 1, 1))
    half = seed_quantile(level, n) * spread / np.sqrt(k)
    return mean, mean - half, mean + half, n


AGREES, DISAGREES = "agrees", "disagrees"


def verdict(prediction: float, low: float, high: float) -> str:
    """"agrees" when the prediction lies in [low, high], "disagrees" outside; "" without
    a prediction or an interval (the report then says why there is no interval)."""
    if not (np.isfinite(prediction) and np.isfinite(low) and np.isfinite(high)):
        return ""
    return AGREES if low <= prediction <= high else DISAGREES
