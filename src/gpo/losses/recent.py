"""Preference losses of 2024-25 that are not GPO families (each reads more than
t = beta * rho): DPO-Positive, Cal-DPO, CPO, SimPER and AlphaPO. Same interface
as zoo.py: loss_fn(logps, beta) -> one loss per pair.

Notation as zoo.py: l_w = log pi(y_w|x) - log pi_ref(y_w|x), l_l likewise,
rho = l_w - l_l; a_w = log pi(y_w|x) / |y_w| (mean log-prob per token), a_l likewise.
"""

import torch
import torch.nn.functional as F

from gpo.infra.errors import InputError
from gpo.losses.base import GPOLoss, PreferenceLoss
from gpo.losses.families import Logistic, exp_neg


class DPOP(PreferenceLoss):
    """DPO-Positive (Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference
    Optimisation with DPO-Positive", arXiv 2402.13228, eq. 3; as the SamPO
    repository implements it, github.com/LuJunru/SamPO dpo_trainer.py `dpop`):

        loss = f(beta * (rho - penalty * max(0, -l_w))),

    a penalty whenever the chosen response's log-probability falls below the
    reference's (likelihood displacement). The paper's f is the logistic
    (DPO) with penalty lambda = 50; `family` takes any GPO family's f."""

    def __init__(self, penalty: float = 50.0, family: GPOLoss | None = None):
        super().__init__()
        if not penalty >= 0:
            raise InputError(f"loss.penalty must be >= 0, got {penalty}")
        if family is not None and not isinstance(family, GPOLoss):
            raise InputError(f"loss.family must be a GPO family (a GPOLoss), got {type(family).__name__}")
        self.penalty, self.family = float(penalty), family or Logistic()

    def forward(self, logps, beta):
        return self.family.f(beta * (logps.margin - self.penalty * F.relu(-logps.chosen_logratio)))


class CalDPO(PreferenceLoss):
    """Cal-DPO (Xiao et al. 2024, "Cal-DPO: Calibrated Direct Preference
    Optimization for Language Model Alignment", arXiv 2412.14516; official code
    github.com/tengxiao1/Cal-DPO, scripts/dpo_trainer.py, loss_type "Cal-DPO"):

        loss = -log sigmoid(l_w - l_l) + 1/2 [(l_w - 1/(2 beta))^2 + (l_l + 1/(2 beta))^2],

    a contrastive term on the unscaled log-ratios plus a calibration term that
    pins the implied rewards to +-1/(2 beta), so the chosen log-ratio is pushed
    up, not only the margin. As the official code (which writes the squares as
    batch-mean MSE added to every pair: the same mean)."""

    def forward(self, logps, beta):
        lw, ll = logps.chosen_logratio, logps.rejected_logratio
        target = 1.0 / (2.0 * beta)
        return F.softplus(-(lw - ll)) + 0.5 * ((lw - target) ** 2 + (ll + target) ** 2)


class CPO(PreferenceLoss):
    """CPO (Xu et al. 2024, "Contrastive Preference Optimization: Pushing the
    Boundaries of LLM Performance in Machine Translation", arXiv 2401.08417,
    eq. 3; TRL CPOTrainer loss_type "sigmoid"): reference-free,

        loss = -log sigmoid(beta (log pi(y_w|x) - log pi(y_l|x))) - alpha * a_w,

    summed log-probs in the preference term, alpha = TRL's cpo_alpha (1.0).
    The NLL term is the chosen response's mean per-token NLL per pair (TRL:
    the token mean over the batch's chosen tokens), as `orpo` and `sft` here."""

    needs_reference = False

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, logps, beta):
        return F.softplus(-beta * (logps.policy_chosen - logps.policy_rejected)) - self.alpha * (
            logps.policy_chosen_token_mean)


class SimPER(PreferenceLoss):
    """SimPER (Xiao et al. 2025, "SimPER: A Minimalist Approach to Preference
    Alignment without Hyperparameters", arXiv 2502.00883, eq. 6; official code
    github.com/tengxiao1/SimPER): reference-free and hyperparameter-free
    (beta is unused), the inverse perplexities of the two responses:

        loss = -exp(a_w) + exp(a_l)."""

    needs_reference = False
    normalises_length = True

    def forward(self, logps, beta):
        return torch.exp(logps.policy_rejected_token_mean) - torch.exp(logps.policy_chosen_token_mean)


class AlphaPO(PreferenceLoss):
    """AlphaPO (Gupta et al. 2025, "AlphaPO: Reward Shape Matters for LLM
    Alignment", arXiv 2501.03884; no official code: TRL's CPOTrainer with
    loss_type "alphapo", i.e. "simpo" with `alpha` and cpo_alpha = 0):
    reference-free, SimPO with a reshaped reward,

        r(y) = (1 - exp(-alpha a(y))) / alpha = (1 - pi(y|x)^(-alpha/|y|)) / alpha,
        loss = -log sigmoid(beta (r_w - r_l) - gamma).

    alpha -> 0 is SimPO (r = a). e^-x is continued linearly past x = 50
    (gpo.losses.families.exp_neg), so extreme log-probs stay finite (TRL's
    pow overflows to inf there). alpha = 0.25 is this project's default (the
    paper tunes alpha per model); gamma = 0.5 as `simpo`."""

    needs_reference = False
    normalises_length = True

    def __init__(self, alpha: float = 0.25, gamma: float = 0.5):
        super().__init__()
        if alpha == 0:
            raise InputError("loss.alpha = 0 is SimPO: use loss=simpo")
        self.alpha, self.gamma = float(alpha), float(gamma)

    def reward(self, mean_logp):
        # e^-x continued linearly past x = 50 (exp_neg): finite for a policy far from its data; exact elsewhere.
        return (1.0 - exp_neg(self.alpha * mean_logp)) / self.alpha

    def forward(self, logps, beta):
        margin = self.reward(logps.policy_chosen_token_mean) - self.reward(logps.policy_rejected_token_mean)
        return F.softplus(-(beta * margin - self.gamma))
