"""The one interface every preference loss implements.

A loss is a `torch.nn.Module` called as `loss_fn(logps, beta)` on a
`PairLogps` (the summed response log-probabilities of a batch of pairs under
the policy and, unless the loss is reference-free, the reference) and returns
one loss per pair. The training module builds `PairLogps` once per step and
never looks at which loss it holds.

A GPO family (Tang et al. 2024) is a `GPOLoss`: it defines only its scalar
f(t), and the loss is f(beta * rho). Everything the theory needs is derived
from f, not typed by hand: f(0), f'(0), f''(0) by autograd, the local
regularisation scale f''(0)/|f'(0)| and the link t*(p) = argmin_t
p f(t) + (1 - p) f(-t) by a 1-D numerical minimisation.
"""

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch


@dataclass(frozen=True)
class PairLogps:
    """log pi(y|x) summed over response tokens, one entry per pair.

    `reference_*` is None when the run has no reference model (reference-free
    losses). Lengths count response tokens (EOS included), for length-normalised losses."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    reference_chosen: torch.Tensor | None
    reference_rejected: torch.Tensor | None
    chosen_length: torch.Tensor
    rejected_length: torch.Tensor

    @property
    def chosen_logratio(self) -> torch.Tensor:
        """log pi(y_w|x) - log pi_ref(y_w|x)."""
        return self.policy_chosen - self.reference_chosen

    @property
    def rejected_logratio(self) -> torch.Tensor:
        return self.policy_rejected - self.reference_rejected

    @property
    def margin(self) -> torch.Tensor:
        """rho: the policy/reference log-ratio margin between chosen and rejected."""
        return self.chosen_logratio - self.rejected_logratio

    @property
    def policy_chosen_token_mean(self) -> torch.Tensor:
        """Mean log-prob per chosen response token (minus the usual NLL term)."""
        return self.policy_chosen / self.chosen_length

    @property
    def policy_rejected_token_mean(self) -> torch.Tensor:
        return self.policy_rejected / self.rejected_length


class PreferenceLoss(torch.nn.Module):
    """loss_fn(logps, beta) -> per-pair loss. Subclasses set `needs_reference`
    to False when they never read the reference log-probs: the run then builds
    no reference model and caches nothing."""

    needs_reference: bool = True
    # The loss per pair in words, for the loss table (gpo.losses.table: README, `python src/losses.py`);
    # notation there: t = beta * rho, l_w, l_l the log-ratios, a_w, a_l the mean log-prob per token.
    formula: str | None = None

    def forward(self, logps: PairLogps, beta: float) -> torch.Tensor:
        raise NotImplementedError

    def theory(self) -> dict[str, float]:
        """Quantities the sweep report compares across losses (empty if none apply)."""
        return {}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_") and k != "training")


# Where the link is searched: |t*| <= LINK_RANGE covers p in [1e-13, 1 - 1e-13] for the logistic link.
LINK_RANGE = 30.0
LINK_GRID = 6001


class GPOLoss(PreferenceLoss):
    """A GPO family: the loss is f(beta * rho); subclasses define f only."""

    # The link t*(p) in closed form, derived by hand, for the loss table; its numbers come from `link`, which
    # tests/test_losses.py checks against the closed forms. None: none known (the table says "numerical").
    link_formula: str | None = None

    def f(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logps: PairLogps, beta: float) -> torch.Tensor:
        return self.f(beta * logps.margin)

    @cached_property
    def _taylor(self) -> tuple[float, float, float]:
        t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        value = self.f(t)
        (first,) = torch.autograd.grad(value, t, create_graph=True)
        (second,) = torch.autograd.grad(first, t) if first.requires_grad else (torch.zeros(()),)
        return value.item(), first.item(), second.item() + 0.0  # + 0.0: no -0.0 for a flat f

    @property
    def f0(self) -> float:
        return self._taylor[0]

    @property
    def df0(self) -> float:
        return self._taylor[1]

    @property
    def d2f0(self) -> float:
        return self._taylor[2]

    @property
    def regularisation_scale(self) -> float:
        """f''(0)/|f'(0)|: how strongly beta regularises locally (GPO section 4)."""
        return self.d2f0 / abs(self.df0)

    @torch.no_grad()
    def link(self, p) -> np.ndarray:
        """t*(p) = argmin_t p f(t) + (1 - p) f(-t), the implied reward margin
        beta * rho that minimises the population loss of a pair whose first
        response wins with probability p. Numerical: a grid over
        [-LINK_RANGE, LINK_RANGE], then golden-section refinement around the
        grid minimum (to ~1e-7: the objective is flat to second order at its
        minimum; kinks, as the hinge's at t = 1, are found exactly). Where the
        minimum is a whole interval (the hinge at p = 1/2: any t in [-1, 1]),
        its midpoint, which symmetry makes 0 at p = 1/2."""
        p = torch.as_tensor(np.asarray(p, dtype=np.float64)).reshape(-1, 1)
        objective = lambda t: p * self.f(t) + (1 - p) * self.f(-t)  # noqa: E731
        grid = torch.linspace(-LINK_RANGE, LINK_RANGE, LINK_GRID, dtype=torch.float64)
        values = objective(grid.expand(len(p), -1))
        lowest = values.min(dim=1, keepdim=True).values
        flat = values <= lowest + 1e-12 * (1 + lowest.abs())  # grid points at the minimum
        first = flat.float().argmax(dim=1)
        last = LINK_GRID - 1 - flat.flip(1).float().argmax(dim=1)
        step = grid[1] - grid[0]
        lo, hi = grid[first] - step, grid[first] + step
        ratio = (5**0.5 - 1) / 2
        for _ in range(60):  # each step keeps 0.618 of the bracket: 2*step*0.618^60 ~ 3e-14
            a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
            left = objective(a[:, None])[:, 0] <= objective(b[:, None])[:, 0]
            hi, lo = torch.where(left, b, hi), torch.where(left, lo, a)
        refined = (lo + hi) / 2
        interval = last - first > 2  # a flat stretch, not one minimum the grid straddles
        return torch.where(interval, (grid[first] + grid[last]) / 2, refined).numpy()

    def theory(self) -> dict[str, float]:
        return {"f0": self.f0, "df0": self.df0, "d2f0": self.d2f0, "regularisation_scale": self.regularisation_scale}


def link_ratio(loss: GPOLoss, reference: GPOLoss, probabilities, weights=None) -> float:
    """How much larger `loss`'s beta must be than `reference`'s for the two
    to learn margins rho = t*(p)/beta of the same size on data whose pairs
    have preference probabilities p (weighted): sqrt(E[t*_loss(p)^2] /
    E[t*_reference(p)^2]). Matching E[rho^2] matches KL(pi || pi_ref) to
    second order. Derived here (docs/reproduction.md), not the paper's.
    Near p = 1/2 it tends to the Taylor ratio scale(reference)/scale(loss)."""
    p = np.asarray(probabilities, dtype=np.float64)
    w = np.ones_like(p) if weights is None else np.asarray(weights, dtype=np.float64)
    return rms_ratio(loss.link(p), reference.link(p), w)


def rms_ratio(t_loss: np.ndarray, t_reference: np.ndarray, weights: np.ndarray) -> float:
    """sqrt(E_w[t_loss^2] / E_w[t_reference^2]); NaN if the reference's is 0."""
    reference = float(np.sum(weights * np.asarray(t_reference) ** 2))
    return float(np.sqrt(np.sum(weights * np.asarray(t_loss) ** 2) / reference)) if reference > 0 else float("nan")
