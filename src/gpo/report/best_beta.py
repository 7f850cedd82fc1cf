"""The best beta per family, and its ratio to a reference family, with
intervals that mean what they say (the method and its tests:
`gpo.report.peak`, tests/test_report_coverage.py, docs/statistics.md).

Per family: the selection metric of every finished run, seed by seed (a
seed is one preference-data sample shared by every beta and family); the
best beta is the maximum of the seeds' mean cubic in log beta fitted over
the grid points near the peak; its interval, Fieller's set over seeds. The
ratio best beta(family) / best beta(reference) combines the two families'
sets with the correlation of their seeds (MOVER). Where there is no interval the row says
why (`note`, `ratio_note`): one seed, the best grid point at a grid end,
too few points near the peak, a grid too narrow, curvature not significant.

The frame also carries what the seed advisor (`gpo.report.advisor`) needs:
the ratio's spread over seeds (`ratio_sd`) and the part of each family's
that per-run noise explains (`noise_var`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gpo.report.analysis import default_selection_metric, per_group, seed_matrices
from gpo.report.load import finished
from gpo.report.metrics import reference_level, spec
from gpo.report.peak import DROP, find_peaks, paired_difference

COLUMNS = ["loss", "best_beta", "best_beta_low", "best_beta_high", "ratio", "ratio_low", "ratio_high", "edge",
           "n_seeds"]  # best_beta.csv, in this order
REFERENCE = "the reference family"
NO_REFERENCE = "no best β for the reference family"


def _ratio_note(row: dict, ref: dict | None, reference: str) -> str:
    if ref is None:
        return f"{reference} is not in the sweep"
    if row["loss"] == reference:
        return REFERENCE
    if not np.isfinite(ref["log_best"]):
        return f"{NO_REFERENCE} ({ref['note']})"
    if not np.isfinite(row["log_best"]):
        return row["note"]
    for r in (row, ref):
        if r["note"]:
            return f"{r['loss']}: {r['note']}"
    return ""


def _fit_group(runs: pd.DataFrame, metric: str, reference: str, level: float, drop: float) -> pd.DataFrame:
    runs = finished(runs).dropna(subset=[metric, "beta", "seed"])
    runs = runs[runs["beta"] > 0]
    seeds = np.sort(runs["seed"].unique())
    sign = 1.0 if spec(metric).higher_is_better else -1.0
    level_ref = reference_level(metric, runs)
    rows, peaks = [], {}
    for loss, family in runs.groupby("loss", sort=True):
        betas, (values,) = seed_matrices(family, [metric], seeds)
        p = find_peaks(np.log(betas), sign * values, level, None if level_ref is None else sign * level_ref, drop)
        peaks[loss] = p
        means = np.nanmean(values, axis=0)
        best_grid = betas[np.nanargmax(sign * means)]
        scale = family["regularisation_scale"].dropna()
        noise_var = float(p.residual_var[0] * p.leverage[0] / p.curvature()[0] ** 2)
        rows.append({"loss": loss, "regularisation_scale": scale.iloc[0] if len(scale) else np.nan,
                     "log_best": p.estimate[0], "best_beta": float(np.exp(p.estimate[0])),
                     "best_beta_low": float(np.exp(p.low[0])), "best_beta_high": float(np.exp(p.high[0])),
                     "edge": p.edge[0], "n_seeds": int(family["seed"].nunique()), "n_fit_seeds": int(p.n_seeds[0]),
                     "n_betas": len(betas), "best_grid_beta": float(best_grid),
                     f"{metric} at best grid β": float(means[np.nanargmax(sign * means)]),
                     "note": str(p.reason[0]), "noise_var": noise_var if np.isfinite(noise_var) else np.nan})
    result = pd.DataFrame(rows)
    if result.empty:
        return result
    ref = next((r for r in rows if r["loss"] == reference), None)
    ratio = {k: [] for k in ["ratio", "ratio_low", "ratio_high", "ratio_sd", "ratio_note"]}
    for row in rows:
        note = _ratio_note(row, ref, reference)
        if row["loss"] == reference:
            values = (1.0, np.nan, np.nan, np.nan)
        elif ref is None or not np.isfinite(row["log_best"] - ref["log_best"]):
            values = (np.nan, np.nan, np.nan, np.nan)
        else:
            d = paired_difference(peaks[row["loss"]], peaks[reference], level)
            values = (np.exp(d.estimate[0]), np.exp(d.low[0]), np.exp(d.high[0]), d.spread[0])
        for key, value in zip(ratio, (*values, note)):
            ratio[key].append(value)
    return result.assign(**ratio).drop(columns="log_best")


def best_beta(runs: pd.DataFrame, metric: str | None = None, reference: str = "ipo", by: str | None = None,
              level: float = 0.95, drop: float = DROP) -> pd.DataFrame:
    """One row per family (per `by` group if given): best beta [low, high], the ratio to
    `reference` [low, high], `note` / `ratio_note` where no interval is given, and the grid's
    best point (see the module docstring). Raises ValueError without a selection metric."""
    metric = metric or default_selection_metric(runs)
    result = per_group(runs, by, _fit_group, metric, reference, level, drop)
    result.attrs.update(metric=metric, reference=reference, level=level, drop=drop, by=by,
                        reference_level=reference_level(metric, runs))
    return result


def csv_frame(best: pd.DataFrame) -> pd.DataFrame:
    """best_beta.csv: the `by` column first when used, then COLUMNS, then `note`; empty cells where no
    interval (or no estimate) is given."""
    by = best.attrs.get("by")
    columns = ([by] if by else []) + COLUMNS
    out = best.reindex(columns=columns).copy()
    out["note"] = [n or r if r != REFERENCE else n for n, r in zip(best["note"], best["ratio_note"])]
    return out


