"""The GPO loss families: convex (or at least decreasing) scalar functions f.

The whole difference between DPO, IPO, SLiC and the other GPO variants is the
choice of f in  L = E[f(beta * rho)]  (Tang et al. 2024, Table 1). Each family
is a small callable class so that a Hydra config can name it with `_target_`
and the trainer can treat it as an opaque function of t = beta * rho.

Each family also carries f(0), f'(0) and f''(0): the Taylor coefficients that
predict how strongly beta regularises (GPO section 4). `regularisation_scale`
is f''(0)/|f'(0)|, the factor by which beta must be rescaled to match another
family's local regularisation.
"""

import math

import torch
import torch.nn.functional as F


class GPOLoss:
    """A scalar function f applied elementwise to t = beta * rho."""

    f0: float
    df0: float
    d2f0: float

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def regularisation_scale(self) -> float:
        return self.d2f0 / abs(self.df0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Logistic(GPOLoss):
    """DPO: log(1 + exp(-t))."""

    f0, df0, d2f0 = math.log(2.0), -0.5, 0.25

    def __call__(self, t):
        return F.softplus(-t)


class Squared(GPOLoss):
    """IPO: (t - 1)^2."""

    f0, df0, d2f0 = 1.0, -2.0, 2.0

    def __call__(self, t):
        return (t - 1.0) ** 2


class Hinge(GPOLoss):
    """SLiC: max(0, 1 - t). f''(0) = 0: no local regulariser."""

    f0, df0, d2f0 = 1.0, -1.0, 0.0

    def __call__(self, t):
        return F.relu(1.0 - t)


class Exponential(GPOLoss):
    """exp(-t)."""

    f0, df0, d2f0 = 1.0, -1.0, 1.0

    def __call__(self, t):
        return torch.exp(-t)


class TruncatedQuadratic(GPOLoss):
    """max(0, 1 - t)^2."""

    f0, df0, d2f0 = 1.0, -2.0, 2.0

    def __call__(self, t):
        return F.relu(1.0 - t) ** 2


class Savage(GPOLoss):
    """1 / (1 + exp(t))^2 = sigmoid(-t)^2. Decreasing, not convex for t < -log 2."""

    f0, df0, d2f0 = 0.25, -0.25, 0.125

    def __call__(self, t):
        return torch.sigmoid(-t) ** 2
