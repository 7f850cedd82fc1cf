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
class TokenLogps:
    """Per-token log-probabilities of the response tokens, for the axes that
    need more than sums (gpo.losses.rho: LD-DPO, SamPO; gpo.losses.weighting:
    WPO). Rows as in a model batch: the chosen responses, then the rejected
    ones ([2 x pairs, longest response]); `mask` marks real tokens (values
    past a response's end are 0). `policy_log_sum_sq`: log sum_v pi(v|.)^2 at
    each position (WPO's normaliser), when asked for."""

    policy: torch.Tensor
    reference: torch.Tensor | None
    mask: torch.Tensor
    policy_log_sum_sq: torch.Tensor | None = None

    @staticmethod
    def halves(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen rows, rejected rows)."""
        return values.chunk(2)


@dataclass(frozen=True)
class PairLogps:
    """log pi(y|x) summed over response tokens, one entry per pair, and what the
    method's axes (gpo.losses.rho, margin, labels, weighting) add to it.

    `reference_*` is None when the run has no reference model (reference-free
    losses). Lengths count response tokens (EOS included), for length-normalised losses.
    The optional fields are None unless an axis sets them:
      - chosen_score / rejected_score: what rho is the difference of, per
        response, when the rho axis scores responses otherwise than by the
        summed log-ratio (length-normalised, LD-DPO, SamPO, an f-divergence);
      - offset: subtracted from t = beta * rho (R-DPO, ODPO), in units of t;
      - preference: P(chosen preferred), for soft labels: p f(t) + (1-p) f(-t);
      - weight: a per-pair weight on the loss (WPO, beta-DPO's filter);
      - tokens: per-token log-probs, when an axis needs them."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    reference_chosen: torch.Tensor | None
    reference_rejected: torch.Tensor | None
    chosen_length: torch.Tensor
    rejected_length: torch.Tensor
    chosen_score: torch.Tensor | None = None
    rejected_score: torch.Tensor | None = None
    offset: torch.Tensor | None = None
    preference: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    tokens: TokenLogps | None = None

    @classmethod
    def from_batch(cls, policy, reference, batch, tokens: TokenLogps | None = None) -> "PairLogps":
        """From a PairCollator batch and the (chosen, rejected) log-probs of policy and reference."""
        return cls(*policy, *reference, batch["chosen_length"], batch["rejected_length"], tokens=tokens)

    def __len__(self) -> int:
        return len(self.policy_chosen)

    @property
    def chosen_logratio(self) -> torch.Tensor:
        """log pi(y_w|x) - log pi_ref(y_w|x), or the rho axis's score of y_w."""
        return self.policy_chosen - self.reference_chosen if self.chosen_score is None else self.chosen_score

    @property
    def rejected_logratio(self) -> torch.Tensor:
        return self.policy_rejected - self.reference_rejected if self.rejected_score is None else self.rejected_score

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

    def metrics(self, beta) -> dict[str, torch.Tensor]:
        """Per-batch means: implied rewards beta * log-ratio (beta * log-prob for a
        run without a reference), their margin and accuracy, log-probs and, with a
        reference, the offline regulariser E_data[rho^2]/2 that the Taylor
        expansion of every GPO loss exposes (GPO section 4)."""
        with torch.no_grad():
            has_reference = self.reference_chosen is not None
            chosen = beta * (self.chosen_logratio if has_reference else self.policy_chosen)
            rejected = beta * (self.rejected_logratio if has_reference else self.policy_rejected)
            metrics = {
                "rewards/chosen": chosen.mean(),
                "rewards/rejected": rejected.mean(),
                "rewards/margins": (chosen - rejected).mean(),
                "rewards/accuracies": (chosen > rejected).float().mean(),
                "logps/chosen": self.policy_chosen.mean(),
                "logps/rejected": self.policy_rejected.mean(),
            }
            if has_reference:
                metrics["offline_regulariser"] = (self.margin**2).mean() / 2
        return metrics


@dataclass(frozen=True)
class ExampleLogps:
    """Unpaired examples (KTO): log pi(y|x) of each example's completion and of
    a mismatched completion y' (another example's, under this example's prompt)
    whose log-ratio estimates the KL reference point; `desirable` is the
    example's label."""

    policy: torch.Tensor
    reference: torch.Tensor
    length: torch.Tensor
    desirable: torch.Tensor  # bool
    policy_mismatched: torch.Tensor
    reference_mismatched: torch.Tensor
    weight: torch.Tensor | None = None  # as PairLogps.weight (the aggregate reads it)

    @classmethod
    def from_batch(cls, policy, reference, batch, tokens=None) -> "ExampleLogps":
        """From a batch of examples (gpo.data: each row holds an example's
        completion and its mismatched completion, in that order) and the
        (completion, mismatched) log-probs of policy and reference."""
        return cls(policy[0], reference[0], batch["chosen_length"], batch["desirable"], policy[1], reference[1])

    def __len__(self) -> int:
        return len(self.policy)

    @property
    def logratio(self) -> torch.Tensor:
        return self.policy - self.reference

    @property
    def kl_estimate(self) -> torch.Tensor:
        """max(0, mean over the batch of log pi(y'|x) - log pi_ref(y'|x)), no
        gradient: KTO's reference point z_0 (as TRL: detached, clamped at 0)."""
        return (self.policy_mismatched - self.reference_mismatched).mean().detach().clamp(min=0)

    def metrics(self, beta) -> dict[str, torch.Tensor]:
        """As PairLogps.metrics, chosen = desirable examples, rejected = undesirable
        ones (NaN for a label the batch lacks); accuracy: the share of examples
        whose implied reward beta * l has the sign of its label; kl: z_0."""
        with torch.no_grad():
            rewards, good = beta * self.logratio, self.desirable.bool()
            chosen, rejected = rewards[good].mean(), rewards[~good].mean()
            return {
                "rewards/chosen": chosen,
                "rewards/rejected": rejected,
                "rewards/margins": chosen - rejected,
                "rewards/accuracies": ((rewards > 0) == good).float().mean(),
                "logps/chosen": self.policy[good].mean(),
                "logps/rejected": self.policy[~good].mean(),
                "kl": self.kl_estimate,
            }


class PreferenceLoss(torch.nn.Module):
    """loss_fn(logps, beta) -> per-pair loss. What a subclass says about itself
    (the run's compatibility check reads these, never the loss's name):
      - `needs_reference = False`: it never reads the reference log-probs; the
        run then builds no reference model and caches nothing;
      - `inputs`: what the training step builds for it: `PairLogps` (pairs), or
        `ExampleLogps` (unpaired examples: KTO);
      - `normalises_length = True`: it averages log-probs over response tokens
        itself, so a rho axis that rescales the log-ratios would count length twice."""

    needs_reference: bool = True
    inputs: type = PairLogps
    normalises_length: bool = False
    # The loss per pair in words, for the loss table (gpo.losses.table: README, `python src/losses.py`);
    # notation there: t = beta * rho, l_w, l_l the log-ratios, a_w, a_l the mean log-prob per token.
    formula: str | None = None

    def forward(self, logps: PairLogps, beta) -> torch.Tensor:
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

    def forward(self, logps: PairLogps, beta) -> torch.Tensor:
        t = beta * logps.margin
        if logps.offset is not None:  # R-DPO, ODPO (gpo.losses.margin)
            t = t - logps.offset
        if logps.preference is None:
            return self.f(t)
        # Soft labels: the population loss of a pair whose chosen side wins with probability p.
        return logps.preference * self.f(t) + (1 - logps.preference) * self.f(-t)

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
