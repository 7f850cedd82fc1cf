"""The rho axis (conf/rho): how rho comes from the responses' token log-probs.

rho = s(y_w) - s(y_l), s a response's score under policy and reference:
  - sum (default): the summed log-ratio log pi(y|x) - log pi_ref(y|x), GPO's and DPO's rho;
  - mean: the log-ratio averaged over the response's tokens (length-normalised
    DPO: TRL `sigmoid_norm`, Tulu 3);
  - ld: LD-DPO, the tokens past the shorter response's length weighted by alpha;
  - sampo: SamPO, the longer response's token log-ratios down-sampled to the shorter's length;
  - fdiv: f-DPO, s = f'(pi/pi_ref) for an f-divergence (reverse KL is DPO).

Every option but `sum` acts on the policy/reference log-ratios: a
reference-free loss, or one that averages over tokens itself, is refused
(`check`). ld and sampo read per-token log-probs (`needs`); the cached
reference stores them once per data set (gpo.reference.references), whatever
the option's hyperparameter.
"""

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from gpo.infra.errors import InputError
from gpo.losses.axes import Axis, needs_gpo_family, needs_pairs, refuse
from gpo.losses.families import exp_neg


class Rho(Axis):
    group = "rho"

    def forward(self, logps, batch, step: int = 0):
        raise NotImplementedError

    def check(self, run):
        needs_pairs(self, run)
        loss = run.names.get("loss")
        refuse(not run.loss.needs_reference, f"{self.name(run)} rescores the policy/reference log-ratios; "
                                             f"loss={loss} is reference-free (it scores responses its own way)")
        refuse(run.loss.normalises_length, f"{self.name(run)} rescores the log-ratios; loss={loss} averages them "
                                           "over tokens itself (use rho=sum with it)")

    @staticmethod
    def scored(logps, chosen, rejected):
        return replace(logps, chosen_score=chosen, rejected_score=rejected)


class Sum(Rho):
    """rho=sum: the summed log-ratio (the default; nothing to do)."""

    neutral = True

    def forward(self, logps, batch, step=0):
        return logps

    def check(self, run):
        pass


class Mean(Rho):
    """rho=mean: s(y) = [log pi(y|x) - log pi_ref(y|x)] / |y| (TRL `sigmoid_norm`:
    scores divided by the number of response tokens)."""

    def forward(self, logps, batch, step=0):
        return self.scored(logps, (logps.policy_chosen - logps.reference_chosen) / logps.chosen_length,
                           (logps.policy_rejected - logps.reference_rejected) / logps.rejected_length)


def token_logratios(logps):
    """Per-token log-ratios, ([pairs, L] chosen, [pairs, L] rejected), 0 past each response's end."""
    tokens = logps.tokens
    return tokens.halves(tokens.policy - tokens.reference)


class LD(Rho):
    """rho=ld, LD-DPO (Liu et al. 2024, "Length Desensitization in Direct
    Preference Optimization", arXiv 2409.06411; TRL `ld_alpha`): each response's
    log-ratio summed over its first l_p = min(|y_w|, |y_l|) tokens, plus alpha
    times the rest. alpha = 1 is DPO; alpha = 0 drops the verbose tail. Policy
    and reference alike (as TRL), so alpha applies to the log-ratio."""

    needs = frozenset({"policy_tokens", "reference_tokens"})

    def __init__(self, alpha: float = 0.5):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise InputError(f"rho.alpha must lie in [0, 1], got {alpha}")
        self.alpha = float(alpha)

    def forward(self, logps, batch, step=0):
        chosen, rejected = token_logratios(logps)
        shared = torch.minimum(logps.chosen_length, logps.rejected_length)
        front = torch.arange(chosen.shape[1], device=chosen.device)[None, :] < shared[:, None]

        def score(ratios):
            return (ratios * front).sum(-1) + self.alpha * (ratios * ~front).sum(-1)

        return self.scored(logps, score(chosen), score(rejected))


class SamPO(Rho):
    """rho=sampo, SamPO (Lu et al. 2024, "Eliminating Biased Length Reliance of
    Direct Preference Optimization via Down-Sampled KL Divergence", arXiv
    2406.10957; official code github.com/LuJunru/SamPO, dpo_trainer.py): for each
    pair, min(|y_w|, |y_l|) token positions of the longer response drawn
    uniformly without replacement (the shorter keeps all of its own), and each
    response scored by the sum of its token log-ratios at those positions.

    Difference from the official code, which draws the positions separately
    for the policy's and for the reference's forward pass: here one draw per
    response serves both, so the log-ratio is taken token by token as the
    paper's down-sampled KL divergence writes it (same expectation, less
    noise). Draws come from a generator seeded by (seed, step): reproducible,
    a resumed run draws the same, and the global RNG is left alone."""

    needs = frozenset({"policy_tokens", "reference_tokens"})

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = int(seed)

    def forward(self, logps, batch, step=0):
        chosen, rejected = token_logratios(logps)
        keep = torch.minimum(logps.chosen_length, logps.rejected_length)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))

        def score(ratios, lengths):
            positions = torch.arange(ratios.shape[1])[None, :]
            keys = torch.rand(ratios.shape, generator=generator, dtype=torch.float64)
            keys = keys.masked_fill(positions >= lengths.cpu()[:, None], math.inf)  # padding sorts last
            rank = keys.argsort(-1).argsort(-1).to(ratios.device)  # each position's place in a random order
            return (ratios * (rank < keep[:, None])).sum(-1)

        return self.scored(logps, score(chosen, logps.chosen_length), score(rejected, logps.rejected_length))


# s(y) as a function of the log-ratio r = log pi(y|x) - log pi_ref(y|x) (and alpha), by divergence.
SCORES = {
    "reverse_kl": lambda r, alpha: r,
    "forward_kl": lambda r, alpha: 1.0 - exp_neg(r),
    "js_divergence": lambda r, alpha: math.log(2.0) + F.logsigmoid(r),
    "alpha_divergence": lambda r, alpha: (1.0 - exp_neg(alpha * r)) / alpha,
}


class FDivergence(Rho):
    """rho=fdiv, f-DPO (Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct
    Preference Optimization with Diverse Divergence Constraints", arXiv
    2309.16240; TRL `f_divergence_type`): s(y) = f'(u), u = pi(y|x)/pi_ref(y|x),
    for the f of the divergence that regularises the policy; with l = log u:

        reverse_kl        f'(u) = log u + 1           s = l                     (DPO)
        forward_kl        f'(u) = 1 - 1/u             s = 1 - e^-l
        js_divergence     f'(u) = log(2u / (1 + u))   s = log 2 + log sigmoid(l)
        alpha_divergence  f'(u) = (1 - u^-alpha)/alpha  s = (1 - e^(-alpha l)) / alpha

    (constants cancel in rho; the scores match TRL's). alpha in (0, 1): the
    paper's convention, reverse KL as alpha -> 0, forward KL at 1; TRL's
    `f_alpha_divergence_coef` is 1 - alpha (the two agree at the default 0.5).
    e^-x is continued linearly past x = 50 (gpo.losses.families.exp_neg) so a
    run whose policy drifts far stays finite (TRL clamps the exponent instead).
    Only GPO families take it (TRL's list of losses is the same set)."""

    def __init__(self, divergence: str = "js_divergence", alpha: float = 0.5):
        super().__init__()
        if divergence not in SCORES:
            raise InputError(f"rho.divergence must be one of {', '.join(SCORES)}, got {divergence!r}")
        if not 0.0 < alpha <= 1.0:
            raise InputError(f"rho.alpha must lie in (0, 1], got {alpha}")
        self.divergence, self.alpha = divergence, float(alpha)

    def score(self, logratio):
        return SCORES[self.divergence](logratio, self.alpha)

    def forward(self, logps, batch, step=0):
        return self.scored(logps, self.score(logps.policy_chosen - logps.reference_chosen),
                           self.score(logps.policy_rejected - logps.reference_rejected))

    def check(self, run):
        super().check(run)
        needs_gpo_family(self, run, "changes the score whose difference is rho")
