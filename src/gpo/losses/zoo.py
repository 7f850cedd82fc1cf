"""Preference losses that are not a function of t = beta * rho alone, so not GPO
families: they read the two log-ratios separately, length-normalise, drop the
reference, add a likelihood term, or keep state. Each is a `PreferenceLoss`:
loss_fn(logps, beta) -> one loss per pair; `theory()` is empty.

Formulas follow TRL's DPOTrainer / CPOTrainer / ORPOTrainer (loss_type named in
each docstring) and the papers; differences from TRL are stated where they exist.
Notation: l_w = log pi(y_w|x) - log pi_ref(y_w|x), l_l likewise (so rho = l_w - l_l),
a_w = log pi(y_w|x) / |y_w| (mean log-prob per response token), a_l likewise.
"""

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from gpo.infra.errors import InputError
from gpo.losses.base import PairLogps, PreferenceLoss


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate and finite with finite gradients:
    log(-expm1(x)) near 0, log1p(-exp(x)) below -log 2 (Maechler 2012). x is
    first clamped to at most -eps (a log-prob that rounded to 0 would give -inf)."""
    x = x.clamp(max=-torch.finfo(x.dtype).eps)
    cut = -math.log(2.0)
    # each branch sees only inputs that keep it (and its gradient) finite
    near_zero = torch.log(-torch.expm1(x.clamp(min=cut)))
    far = torch.log1p(-torch.exp(x.clamp(max=cut)))
    return torch.where(x > cut, near_zero, far)


class ChiPO(PreferenceLoss):
    """chi-PO, chi^2-preference optimisation (Huang et al. 2024, "Correcting the
    Mythos of KL-Regularization: Direct Alignment without Overoptimization via
    Chi-Squared Preference Optimization", arXiv 2407.13399, Algorithm 1):

        loss = -log sigmoid(clip_{2R}[beta phi(z_w) - beta phi(z_l)]),
        phi(z) = z + log z,  z = pi(y|x) / pi_ref(y|x) (whole-sequence ratio),

    clip_c(x) = max(-c, min(c, x)), R = `reward_bound` (the paper's R_max, a bound
    on the reward). phi's log z is DPO's link; its z adds chi^2 regularisation.
    Not a GPO family: z_w - z_l = exp(l_w) - exp(l_l) is not a function of rho.

    Overflow-safe: beta (z_w - z_l) is computed as beta e^m (e^(l_w - m) - e^(l_l - m)),
    m = max(l_w, l_l), with e^m capped at e^(log(float max)/2); the cap is
    only reached when the unclipped value is far beyond the clip (any nonzero
    difference times e^44 in float32), so the clipped result is exact and the
    gradient is 0 there, as for the exact clip.
    """

    formula = "-log sigmoid(clip_2R[beta (e^l_w + l_w) - beta (e^l_l + l_l)])"

    def __init__(self, reward_bound: float = 10.0):
        super().__init__()
        if not (0 < reward_bound < math.inf):
            raise InputError(f"loss.reward_bound must be positive and finite; got {reward_bound}")
        self.reward_bound = float(reward_bound)

    def forward(self, logps: PairLogps, beta: float) -> torch.Tensor:
        lw, ll = logps.chosen_logratio, logps.rejected_logratio
        m = torch.maximum(lw, ll).detach()
        cap = 0.5 * math.log(torch.finfo(lw.dtype).max)
        chi = beta * torch.exp(m.clamp(max=cap)) * (torch.exp(lw - m) - torch.exp(ll - m))
        logits = chi + beta * (lw - ll)
        bound = 2.0 * self.reward_bound
        return F.softplus(-logits.clamp(-bound, bound))


class RPO(PreferenceLoss):
    """RPO, DPO regularised by the chosen response's likelihood (Liu et al.
    2024, "Provably Mitigating Overoptimization in RLHF: Your SFT Loss is
    Implicitly an Adversarial Regularizer", arXiv 2405.16436):

        loss = log(1 + exp(-beta rho)) - eta * beta * log pi(y_w|x).

    As the official code (github.com/YSLIU627/Regularized-Preference-Optimization,
    alignment-handbook/scripts/rpo_trainer.py: `losses -= policy_chosen_logps *
    self.beta * self.eta`, with summed log-probs; the main paper's "cumulative"
    SFT loss; eta = 0.005 in its recipes). `token_mean: true` uses the mean
    log-prob per chosen token instead (the paper's appendix F / its OpenRLHF
    variant, which weights that mean by a free coefficient; here still eta * beta).
    TRL's rpo_alpha differs: alpha * (token-mean NLL over the batch), no beta.
    """

    formula = "log(1 + e^-t) - eta beta log pi(y_w)"

    def __init__(self, eta: float = 0.005, token_mean: bool = False):
        super().__init__()
        self.eta, self.token_mean = float(eta), bool(token_mean)

    def forward(self, logps, beta):
        chosen = logps.policy_chosen_token_mean if self.token_mean else logps.policy_chosen
        return F.softplus(-beta * logps.margin) - self.eta * beta * chosen


class IPOLengthNormalised(PreferenceLoss):
    """IPO as TRL's DPOTrainer implements loss_type "ipo" (Azar et al. 2023, "A
    General Theoretical Paradigm to Understand Learning from Human
    Preferences", arXiv 2310.12036, eq. 17, with TRL's length normalisation):
    every log-prob (policy and reference) is averaged over its response tokens,

        rho_ln = (l_w / |y_w|) - (l_l / |y_l|),   loss = (rho_ln - 1 / (2 beta))^2.

    Not a GPO family (reads lengths; and in beta, (rho - 1/(2 beta))^2 is not a
    function of beta * rho). The GPO squared family ("ipo") is the summed-log-prob
    version, scaled: (beta rho - 1)^2.
    """

    normalises_length = True
    formula = "(l_w/len(y_w) - l_l/len(y_l) - 1/(2 beta))^2"

    def forward(self, logps, beta):
        rho_ln = logps.chosen_logratio / logps.chosen_length - logps.rejected_logratio / logps.rejected_length
        return (rho_ln - 1.0 / (2.0 * beta)) ** 2


class SimPO(PreferenceLoss):
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a
    Reference-Free Reward", arXiv 2405.14734, eq. 6; TRL CPOTrainer
    loss_type "simpo"): reference-free, length-normalised, with a target margin:

        loss = -log sigmoid(beta (a_w - a_l) - gamma).

    gamma = 0.5 is TRL's CPOConfig.simpo_gamma default (the paper tunes beta in
    2-10 and gamma/beta in 0.3-1.6, with much larger beta than DPO's).
    """

    formula = "-log sigmoid(beta (a_w - a_l) - gamma)"

    needs_reference = False
    normalises_length = True

    def __init__(self, gamma: float = 0.5):
        super().__init__()
        self.gamma = float(gamma)

    def forward(self, logps, beta):
        margin = logps.policy_chosen_token_mean - logps.policy_rejected_token_mean
        return F.softplus(-(beta * margin - self.gamma))


class NCA(PreferenceLoss):
    """NCA, pairwise (Chen et al. 2024, "Noise Contrastive Alignment of Language
    Models with Explicit Rewards", arXiv 2402.05369; TRL loss_type "nca_pair"):

        loss = -log sigmoid(beta l_w) - 1/2 log sigmoid(-beta l_w) - 1/2 log sigmoid(-beta l_l).
    """

    formula = "-log sigmoid(beta l_w) - 1/2 log sigmoid(-beta l_w) - 1/2 log sigmoid(-beta l_l)"

    def forward(self, logps, beta):
        rw, rl = beta * logps.chosen_logratio, beta * logps.rejected_logratio
        return F.softplus(-rw) + 0.5 * F.softplus(rw) + 0.5 * F.softplus(rl)


class BCO(PreferenceLoss):
    """BCO, pairwise (Jung et al. 2024, "Binary Classifier Optimization for
    Large Language Model Alignment", arXiv 2404.04656; TRL loss_type "bco_pair"):

        loss = -log sigmoid(beta l_w - delta) - log sigmoid(-(beta l_l - delta)),

    delta = running mean of the implied rewards, as TRL: each training call
    first folds the batch mean of [beta l_w, beta l_l] into delta (a cumulative
    mean of batch means, each batch counting once), then uses it. delta and its
    count are registered buffers, so they land in checkpoints; in eval mode
    delta is read, never updated. (TRL's RunningMoments gathers the batch mean
    over processes under DDP; here each process keeps its own, and DDP's buffer
    broadcast makes rank 0's win.)
    """

    formula = "-log sigmoid(beta l_w - delta) - log sigmoid(delta - beta l_l), delta = running mean reward"

    def __init__(self):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_count", torch.zeros((), dtype=torch.long))  # integer: .to(bf16) leaves it exact

    @torch.no_grad()
    def _update(self, batch_mean: torch.Tensor) -> None:
        self.running_count += 1
        self.running_mean += (batch_mean.to(self.running_mean.dtype) - self.running_mean) / self.running_count

    def forward(self, logps, beta):
        rw, rl = beta * logps.chosen_logratio, beta * logps.rejected_logratio
        if self.training:
            self._update(torch.cat([rw, rl]).detach().mean())
        delta = self.running_mean.to(rw.dtype)
        return F.softplus(-(rw - delta)) + F.softplus(rl - delta)


class APOZero(PreferenceLoss):
    """APO-zero (D'Oosterlinck et al. 2024, "Anchored Preference Optimization
    and Contrastive Revisions", arXiv 2408.06266, eq. 7; TRL loss_type
    "apo_zero"), for chosen responses better than the model's own:

        loss = (1 - sigmoid(beta l_w)) + sigmoid(beta l_l).
    """

    formula = "1 - sigmoid(beta l_w) + sigmoid(beta l_l)"

    def forward(self, logps, beta):
        return torch.sigmoid(-beta * logps.chosen_logratio) + torch.sigmoid(beta * logps.rejected_logratio)


class APODown(PreferenceLoss):
    """APO-down (D'Oosterlinck et al. 2024, arXiv 2408.06266, eq. 8; TRL
    loss_type "apo_down"), for chosen responses worse than the model's own:

        loss = sigmoid(beta l_w) + (1 - sigmoid(beta rho)).
    """

    formula = "sigmoid(beta l_w) + 1 - sigmoid(t)"

    def forward(self, logps, beta):
        return torch.sigmoid(beta * logps.chosen_logratio) + torch.sigmoid(-beta * logps.margin)


class SPPOHard(PreferenceLoss):
    """SPPO with hard labels (Wu et al. 2024, "Self-Play Preference Optimization
    for Language Model Alignment", arXiv 2405.00675, eq. 4.7 with P(y_w > y_l)
    set to 1 for the winner and 0 for the loser; TRL loss_type "sppo_hard"):

        loss = (l_w - 1 / (2 beta))^2 + (l_l + 1 / (2 beta))^2.
    """

    formula = "(l_w - 1/(2 beta))^2 + (l_l + 1/(2 beta))^2"

    def forward(self, logps, beta):
        half = 0.5 / beta
        return (logps.chosen_logratio - half) ** 2 + (logps.rejected_logratio + half) ** 2


class ORPO(PreferenceLoss):
    """ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without
    Reference Model", arXiv 2403.07691, eqs. 6-7; TRL ORPOTrainer): reference-free,

        loss = -a_w - beta log sigmoid(log odds(y_w) - log odds(y_l)),
        log odds(y) = a - log(1 - exp(a)),  a = mean log-prob per response token,

    beta is the paper's lambda (TRL's ORPOConfig.beta, default 0.1). The NLL term
    is the chosen response's mean per-token NLL per pair (TRL: the token-mean
    cross-entropy over the whole batch's chosen tokens). log(1 - exp(a)) is
    evaluated by `log1mexp`, finite for any a < 0.
    """

    formula = "-a_w - beta log sigmoid(log odds_w - log odds_l), log odds = a - log(1 - e^a)"

    needs_reference = False
    normalises_length = True

    def forward(self, logps, beta):
        aw, al = logps.policy_chosen_token_mean, logps.policy_rejected_token_mean
        log_odds = (aw - al) - (log1mexp(aw) - log1mexp(al))
        return -aw + beta * F.softplus(-log_odds)


class SFT(PreferenceLoss):
    """Supervised fine-tuning on the chosen response only (a baseline; TRL's
    loss_type "sft", e.g. in MPO): loss = -a_w, the mean per-token NLL of the
    chosen response. Reference-free; beta is unused.
    (TRL averages over all chosen tokens in the batch; here per pair, then the
    module's mean over pairs.)"""

    formula = "-a_w"

    needs_reference = False

    def forward(self, logps, beta):
        return -logps.policy_chosen_token_mean


class WeightedSum(PreferenceLoss):
    """A weighted sum of losses, per pair: loss = sum_i w_i loss_i (TRL's
    loss_type list + loss_weights, e.g. MPO: Wang et al. 2024, "Enhancing the
    Reasoning Ability of Multimodal Large Language Models via Mixed Preference
    Optimization", arXiv 2411.10442: sigmoid 0.8 + bco_pair 0.2 + sft 1.0).

    Built from the config alone: `terms` is a list of {loss: <a loss>, weight: w}
    (Hydra instantiates each `loss`). It needs the reference iff any term does.
    Terms are submodules, so stateful terms (BCO) are saved and follow train/eval.
    """

    formula = "sum_i w_i loss_i"

    def __init__(self, terms: Sequence[Mapping]):
        super().__init__()
        if not terms:
            raise InputError("loss.terms: WeightedSum needs at least one {loss, weight} term")
        losses, weights = [], []
        for term in terms:
            loss, weight = term["loss"], float(term.get("weight", 1.0))
            if not isinstance(loss, PreferenceLoss):
                raise InputError(f"loss.terms: each term's loss must be a preference loss; got {type(loss).__name__}")
            losses.append(loss)
            weights.append(weight)
        self.terms = torch.nn.ModuleList(losses)
        self.weights = weights
        self.needs_reference = any(loss.needs_reference for loss in losses)

    def forward(self, logps, beta):
        return sum(w * loss(logps, beta) for w, loss in zip(self.weights, self.terms))
