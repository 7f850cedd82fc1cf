"""Published preference losses that are GPO families: each is a function of
t = beta * rho alone, so each is only its f(t) (a `GPOLoss`), and f(0), f'(0),
f''(0), the regularisation scale and the link come from `GPOLoss` like those of
the paper's six families (families.py).

Closed forms in the docstrings were derived here from f; tests check the code
against them.
"""

import math

import torch
import torch.nn.functional as F

from gpo.infra.errors import InputError
from gpo.losses.base import GPOLoss
from gpo.losses.families import exp_neg


def _label_smoothing(eps: float, allow_zero: bool) -> float:
    eps = float(eps)
    if not ((eps >= 0.0 if allow_zero else eps > 0.0) and eps < 0.5):
        raise InputError(f"loss.eps must lie in {'[0' if allow_zero else '(0'}, 0.5); got {eps}")
    return eps


class Exo(GPOLoss):
    """EXO, pairwise (Ji et al. 2024, "Towards Efficient Exact Optimization of
    Language Model Alignment", arXiv 2402.00856, eq. 16; TRL loss_type "exo_pair").

    With q_w = sigmoid(t), q_l = sigmoid(-t) and label smoothing eps:
        f(t) = q_w (log q_w - log(1 - eps)) + q_l (log q_l - log eps),
    the KL divergence KL(Bern(q_w) || Bern(1 - eps)).

    f'(0) = -log((1 - eps)/eps) / 4, f''(0) = 1/4, scale = 1 / log((1 - eps)/eps).
    Link (closed form): t*(p) = (2p - 1) log((1 - eps)/eps), bounded by
    |t*| < log((1-eps)/eps) (6.9 at eps = 1e-3), like IPO's 2p - 1 but wider.
    """

    formula = "q_w (log q_w - log(1-eps)) + q_l (log q_l - log eps), q_w = sigmoid(t) = 1 - q_l"
    link_formula = "(2p - 1) log((1-eps)/eps)"

    def __init__(self, eps: float = 1e-3):
        super().__init__()
        self.eps = _label_smoothing(eps, allow_zero=False)

    def f(self, t):
        # logsigmoid is finite for any float t and sigmoid * logsigmoid -> 0 at
        # the tails (0 * finite), so no inf/NaN even at |t| = 1e4.
        log_one_minus_eps, log_eps = math.log1p(-self.eps), math.log(self.eps)
        return torch.sigmoid(t) * (F.logsigmoid(t) - log_one_minus_eps) + torch.sigmoid(-t) * (
            F.logsigmoid(-t) - log_eps
        )


class ConservativeLogistic(GPOLoss):
    """cDPO, conservative DPO (Mitchell 2023, "A note on DPO with noisy
    preferences", https://ericmitchell.ai/cdpo.pdf; TRL loss_type "sigmoid" with
    label_smoothing = eps): the logistic loss against labels flipped with
    probability eps,
        f(t) = (1 - eps) log(1 + exp(-t)) + eps log(1 + exp(t)).

    f'(0) = -(1 - 2 eps)/2, f''(0) = 1/4, scale = 1 / (2 (1 - 2 eps)).
    Link (closed form): t*(p) = logit(eps + (1 - 2 eps) p), bounded by
    |t*| <= logit(1 - eps) (2.2 at eps = 0.1): cDPO never asks for an
    infinite margin.
    """

    formula = "(1-eps) log(1 + e^-t) + eps log(1 + e^t)"
    link_formula = "logit(eps + (1 - 2 eps) p)"

    def __init__(self, eps: float = 0.1):
        super().__init__()
        self.eps = _label_smoothing(eps, allow_zero=True)

    def f(self, t):
        return (1.0 - self.eps) * F.softplus(-t) + self.eps * F.softplus(t)


class RobustLogistic(GPOLoss):
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO: Aligning
    Language Models with Noisy Feedback", arXiv 2403.00409; TRL loss_type
    "robust"): an unbiased estimate of the clean logistic loss when labels are
    flipped with probability eps,
        f(t) = [(1 - eps) log(1 + exp(-t)) - eps log(1 + exp(t))] / (1 - 2 eps).

    Convex (f'' = sigmoid'(t)) and decreasing, but unbounded below: f(t) ~
    -eps t / (1 - 2 eps) as t -> +inf.
    f'(0) = -1 / (2 (1 - 2 eps)), f''(0) = 1/4, scale = (1 - 2 eps)/2.
    Link (closed form): t*(p) = logit((p - eps)/(1 - 2 eps)) for eps < p < 1 - eps
    (it undoes the assumed label noise, so it is wider than the logistic link);
    -inf / +inf outside that range.
    """

    formula = "[(1-eps) log(1 + e^-t) - eps log(1 + e^t)] / (1 - 2 eps)"
    link_formula = "logit((p - eps)/(1 - 2 eps))"

    def __init__(self, eps: float = 0.1):
        super().__init__()
        self.eps = _label_smoothing(eps, allow_zero=True)

    def f(self, t):
        return ((1.0 - self.eps) * F.softplus(-t) - self.eps * F.softplus(t)) / (1.0 - 2.0 * self.eps)


class DiscoPOP(GPOLoss):
    """DiscoPOP / LRML, log-ratio modulated loss (Chris Lu et al. 2024,
    "Discovering Preference Optimization Algorithms with and for Large Language
    Models", arXiv 2406.08414, eq. 5; TRL loss_type "discopop"):
        f(t) = (1 - s) log(1 + exp(-t)) + s exp(-t),  s = sigmoid(t / tau),
    a blend of the logistic and exponential losses (tau = 0.05, the paper's and
    TRL's default).

    Not convex, and not monotone near 0: f'(0) = -3/4 + (1 - log 2)/(4 tau)
    (+0.78 at tau = 0.05) and f''(0) = 5/8 - 1/(4 tau) (-4.375), so the Taylor
    "scale" f''(0)/|f'(0)| is negative and has no regularisation meaning here.
    No closed-form link; `link` finds the global minimiser numerically.

    Overflow-safe: s exp(-t) is evaluated as exp(-t + logsigmoid(t / tau)),
    whose exponent stays bounded for tau < 1 (TRL's exp(-t) overflows to inf
    and gives inf * 0 = NaN for t < -88 in float32).
    """

    formula = "(1-s) log(1 + e^-t) + s e^-t, s = sigmoid(t/tau)"

    def __init__(self, tau: float = 0.05):
        super().__init__()
        if not tau > 0:
            raise InputError(f"loss.tau must be > 0; got {tau}")
        self.tau = float(tau)

    def f(self, t):
        s = torch.sigmoid(t / self.tau)
        # exp_neg(x) = exp(-x), continued linearly for x < -50 (only reachable for tau >= 1).
        return (1.0 - s) * F.softplus(-t) + exp_neg(t - F.logsigmoid(t / self.tau))
