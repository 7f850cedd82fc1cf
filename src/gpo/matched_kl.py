"""GPO families compared at matched KL(pi || pi_ref), from a sweep table.

Two readings of the paper's claims that do not depend on where the win rate
peaks (a task whose gold reward keeps rising with KL has no interior best beta):
- at the same KL, do the families reach the same gold win rate?
- which beta does each family need to reach that KL? The Taylor argument says
  the regularisation strength is beta * f''(0)/|f'(0)|, so at matched KL
  beta_family / beta_reference should be scale(reference) / scale(family).

Input: `gpo.report.aggregate`'s table (one row per (loss, beta), seed means).
"""

import numpy as np
import pandas as pd


def default_kls(table: pd.DataFrame, kl_metric: str = "eval/kl", n: int = 3) -> list[float]:
    """n KL values log-spaced inside the range every family covers (2 significant digits)."""
    ranges = table.dropna(subset=[kl_metric]).groupby("loss")[kl_metric].agg(["min", "max"])
    lo, hi = ranges["min"].max(), ranges["max"].min()
    if not 0 < lo < hi:
        return []
    edges = np.geomspace(lo, hi, n + 2)[1:-1]  # strictly inside: no extrapolation at the ends
    return sorted({float(f"{k:.2g}") for k in edges})  # rounding may merge close values


def _curve(group: pd.DataFrame, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """y against x sorted by x, duplicate x merged: what np.interp needs."""
    curve = group.dropna(subset=[x, y]).groupby(x)[y].mean()
    return curve.index.to_numpy(float), curve.to_numpy(float)


def matched_kl(table: pd.DataFrame, kls: list[float] | None = None, metric: str = "eval/win_rate",
               kl_metric: str = "eval/kl", reference: str = "ipo") -> pd.DataFrame:
    """One row per (family, target KL): the metric and the beta there, by
    piecewise-linear interpolation between the family's grid points (metric
    linear in KL, log beta linear in log KL); NaN outside the family's KL range.
    `beta_ratio` is beta / beta(reference) at the same KL, `predicted_ratio`
    scale(reference) / scale(family) (NaN for scale 0, e.g. hinge)."""
    kls = default_kls(table, kl_metric) if kls is None else list(dict.fromkeys(kls))
    scales = table.groupby("loss")["regularisation_scale"].first()
    rows = []
    for loss, group in table[table[kl_metric] > 0].groupby("loss", sort=True):
        kl_x, value = _curve(group, kl_metric, metric)
        stderr_x, stderr = _curve(group, kl_metric, metric + "_stderr") if metric + "_stderr" in group else (kl_x, kl_x * np.nan)
        log_kl, log_beta = _curve(group.assign(log_kl=np.log(group[kl_metric]), log_beta=np.log(group["beta"])),
                                  "log_kl", "log_beta")
        for kl in kls:
            inside = len(kl_x) >= 2 and kl_x[0] <= kl <= kl_x[-1]
            rows.append({
                "loss": loss,
                "kl": kl,
                metric: np.interp(kl, kl_x, value) if inside else np.nan,
                metric + "_stderr": np.interp(kl, stderr_x, stderr) if inside and len(stderr_x) else np.nan,
                "beta": float(np.exp(np.interp(np.log(kl), log_kl, log_beta))) if inside else np.nan,
            })
    result = pd.DataFrame(rows, columns=["loss", "kl", metric, metric + "_stderr", "beta"])
    reference_beta = result[result["loss"] == reference].set_index("kl")["beta"]
    result["beta_ratio"] = result["beta"] / result["kl"].map(reference_beta)
    scale = result["loss"].map(scales)
    result["predicted_ratio"] = (scales.get(reference, np.nan) / scale.where(scale > 0)).astype(float)
    result.attrs.update(metric=metric, reference=reference)
    return result


def _cell(value: float, stderr: float = np.nan) -> str:
    if pd.isna(value):
        return "–"
    return f"{value:.3g}" if pd.isna(stderr) else f"{value:.3f} ± {stderr:.3f}"


def matched_kl_frame(result: pd.DataFrame) -> pd.DataFrame:
    """Formatted for a markdown table: one row per family, one column group per KL."""
    metric, reference = result.attrs["metric"], result.attrs["reference"]
    rows = []
    for loss, group in result.groupby("loss", sort=True):
        row = {"loss": loss}
        for _, r in group.iterrows():
            row[f"{metric} at KL={r['kl']:g}"] = _cell(r[metric], r[metric + "_stderr"])
        for _, r in group.iterrows():
            row[f"β at KL={r['kl']:g} (β/β_{reference}; predicted)"] = (
                f"{_cell(r['beta'])} ({_cell(r['beta_ratio'])}; {_cell(r['predicted_ratio'])})")
        rows.append(row)
    return pd.DataFrame(rows)
