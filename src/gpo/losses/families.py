"""The GPO families of Tang et al. 2024 (Table 1): each is only its f(t), t = beta * rho.

f(0), f'(0), f''(0), the regularisation scale and the link t*(p) are derived
from f by `GPOLoss`; tests check them against the closed forms of the paper.
"""

import torch
import torch.nn.functional as F

from gpo.losses.base import GPOLoss

# exp(-t) grows past float range for t < -88 (float32); beyond -EXP_LINEAR_FROM
# it continues along its tangent (value and slope match, still convex and
# decreasing), so a run whose margins blow up reports a finite loss.
EXP_LINEAR_FROM = 50.0


def exp_neg(t: torch.Tensor) -> torch.Tensor:
    """exp(-t), continued linearly for t < -EXP_LINEAR_FROM."""
    inside = torch.exp(-torch.clamp(t, min=-EXP_LINEAR_FROM))
    return torch.where(t >= -EXP_LINEAR_FROM, inside, inside * (1.0 - EXP_LINEAR_FROM - t))


class Logistic(GPOLoss):
    """DPO (Rafailov et al. 2023, arXiv 2305.18290): f(t) = log(1 + exp(-t)).
    Link (closed form): t*(p) = logit(p)."""

    formula = "log(1 + e^-t)"
    link_formula = "logit(p)"

    def f(self, t):
        return F.softplus(-t)


class Squared(GPOLoss):
    """IPO (Azar et al. 2023, arXiv 2310.12036): f(t) = (t - 1)^2; with beta,
    Azar's (rho - 1/(2 tau))^2 times beta^2 at tau = beta/2 (on summed log-probs;
    TRL's length-normalised "ipo" is `IPOLengthNormalised`).
    Link (closed form): t*(p) = 2p - 1."""

    formula = "(t - 1)^2"
    link_formula = "2p - 1"

    def f(self, t):
        return (t - 1.0) ** 2


class Hinge(GPOLoss):
    """SLiC (Zhao et al. 2023, arXiv 2305.10425): f(t) = max(0, 1 - t).
    f''(0) = 0: no local regulariser. Link (closed form): t*(p) = sign(2p - 1)
    (p != 1/2; at p = 1/2 every t in [-1, 1] is a minimiser)."""

    formula = "max(0, 1 - t)"
    link_formula = "sign(2p - 1)"

    def f(self, t):
        return F.relu(1.0 - t)


class Exponential(GPOLoss):
    """f(t) = exp(-t) (GPO, Tang et al. 2024, arXiv 2402.05749), continued
    linearly for t < -50 (`exp_neg`). Link (closed form): t*(p) = logit(p) / 2."""

    formula = "e^-t"
    link_formula = "logit(p)/2"

    def f(self, t):
        return exp_neg(t)


class TruncatedQuadratic(GPOLoss):
    """f(t) = max(0, 1 - t)^2 (GPO, Tang et al. 2024, arXiv 2402.05749).
    Link (closed form): t*(p) = 2p - 1."""

    formula = "max(0, 1 - t)^2"
    link_formula = "2p - 1"

    def f(self, t):
        return F.relu(1.0 - t) ** 2


class Savage(GPOLoss):
    """f(t) = 1 / (1 + exp(t))^2 = sigmoid(-t)^2 (GPO, Tang et al. 2024, arXiv
    2402.05749). Decreasing, not convex for t < -log 2.
    Link (closed form): t*(p) = logit(p)."""

    formula = "1 / (1 + e^t)^2"
    link_formula = "logit(p)"

    def f(self, t):
        return torch.sigmoid(-t) ** 2
