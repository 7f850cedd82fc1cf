"""The projected link (derived here; shared/GPO.md "The projected link"): what
the labels can identify, and the KL it implies at each beta.

The link sets each pair's margin on its own, but a policy moves whole
responses, and only the features phi the labels depend on are identified.
Restricted to policies pi_u proportional to pi_ref * exp(u(phi)/beta), the
population loss is minimised by
    u*_f = argmin_u E_pairs[p f(u(phi_w) - u(phi_l)) + (1 - p) f(u(phi_l) - u(phi_w))],
which does not depend on beta (`projected_link`; piecewise-linear f such as
the hinge: a linear programme; smooth f: L-BFGS from u = 0, which for a
non-convex f such as Savage is the optimum reachable from the reference).
KL(pi_{u*/beta} || pi_ref) is then a known function of beta per family
(`tilt_kl`, `beta_at_kl`); gpo.report.theory turns it into a predicted
best-beta ratio. Everything here works on bins of phi: `reference` is a
prompt's (or, 2-D, each prompt's) distribution over them, `gold` the gold's
mean in each.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linprog, minimize


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
