"""What theory predicts for the ratio beta(family) / beta(reference) at equal
regularisation.

Taylor (the paper's Section 4, "as predicted by theory"): the local offline
regulariser of f(beta rho) is beta * f''(0)/|f'(0)| * rho^2/2 (per unit of the
linear term), so equal regularisation needs
    beta_family / beta_reference = scale(reference) / scale(family),
scale = f''(0)/|f'(0)|; undefined for scale 0 (hinge).

Link (derived here, not in the paper): at the population optimum of the loss
on a pair with preference probability p, beta * rho = t*(p), the family's link
(`GPOLoss.link`). Equal E_w[rho^2] (the offline regulariser, hence the KL to
second order) for the two families needs
    beta_family / beta_reference = sqrt(E_w[t*_family(p)^2] / E_w[t*_reference(p)^2])
("link_ratio", RMS), with w the distribution of p over the training pairs
(`data.preference_probabilities` of the run summaries). The least-squares
slope of t*_family against t*_reference, sum w t_f t_ref / sum w t_ref^2, is
given as `link_ratio_lsq`; the RMS ratio is the geometric mean of that slope
and the reverse one, sum w t_f^2 / sum w t_f t_ref. Near p = 1/2 every link
is (2p - 1)/scale, and the link ratio tends to the Taylor ratio.

Projected link (derived here; gpo.report.projected_link): the population
optimum restricted to the policies the labels can identify,
pi proportional to pi_ref * exp(u*_f(phi)/beta) over the features phi the
labels see. Its KL is a known function of beta per family; the predicted
ratio ("projected_link_ratio") equates two families' KL at the reference
family's best KL, predicted from the gold's mean in each bin of phi
(`projected_link_ratios`). It needs the data summary's `label_features`
(gpo.data.sources.proxy: the pairs' (bin_w, bin_l, mean p, count), the
reference's distribution over the bins and the gold's mean in each); no
such column without them.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from gpo.infra.summary import FINISHED
from gpo.losses.base import rms_ratio
from gpo.report.analysis import per_group
from gpo.report.load import finished
from gpo.report.projected_link import best_kl, beta_at_kl, filled, projected_link

_LINKS: dict = {}  # (loss config, p bytes) -> t*(p): the link is a numerical minimisation


def build_loss(loss_config):
    """The loss a run used, from its resolved Hydra node; None unless it is a GPO family."""
    from gpo.losses import GPOLoss

    if not isinstance(loss_config, dict) or "_target_" not in loss_config:
        return None
    from hydra.utils import instantiate

    try:
        loss = instantiate(loss_config)
    except Exception:  # noqa: BLE001 - a loss this version cannot build has no link, nothing worse
        return None
    return loss if isinstance(loss, GPOLoss) else None


def link(loss_config: dict, p: np.ndarray) -> np.ndarray | None:
    """t*(p) of the family with this config (cached); None if it is not a GPO family."""
    p = np.array(p, dtype=float)  # a writable copy: torch warns on read-only arrays
    key = (json.dumps(loss_config, sort_keys=True, default=str), p.tobytes())
    if key not in _LINKS:
        loss = build_loss(loss_config)
        _LINKS[key] = None if loss is None else np.asarray(loss.link(p), float)
    return _LINKS[key]


def histogram(entries) -> tuple[np.ndarray, np.ndarray]:
    """(p, weights summing to 1) from [[p, count], ...]; empty arrays if none."""
    array = np.asarray(entries if entries else np.zeros((0, 2)), float).reshape(-1, 2)
    array = array[array[:, 1] > 0]
    total = array[:, 1].sum()
    return array[:, 0], (array[:, 1] / total if total > 0 else array[:, 1])


def pooled_histogram(runs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The runs' preference-probability histograms, each normalised, averaged
    (each run weighs the same; identical histograms give back the same one)."""
    hists = [histogram(h) for h in runs["preference_probabilities"] if h is not None and len(h)]
    hists = [h for h in hists if len(h[0])]
    if not hists:
        return np.zeros(0), np.zeros(0)
    p = np.concatenate([h[0] for h in hists])
    w = np.concatenate([h[1] for h in hists]) / len(hists)
    merged = pd.Series(w).groupby(p).sum()
    return merged.index.to_numpy(float), merged.to_numpy(float)


def taylor_ratio(scale_family: float, scale_reference: float) -> float:
    """scale(reference) / scale(family); NaN where a scale is 0 or unknown."""
    if not (scale_family > 0 and scale_reference > 0):
        return np.nan
    return float(scale_reference / scale_family)


def link_ratios(t_family: np.ndarray, t_reference: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """(RMS ratio sqrt(E_w[t_f^2] / E_w[t_ref^2]), least-squares slope sum w t_f t_ref / sum w t_ref^2)."""
    ref_sq = float(np.sum(weights * t_reference**2))
    if not ref_sq > 0:
        return np.nan, np.nan
    return rms_ratio(t_family, t_reference, weights), float(np.sum(weights * t_family * t_reference) / ref_sq)


def _predictions(runs: pd.DataFrame, reference: str) -> pd.DataFrame:
    runs = finished(runs) if (runs["status"] == FINISHED).any() else runs
    p, w = pooled_histogram(runs)
    families = {}
    for loss, group in runs.groupby("loss", sort=True):
        scale = group["regularisation_scale"].dropna()
        config = next((c for c in group["loss_config"] if isinstance(c, dict) and c), None)
        families[loss] = (scale.iloc[0] if len(scale) else np.nan, config)
    ref_scale, ref_config = families.get(reference, (np.nan, None))
    t_ref = link(ref_config, p) if ref_config is not None and len(p) else None
    features = pooled_label_features(runs)
    projected = (projected_link_ratios({loss: config for loss, (_, config) in families.items()}, reference, features)
                 if features is not None else {})
    rows = []
    for loss, (scale, config) in families.items():
        t = link(config, p) if config is not None and len(p) else None
        rms, lsq = link_ratios(t, t_ref, w) if t is not None and t_ref is not None else (np.nan, np.nan)
        rows.append({"loss": loss, "regularisation_scale": scale,
                     "taylor_ratio": taylor_ratio(scale, ref_scale), "link_ratio": rms, "link_ratio_lsq": lsq,
                     "link_rms": float(np.sqrt(np.sum(w * t**2))) if t is not None else np.nan,
                     "projected_link_ratio": float(projected.get(loss, np.nan))})
    columns = ["loss", "regularisation_scale", "taylor_ratio", "link_ratio", "link_ratio_lsq", "link_rms",
               "projected_link_ratio"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame if features is not None else frame.drop(columns="projected_link_ratio")


def predictions(runs: pd.DataFrame, reference: str = "ipo", by: str | None = None) -> pd.DataFrame:
    """Per family (per `by` group if given): Taylor, link and projected-link
    predictions of beta(family) / beta(reference), with `link_rms` =
    sqrt(E_w[t*(p)^2]) (NaN without a preference-probability histogram or a
    GPO family). `projected_link_ratio` only where runs carry `label_features`."""
    result = per_group(runs, by, _predictions, reference)
    result.attrs.update(reference=reference, by=by)
    return result


def projected_link_ratios(loss_configs: dict, reference: str, features: dict, kl: float | None = None) -> dict:
    """{family: beta_family / beta_reference} at which the projected-link policies have equal KL, at
    `kl` (default: the reference family's best KL, predicted from the gold per bin). NaN for a family
    whose config is not a GPO family or whose KL cannot reach `kl`."""
    ref_dist = np.atleast_2d(np.asarray(features["reference"], dtype=float))
    bins = ref_dist.shape[1]
    losses = {name: build_loss(config) for name, config in loss_configs.items()}
    if losses.get(reference) is None:
        return {name: np.nan for name in loss_configs}
    links = {name: projected_link(loss, features["pairs"], bins) for name, loss in losses.items() if loss is not None}
    if kl is None:
        kl = best_kl(links[reference], ref_dist, filled(features["gold"]))
    beta_ref = beta_at_kl(links[reference], kl, ref_dist)
    return {name: (beta_at_kl(links[name], kl, ref_dist) / beta_ref if name in links else np.nan)
            for name in loss_configs}


def pooled_label_features(runs: pd.DataFrame) -> dict | None:
    """The runs' `label_features` (a column, if the run table carries it) pooled: the distinct data
    samples' pair histograms each normalised and averaged, the reference distribution (per prompt) and
    the gold per bin averaged. None without any, or if the runs' bins differ (different proxies: group
    with `by`)."""
    if "label_features" not in runs:
        return None
    distinct = {json.dumps(f["pairs"]): f for f in runs["label_features"] if isinstance(f, dict) and f.get("pairs")}
    found = list(distinct.values())  # each data sample once, however many runs trained on it
    if not found or any(f["centres"] != found[0]["centres"] for f in found):
        return None
    cells = pd.concat([pd.DataFrame(f["pairs"], columns=["chosen", "rejected", "p", "n"]).assign(
        weight=lambda frame: frame["n"] / frame["n"].sum()) for f in found])
    cells["p_weight"] = cells["p"] * cells["weight"]
    pooled = cells.groupby(["chosen", "rejected"])[["p_weight", "weight"]].sum()
    pairs = [[int(a), int(b), row.p_weight / row.weight, row.weight] for (a, b), row in pooled.iterrows()]
    gold = np.nanmean([filled(f["gold"]) for f in found], axis=0)
    return {"pairs": pairs, "centres": found[0]["centres"], "gold": gold.tolist(),
            "reference": np.mean([f["reference"] for f in found], axis=0).tolist()}
