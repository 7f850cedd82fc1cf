"""The maximum of a curve measured on a grid by several seeds, with a
confidence set that means what it says: the numerical core of the best beta
(`gpo.report.best_beta`) and of the Gao et al. fits (`gpo.report.gao`).
Batched over a leading axis of replicates, so that the coverage simulations
(`gpo.report.simulation`, tests/test_report_coverage.py) run the very code
the report runs.

Model. Seed s (one preference-data sample, shared by every beta and family)
measures the curve y_s(x_j) at the grid points x_j = log beta_j. Each seed's
points in a window around the grid maximum of the seed means are fitted by a
cubic in x (least squares, one fit per seed), whose derivative is g'_s(x).
The estimand is the maximum of the seed-averaged curve, x* with
E[g'_s(x*)] = 0; the estimate is the maximum of the seeds' mean polynomial.

Window. The contiguous grid points around the grid maximum whose seed mean
has fallen by less than `drop` (30%) of the peak's height above a reference
level (the reference policy's score: a win rate of 1/2, or its gold reward).
The window so scales with the hump: a cubic fits any smooth hump over such
a range with a peak error well below the intervals' half-width (measured in
the tests). Without a reference level: the grid points within `octaves` of
the maximum (a fixed width, less robust). No interval when the window has
fewer than degree + 2 points (the hump is narrower than the grid's spacing)
or reaches both grid ends (the curve never falls by `drop`: the grid is too
narrow).

Confidence set (Fieller's construction, an inverted t-test). At a fixed x the
g'_s(x) are independent across seeds, each linear in its seed's data, so
    {x : |mean_s g'_s(x)| <= t_{S-1, (1+level)/2} * sd_s(g'_s(x)) / sqrt(S)}
holds x* with probability `level` when the g'_s(x*) are normal, whatever the
seed effects: an additive seed effect drops out of g'_s; a seed that moves
the peak shows in the spread of g'_s. The set is asymmetric where the curve
is, and unbounded when the curvature is not significant: then there is no
interval, and `reason` says why. The run of the set that holds the estimate
is reported.

A difference of two maxima (the log ratio of two families' best betas,
`paired_difference`): the two Fieller sets combined by MOVER (Zou & Donner
2008, "method of variance estimates recovery"), each side's half-widths
with the correlation between the families' per-seed influences on their
estimates, -g'_s(x_hat) / mean_s g''_s(x_hat) (seeds are shared, so a seed
that moves both peaks alike cancels). Asymmetric like the sets; given only
where both maxima have an interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpo.report.intervals import MIN_SEEDS, batched, nanmean, root_set

LOW, HIGH = "low", "high"
FINE = 256  # points of the fine grid on which a set is found (its ends then refined linearly)
DEGREE = 3
DROP = 0.3
OCTAVES = 1.5

# Why there is no interval (the report prints these words).
ONE_SEED = "one seed: no between-seed variance to build an interval from"
FEW_SEEDS = f"two seeds: intervals are given from {MIN_SEEDS} seeds on (the fewest the coverage tests check)"
GRID_END = "the best grid point is the grid's {} end: the best β may lie beyond it"
NO_MAXIMUM = "the fitted curve has no maximum inside the fitted window"
UNBOUNDED = ("the {:g}% set reaches the end of the fitted window: the curvature at the peak is not "
             "significant with these seeds")
NARROW = ("the curve does not fall by {:g}% of its height above the reference on either side of the peak "
          "within the grid: widen the grid")
FEW_POINTS = ("fewer than {} grid points near the peak (within {:g}% of its height): too few for a cubic; "
              "use a finer grid there")


def powers(z: np.ndarray, degree: int, derivative: int = 0) -> np.ndarray:
    """d^k/dz^k of z^0..z^degree, stacked on a new last axis."""
    out = []
    for k in range(degree + 1):
        factor = np.prod(np.arange(k - derivative + 1, k + 1)) if k >= derivative else 0.0
        out.append(factor * z ** max(k - derivative, 0))
    return np.stack(out, axis=-1)


def fit_seeds(basis: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least squares per (replicate, seed): coefficients (R, S, p), NaN where singular.
    basis: (R, n, p) or (R, S, n, p); y, weights: (R, S, n), weight 0 for a point left out."""
    if basis.ndim == 3:
        basis = np.broadcast_to(basis[:, None], y.shape + basis.shape[-1:])
    p = basis.shape[-1]
    gram = np.einsum("rsn,rsni,rsnj->rsij", weights, basis, basis)
    moment = np.einsum("rsn,rsni,rsn->rsi", weights, basis, np.where(weights > 0, y, 0.0))
    ok = (weights > 0).sum(axis=-1) >= p
    ok &= np.linalg.matrix_rank(np.where(ok[..., None, None], gram, np.eye(p))) == p
    gram = np.where(ok[..., None, None], gram, np.eye(p))
    return np.where(ok[..., None], np.linalg.solve(gram, moment[..., None])[..., 0], np.nan)


@dataclass
class Peaks:
    """Per replicate (leading axis R): the estimate and its confidence set, in x = log beta."""

    estimate: np.ndarray  # (R,) NaN at a grid end or without a maximum
    low: np.ndarray  # (R,) NaN where no interval
    high: np.ndarray
    edge: np.ndarray  # (R,) "", LOW or HIGH: the grid maximum of the seed means is at an end
    reason: np.ndarray  # (R,) "" or why there is no interval
    n_seeds: np.ndarray  # (R,) seeds that entered the fit
    window: np.ndarray  # (R, 2) the fitted window's ends in x
    theta: np.ndarray  # (R, S, degree+1) each seed's polynomial in x - centre (NaN for seeds left out)
    centre: np.ndarray  # (R,)
    residual_var: np.ndarray  # (R,) pooled residual variance of the per-seed fits (per-run noise)
    leverage: np.ndarray  # (R,) c' (X'X)^-1 c of the slope at the estimate: noise variance factor

    @property
    def bounded(self) -> np.ndarray:
        return np.isfinite(self.low) & np.isfinite(self.high)

    def derivative(self, x: np.ndarray, order: int = 1) -> np.ndarray:
        """Each seed's polynomial's derivative of `order` at x (R,): (R, S)."""
        basis = powers(np.asarray(x, float) - self.centre, self.theta.shape[-1] - 1, order)
        return np.einsum("rsp,rp->rs", self.theta, basis)

    def curvature(self) -> np.ndarray:
        """(R,): the seeds' mean second derivative at the estimate."""
        return nanmean(self.derivative(self.estimate, 2), axis=1)

    def influence(self) -> np.ndarray:
        """(R, S): seed s's first-order contribution to the estimate, -g'_s / mean g''."""
        return -self.derivative(self.estimate) / self.curvature()[:, None]


def _window(x, means, best, valid, octaves, reference_level, drop):
    """(fit weights (R, S, n), window spans the whole grid (R,)): see the module docstring."""
    R, n = means.shape
    idx = np.arange(n)[None, :]
    if reference_level is None:
        near = np.abs(x[None, :] - x[best][:, None]) <= octaves * np.log(2) * (1 + 1e-9)
        return (valid & near[:, None, :]).astype(float), np.zeros(R, bool)
    top = means[np.arange(R), best]
    height = top - np.broadcast_to(np.asarray(reference_level, float), (R,))
    below = ~(means >= (top - drop * height)[:, None]) | ~(height > 0)[:, None]
    left = np.where(below & (idx < best[:, None]), idx, -1).max(axis=1)
    right = np.where(below & (idx > best[:, None]), idx, n).min(axis=1)
    near = (idx > left[:, None]) & (idx < right[:, None])
    return (valid & near[:, None, :]).astype(float), (left < 0) & (right >= n)


@batched
def find_peaks(x: np.ndarray, y: np.ndarray, level: float = 0.95, reference_level=None, drop: float = DROP,
               octaves: float = OCTAVES, degree: int = DEGREE) -> Peaks:
    """Peaks of y (R, S, n) over the sorted grid x (n,): higher is better, NaN = missing
    (see the module docstring). A 2-D y is one replicate."""
    y = np.asarray(y, float)
    y = y[None] if y.ndim == 2 else y
    x = np.asarray(x, float)
    R, S, n = y.shape
    valid = np.isfinite(y)
    counts = valid.sum(axis=1)
    has = counts > 0
    means = np.where(has, np.where(valid, y, 0.0).sum(axis=1) / np.maximum(counts, 1), np.nan)  # R, n
    best = np.argmax(np.where(has, means, -np.inf), axis=1)
    first, last = np.argmax(has, axis=1), n - 1 - np.argmax(has[:, ::-1], axis=1)
    edge = np.where(~has.any(axis=1), "", np.where(best == first, LOW, np.where(best == last, HIGH, "")))

    weights, narrow = _window(x, means, best, valid, octaves, reference_level, drop)
    enough = weights.sum(axis=2) >= degree + 2  # a residual degree of freedom for every seed
    weights *= enough[..., None]
    n_seeds = enough.sum(axis=1)
    centre = x[best]
    z = x[None, :] - centre[:, None]
    basis = powers(z, degree)  # R, n, p
    theta = fit_seeds(basis, y, weights)  # R, S, p
    seeds_ok = np.isfinite(theta).all(axis=2)
    n_seeds = np.minimum(n_seeds, seeds_ok.sum(axis=1))
    in_window = weights.any(axis=1)
    lo_z = np.where(in_window.any(axis=1), np.where(in_window, z, np.inf).min(axis=1), 0.0)
    hi_z = np.where(in_window.any(axis=1), np.where(in_window, z, -np.inf).max(axis=1), 0.0)
    fine = lo_z[:, None] + (hi_z - lo_z)[:, None] * np.linspace(0, 1, FINE)[None, :]  # R, FINE

    coef = np.where(seeds_ok[..., None], theta, np.nan)
    slope = coef @ powers(fine, degree, 1).transpose(0, 2, 1)  # R, S, FINE
    mean_coef = np.nansum(coef, axis=1, keepdims=True) / np.maximum(n_seeds, 1)[:, None, None]
    value = (mean_coef @ powers(fine, degree).transpose(0, 2, 1))[:, 0]
    roots = root_set(fine, slope, value, level)

    residuals = np.where(weights > 0, y - np.nan_to_num(coef) @ basis.transpose(0, 2, 1), 0.0)
    dof = np.maximum((weights.sum(axis=2) - degree - 1) * seeds_ok, 0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        residual_var = (residuals**2 * seeds_ok[..., None]).sum(axis=(1, 2)) / dof
    slope_basis = powers(roots.estimate, degree, 1)  # R, p
    gram = np.einsum("rn,rni,rnj->rij", in_window.astype(float), basis, basis)
    gram = np.where((np.linalg.matrix_rank(gram) == degree + 1)[:, None, None], gram, np.eye(degree + 1))
    leverage = np.einsum("ri,rij,rj->r", slope_basis, np.linalg.inv(gram), slope_basis)

    reason = np.full(R, "", dtype=object)
    reason[roots.touches] = UNBOUNDED.format(100 * level)
    reason[~roots.found] = NO_MAXIMUM
    reason[n_seeds == 2] = FEW_SEEDS
    reason[n_seeds == 1] = ONE_SEED
    reason[n_seeds == 0] = FEW_POINTS.format(degree + 2, 100 * drop)
    reason[narrow] = NARROW.format(100 * drop)
    for end in (LOW, HIGH):
        reason[edge == end] = GRID_END.format(end)
    point = (edge == "") & roots.found & (n_seeds >= 1) & ~narrow
    ok = point & (reason == "")
    return Peaks(estimate=np.where(point, roots.estimate + centre, np.nan),
                 low=np.where(ok, roots.low + centre, np.nan), high=np.where(ok, roots.high + centre, np.nan),
                 edge=edge.astype(object), reason=reason, n_seeds=n_seeds,
                 window=np.stack([lo_z + centre, hi_z + centre], axis=1), theta=coef, centre=centre,
                 residual_var=residual_var, leverage=np.where(point, leverage, np.nan))


@dataclass
class Difference:
    """estimate(a) - estimate(b) per replicate, with its interval over paired seeds."""

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    spread: np.ndarray  # sd over seeds of the paired influence difference (the delta method's)
    correlation: np.ndarray  # of the two families' per-seed influences
    n_seeds: np.ndarray


def paired_difference(a: Peaks, b: Peaks, level: float = 0.95) -> Difference:
    """MOVER (Zou & Donner 2008): the two Fieller sets' lower and upper half-widths combined with
    the correlation of the seeds' influences on the two estimates, e.g. the lower limit
    d - sqrt(la^2 + ub^2 - 2 r la ub). The seed axes of `a` and `b` must be the same seeds.
    The intervals' `level` is theirs (given only where both have one)."""
    ia, ib = a.influence(), b.influence()
    both = np.isfinite(ia) & np.isfinite(ib)
    ia, ib = np.where(both, ia, np.nan), np.where(both, ib, np.nan)
    n = both.sum(axis=1)
    k = np.maximum(n, 1)[:, None]
    ca, cb = ia - np.nansum(ia, axis=1)[:, None] / k, ib - np.nansum(ib, axis=1)[:, None] / k
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.nansum(ca * cb, axis=1) / np.sqrt(np.nansum(ca**2, axis=1) * np.nansum(cb**2, axis=1))
    r = np.clip(np.nan_to_num(r), -1, 1)
    spread = np.sqrt(np.nansum((ca - cb) ** 2, axis=1) / np.maximum(k[:, 0] - 1, 1))
    estimate = a.estimate - b.estimate
    la, ua, lb, ub = a.estimate - a.low, a.high - a.estimate, b.estimate - b.low, b.high - b.estimate
    low = estimate - np.sqrt(np.maximum(la**2 + ub**2 - 2 * r * la * ub, 0))
    high = estimate + np.sqrt(np.maximum(ua**2 + lb**2 - 2 * r * ua * lb, 0))
    given = a.bounded & b.bounded & (n >= MIN_SEEDS)
    return Difference(estimate, np.where(given, low, np.nan), np.where(given, high, np.nan),
                      np.where(n >= 2, spread, np.nan), r, n)
