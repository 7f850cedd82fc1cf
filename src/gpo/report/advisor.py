"""How many seeds (and how fine a grid) a sweep needs, from its own spread.

For a ratio of best betas: the report's interval on log(ratio) is
t_{S-1} * sd / sqrt(S), sd the spread over seeds of the paired per-seed
influences (`gpo.report.peak.paired_difference`). The seeds needed for a
half-width of log(1 + precision) follow from the measured sd. Part of that
sd is per-run noise carried through the cubic fit (the fits' residual
variance times the estimate's leverage, over the curvature squared); the
rest is the seeds' own effect on the peak. Twice as many betas near the peak
halve the first part only, which gives the figure "with a finer grid".

For a gap at matched KL: a paired t-test over seeds at level 5% with 80%
power (noncentral t) to detect a gap of `gap` in the metric's units, with
the measured sd of the per-seed gaps.

Both take the measured sd as the truth; from few seeds it is itself
uncertain, so the figures are also given at the upper 80% confidence bound
of the sd (chi-square with S - 1 degrees of freedom).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from gpo.report.intervals import MIN_SEEDS

MAX_SEEDS = 1000
SD_BOUND = 0.8  # one-sided confidence of the sd's upper bound


def seeds_for_half_width(sd: float, half_width: float, level: float = 0.95) -> float:
    """The fewest seeds (>= MIN_SEEDS, the fewest an interval is given from) whose t interval
    t_{S-1} sd / sqrt(S) is at most `half_width`; NaN if unknown, inf beyond MAX_SEEDS."""
    if not (np.isfinite(sd) and half_width > 0):
        return np.nan
    s = np.arange(MIN_SEEDS, MAX_SEEDS + 1)
    ok = stats.t.ppf((1 + level) / 2, s - 1) * sd / np.sqrt(s) <= half_width
    return float(s[np.argmax(ok)]) if ok.any() else np.inf


def seeds_for_power(sd: float, gap: float, level: float = 0.95, power: float = 0.8) -> float:
    """The fewest seeds for a two-sided paired t-test at 1 - level to detect `gap` with `power`."""
    if not (np.isfinite(sd) and np.isfinite(gap) and gap != 0):
        return np.nan
    if sd == 0:
        return float(MIN_SEEDS)
    s = np.arange(MIN_SEEDS, MAX_SEEDS + 1)
    critical = stats.t.ppf((1 + level) / 2, s - 1)
    shift = abs(gap) * np.sqrt(s) / sd
    # The far tail's cdf can come back NaN from scipy where it is ~0: count it as 0.
    achieved = np.nan_to_num(stats.nct.sf(critical, s - 1, shift)) + np.nan_to_num(
        stats.nct.cdf(-critical, s - 1, shift))
    ok = achieved >= power
    return float(s[np.argmax(ok)]) if ok.any() else np.inf


def sd_upper_bound(sd: float, n: int) -> float:
    """The SD_BOUND one-sided upper confidence bound of a standard deviation measured on n values."""
    if not (np.isfinite(sd) and n >= 2):
        return np.nan
    return float(sd * np.sqrt((n - 1) / stats.chi2.ppf(1 - SD_BOUND, n - 1)))


def ratio_advice(best: pd.DataFrame, precision: float = 0.1, level: float = 0.95) -> pd.DataFrame:
    """Per family with a ratio: seeds needed for a ratio interval of +-`precision` (relative), at
    this grid, at the sd's upper bound, and with twice the betas near both peaks."""
    by = best.attrs.get("by")
    reference = best.attrs.get("reference")
    half = np.log1p(precision)
    rows = []
    for _, group in best.groupby(by, sort=True) if by else [(None, best)]:
        noise = group.set_index("loss")["noise_var"]
        for row in group.to_dict("records"):
            if row["loss"] == reference or not np.isfinite(row.get("ratio_sd", np.nan)):
                continue
            sd, n = row["ratio_sd"], row["n_fit_seeds"]
            # The noise part, from the fits' residuals, cannot exceed the spread measured: capped at it.
            noise_var = min(noise.get(row["loss"], np.nan) + noise.get(reference, np.nan), sd**2)
            finer = np.sqrt(sd**2 - noise_var / 2) if np.isfinite(noise_var) else np.nan
            rows.append({**({by: row[by]} if by else {}), "loss": row["loss"], "seeds_now": n, "ratio_sd": sd,
                         "noise_share": noise_var / sd**2 if sd > 0 and np.isfinite(noise_var) else np.nan,
                         "seeds_needed": seeds_for_half_width(sd, half, level),
                         "seeds_needed_sd_bound": seeds_for_half_width(sd_upper_bound(sd, n), half, level),
                         "seeds_needed_finer_grid": seeds_for_half_width(finer, half, level)})
    result = pd.DataFrame(rows)
    result.attrs.update(precision=precision, level=level, reference=reference, by=by)
    return result


def gap_advice(gaps: pd.DataFrame, gap: float | None = None, level: float = 0.95,
               power: float = 0.8) -> pd.DataFrame:
    """Per family and KL with a measured spread: seeds needed to detect a gap of `gap` (default: the
    largest measured |gap|) at matched KL with `power`, at the measured sd and its upper bound."""
    target = gap if gap is not None else float(gaps["gap"].abs().max()) if len(gaps) else np.nan
    rows = [{**{k: r[k] for k in r if k in (gaps.attrs.get("by"), "loss", "kl")}, "gap_sd": r["gap_sd"],
             "seeds_now": r["n_seeds"], "seeds_needed": seeds_for_power(r["gap_sd"], target, level, power),
             "seeds_needed_sd_bound": seeds_for_power(sd_upper_bound(r["gap_sd"], r["n_seeds"]), target, level,
                                                      power)}
            for r in gaps.to_dict("records") if np.isfinite(r["gap_sd"])]
    result = pd.DataFrame(rows)
    result.attrs.update(gap=target, level=level, power=power, metric=gaps.attrs.get("metric"),
                        target_given=gap is not None)
    return result
