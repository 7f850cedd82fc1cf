"""Gao et al. (2023)'s over-optimisation curves fitted per family: gold
score against d = sqrt(KL(pi || pi_ref)) in their two functional forms,

    best-of-n:  R(d) = d (alpha - beta' d)
    RL:         R(d) = d (alpha - beta' log d)

each plus an intercept that absorbs the reference level and a seed's
additive effect. Both are linear in (intercept, alpha, beta'), so each seed's
runs (all its betas) are fitted by least squares, and the peak d* (where
R'(d) = 0: alpha = 2 beta' d, or alpha = beta' (log d + 1)) gets the same
t-inversion set over seeds as the best beta (`gpo.report.intervals.root_set`):
exact when the form is right and the per-seed fits normal. Where the form is
wrong the interval is about the form's peak, not the curve's: the report
gives the fit's residual error next to the per-run noise so that a reader
can tell. The peak KL is d*^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from gpo.report.analysis import per_group, seed_matrices
from gpo.report.intervals import MIN_SEEDS, batched, root_set
from gpo.report.load import finished
from gpo.report.metrics import STDERR_SUFFIX, spec
from gpo.report.peak import FINE, fit_seeds

# form -> (the fitted basis in d, its derivative in d); R = c + alpha d - beta' h(d).
FORMS = {
    "best-of-n": (lambda d: np.stack([np.ones_like(d), d, -(d**2)], -1),
                  lambda d: np.stack([np.zeros_like(d), np.ones_like(d), -2 * d], -1)),
    "RL": (lambda d: np.stack([np.ones_like(d), d, -d * np.log(d)], -1),
           lambda d: np.stack([np.zeros_like(d), np.ones_like(d), -(np.log(d) + 1)], -1)),
}
KL = "eval/kl"
LABELS = {"best-of-n": "d(α − β′d)", "RL": "d(α − β′ log d)"}

BEYOND = "the fitted curve peaks outside the measured KL range"
UNBOUNDED = "the {:g}% set reaches the end of the measured KL range: the peak is not significant with these seeds"
TOO_FEW = f"fewer than {MIN_SEEDS} seeds with four runs or more: no interval"


@dataclass
class GaoFit:
    """Per replicate: the peak KL and its interval, and the fit's residual standard deviation."""

    form: str
    peak_kl: np.ndarray
    low: np.ndarray
    high: np.ndarray
    reason: np.ndarray
    residual_sd: np.ndarray
    n_seeds: np.ndarray


@batched
def fit_gao(kl: np.ndarray, y: np.ndarray, form: str, level: float = 0.95) -> GaoFit:
    """kl, y: (R, S, n), NaN = missing; higher y is better."""
    kl, y = np.asarray(kl, float), np.asarray(y, float)
    if y.ndim == 2:
        kl, y = kl[None], y[None]
    basis_fn, slope_fn = FORMS[form]
    valid = np.isfinite(kl) & np.isfinite(y) & (kl > 0)
    d = np.sqrt(np.where(valid, kl, 1.0))
    weights = (valid & (valid.sum(axis=2, keepdims=True) >= 4)).astype(float)
    basis = basis_fn(d)  # R, S, n, 3
    theta = fit_seeds(basis, y, weights)
    seeds_ok = np.isfinite(theta).all(axis=2)
    n_seeds = seeds_ok.sum(axis=1)
    used = (weights > 0) & seeds_ok[..., None]
    lo = np.where(used, d, np.inf).min(axis=(1, 2))
    hi = np.where(used, d, -np.inf).max(axis=(1, 2))
    lo, hi = np.where(np.isfinite(lo), lo, 1.0), np.where(np.isfinite(hi), hi, 1.0)
    fine = np.exp(np.log(lo)[:, None] + np.log(hi / lo)[:, None] * np.linspace(0, 1, FINE)[None, :])  # R, m
    slope = theta @ slope_fn(fine).transpose(0, 2, 1)  # R, S, FINE
    value = (np.where(seeds_ok[..., None], theta, 0.0).sum(axis=1, keepdims=True)
             @ basis_fn(fine).transpose(0, 2, 1))[:, 0]
    roots = root_set(fine, slope, value, level)

    fitted = np.einsum("rsp,rsnp->rsn", np.nan_to_num(theta), basis)
    dof = np.maximum(used.sum(axis=(1, 2)) - 3 * n_seeds, 1)
    residual_sd = np.sqrt(np.where(used, (y - fitted) ** 2, 0.0).sum(axis=(1, 2)) / dof)

    reason = np.full(len(y), "", dtype=object)
    reason[roots.touches] = UNBOUNDED.format(100 * level)
    reason[~roots.found] = BEYOND
    reason[n_seeds < MIN_SEEDS] = TOO_FEW
    ok = reason == ""
    point = roots.found & (n_seeds >= 1)
    return GaoFit(form, np.where(point, roots.estimate**2, np.nan), np.where(ok, roots.low**2, np.nan),
                  np.where(ok, roots.high**2, np.nan), reason, np.where(n_seeds >= 1, residual_sd, np.nan), n_seeds)


def _fits(runs: pd.DataFrame, metric: str, level: float) -> pd.DataFrame:
    runs = finished(runs).dropna(subset=[metric, KL, "seed"])
    runs = runs[runs[KL] > 0]
    seeds = np.sort(runs["seed"].unique())
    sign = 1.0 if spec(metric).higher_is_better else -1.0
    err = metric + STDERR_SUFFIX
    rows = []
    for loss, family in runs.groupby("loss", sort=True):
        _, (values, kl) = seed_matrices(family, [metric, KL], seeds)
        run_error = family[err].median() if err in family else np.nan
        for form in FORMS:
            fit = fit_gao(kl, sign * values, form, level)
            rows.append({"loss": loss, "form": form, "peak_kl": fit.peak_kl[0], "peak_kl_low": fit.low[0],
                         "peak_kl_high": fit.high[0], "residual_sd": fit.residual_sd[0], "run_stderr": run_error,
                         "n_seeds": int(fit.n_seeds[0]), "note": str(fit.reason[0])})
    return pd.DataFrame(rows, columns=["loss", "form", "peak_kl", "peak_kl_low", "peak_kl_high", "residual_sd",
                                       "run_stderr", "n_seeds", "note"])


def gao_fits(runs: pd.DataFrame, metric: str, by: str | None = None, level: float = 0.95) -> pd.DataFrame:
    """Per family (per `by` group) and form: the peak KL [interval], the fit's residual sd next to
    the runs' own sampling error (see the module docstring)."""
    result = per_group(runs, by, _fits, metric, level)
    result.attrs.update(metric=metric, level=level, by=by)
    return result
