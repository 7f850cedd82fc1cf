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

Projected link (derived here; ../shared/GPO.md "The projected link"): the link
sets each pair's margin on its own, but a policy moves whole responses, and
only the features phi the labels depend on are identified. Restricted to
policies pi_u proportional to pi_ref * exp(u(phi)/beta), the population loss
is minimised by
    u*_f = argmin_u E_pairs[p f(u(phi_w) - u(phi_l)) + (1 - p) f(u(phi_l) - u(phi_w))],
which does not depend on beta (`projected_link`; piecewise-linear f such as
the hinge: a linear programme; smooth f: L-BFGS from u = 0, which for a
non-convex f such as Savage is the optimum reachable from the reference).
KL(pi_{u*/beta} || pi_ref) is then a known function of beta per family, and
the predicted ratio is the one that equates two families' KL at the
reference family's best KL, predicted from the gold's mean in each bin of phi
(`projected_link_ratios`). It needs the data summary's `label_features`
(gpo.data.sources.proxy): the pairs' (bin_w, bin_l, mean p, count), the
reference's distribution over the bins and the gold's mean in each.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linprog, minimize

from gpo.losses.base import rms_ratio
from gpo.report.analysis import per_group
from gpo.report.load import finished
from gpo.summary import FINISHED

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
    return pd.DataFrame(rows, columns=columns)


def predictions(runs: pd.DataFrame, reference: str = "ipo", by: str | None = None) -> pd.DataFrame:
    """Per family (per `by` group if given): Taylor, link and projected-link
    predictions of beta(family) / beta(reference), with `link_rms` =
    sqrt(E_w[t*(p)^2]) (NaN without a preference-probability histogram or a
    GPO family; the projected link also needs a `label_features` column)."""
    result = per_group(runs, by, _predictions, reference)
    result.attrs.update(reference=reference, by=by)
    return result


# -- the projected link ------------------------------------------------------------------------------------

def piecewise_linear_pieces(loss, span: float = 8.0, points: int = 1601, max_pieces: int = 4):
    """[(slope, intercept), ...] if f is the maximum of at most `max_pieces` lines on [-span, span]
    (convex and piecewise linear, as the hinge), else None: such an f is solved exactly as a linear
    programme, any other by gradient descent."""
    grid = np.linspace(-span, span, points)
    with torch.no_grad():
        value = loss.f(torch.as_tensor(grid)).numpy()
    slopes = np.round(np.diff(value) / np.diff(grid), 9)
    distinct, first, counts = np.unique(slopes, return_index=True, return_counts=True)
    lines = [(float(s), float(value[i] - s * grid[i])) for s, i, c in zip(distinct, first, counts) if c >= 3]
    if not lines or len(lines) > max_pieces:
        return None
    fitted = np.max([a * grid + b for a, b in lines], axis=0)
    return lines if np.allclose(fitted, value, atol=1e-9) else None


def projected_link(loss, pairs, bins: int) -> np.ndarray:
    """u*_f over `bins` bins of phi from pairs [[bin_w, bin_l, mean p, count], ...] (see the module
    docstring). Bins no pair reaches take the value interpolated between their neighbours (nearest
    beyond the last). u is defined up to a constant, which no tilt sees: returned with mean 0 over the
    bins the pairs reach."""
    pairs = np.asarray(pairs, dtype=float).reshape(-1, 4)
    a, b, p, n = pairs[:, 0].astype(int), pairs[:, 1].astype(int), pairs[:, 2], pairs[:, 3] / pairs[:, 3].sum()
    pieces = piecewise_linear_pieces(loss)
    u = _solve_linear_programme(pieces, a, b, p, n, bins) if pieces else _solve_smooth(loss, a, b, p, n, bins)
    seen = np.unique(np.concatenate([a, b]))
    u = u - u[seen].mean()
    return np.interp(np.arange(bins), seen, u[seen])


def _solve_smooth(loss, a, b, p, n, bins) -> np.ndarray:
    a_t, b_t, p_t, n_t = (torch.as_tensor(x) for x in (a, b, p, n))

    def objective(u):
        u = torch.tensor(u, dtype=torch.float64, requires_grad=True)
        d = u[a_t] - u[b_t]
        value = torch.sum(n_t * (p_t * loss.f(d) + (1 - p_t) * loss.f(-d)))
        (grad,) = torch.autograd.grad(value, u)
        return value.item(), grad.numpy()

    result = minimize(objective, np.zeros(bins), jac=True, method="L-BFGS-B",
                      options={"maxiter": 20000, "ftol": 1e-15, "gtol": 1e-10})
    return result.x


def _solve_linear_programme(pieces, a, b, p, n, bins) -> np.ndarray:
    """min sum_e n_e (p_e s_e + (1 - p_e) r_e), s_e >= f-piece(u_a - u_b), r_e >= f-piece(u_b - u_a);
    variables [u (bins), s (E), r (E)], u free (the first reached bin pinned at 0)."""
    edges = len(a)
    cost = np.concatenate([np.zeros(bins), n * p, n * (1 - p)])
    rows, rhs = [], []
    for slope, intercept in pieces:  # slope * d + intercept - s <= 0
        for sign, slack in ((1.0, bins), (-1.0, bins + edges)):
            block = np.zeros((edges, bins + 2 * edges))
            block[np.arange(edges), a] += sign * slope
            block[np.arange(edges), b] -= sign * slope
            block[np.arange(edges), slack + np.arange(edges)] = -1.0
            rows.append(block)
            rhs.append(np.full(edges, -intercept))
    bounds = [(None, None)] * bins + [(None, None)] * (2 * edges)
    bounds[int(a[0])] = (0.0, 0.0)
    result = linprog(cost, A_ub=np.vstack(rows), b_ub=np.concatenate(rhs), bounds=bounds, method="highs")
    if result.status != 0:
        raise RuntimeError(f"projected link: the linear programme did not solve ({result.message})")
    return result.x[:bins]


def tilt(u: np.ndarray, beta: float, reference: np.ndarray) -> np.ndarray:
    """pi_{u/beta} over the bins, per prompt: each row of `reference` (a prompt's distribution over the
    bins; one row if 1-D) times exp(u / beta), normalised."""
    reference = np.atleast_2d(reference)
    logits = np.where(reference > 0, np.log(np.where(reference > 0, reference, 1.0)) + u / beta, -np.inf)
    weights = np.exp(logits - logits.max(1, keepdims=True))
    return weights / weights.sum(1, keepdims=True)


def tilt_kl(u: np.ndarray, beta: float, reference: np.ndarray) -> float:
    """KL(pi_{u/beta} || pi_ref), averaged over the prompts (rows of `reference`)."""
    reference = np.atleast_2d(reference)
    pi = tilt(u, beta, reference)
    inside = pi > 0
    return float(np.sum(pi[inside] * np.log(pi[inside] / reference[inside])) / len(reference))


def tilt_gold(u: np.ndarray, beta: float, reference: np.ndarray, gold: np.ndarray) -> float:
    """The gold's mean under pi_{u/beta} (gold per bin), averaged over the prompts."""
    return float(np.mean(tilt(u, beta, reference) @ gold))


def beta_at_kl(u: np.ndarray, kl: float, reference: np.ndarray, low: float = 1e-4, high: float = 1e4) -> float:
    """The beta at which KL(pi_{u/beta} || pi_ref) = kl (it falls as beta grows); NaN if out of reach."""
    if not (tilt_kl(u, high, reference) < kl < tilt_kl(u, low, reference)):
        return np.nan
    for _ in range(100):  # bisection in log beta: the bracket shrinks to ~1e-28 of its log width
        middle = np.sqrt(low * high)
        low, high = (middle, high) if tilt_kl(u, middle, reference) > kl else (low, middle)
    return float(np.sqrt(low * high))


BETA_GRID = np.exp(np.linspace(np.log(1e-3), np.log(1e3), 601))


def best_kl(u: np.ndarray, reference: np.ndarray, gold: np.ndarray) -> float:
    """KL at the beta (on a grid 1e-3..1e3, 2.3% apart) that maximises the gold's mean under pi_{u/beta}."""
    values = [tilt_gold(u, beta, reference, gold) for beta in BETA_GRID]
    return tilt_kl(u, BETA_GRID[int(np.argmax(values))], reference)


def filled(values) -> np.ndarray:
    """Per-bin values with the missing (None/NaN) ones interpolated from the neighbours."""
    values = np.array([np.nan if v is None else v for v in values], dtype=float)
    known = np.flatnonzero(np.isfinite(values))
    return np.interp(np.arange(len(values)), known, values[known])


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
