"""The aggregate axis (conf/aggregate): the batch's loss from its pairs.

    loss = aggregate(loss_fn, logps, beta)

  - mean (default): the mean of loss_fn(logps, beta), each pair times its
    `weight` when an axis set one (WPO, beta-DPO's filter);
  - aot / aot_unpaired: AOT's quantile matching of the batch's margins;
  - dr_dpo: Dr.DPO's log-mean-exp, which down-weights pairs with large losses.
"""

import math

import torch

from gpo.infra.errors import InputError
from gpo.losses.axes import Axis, needs_gpo_family, needs_pairs, refuse


class Aggregate(Axis):
    group = "aggregate"

    def forward(self, loss_fn, logps, beta) -> torch.Tensor:
        raise NotImplementedError


class Mean(Aggregate):
    """aggregate=mean: mean over pairs of weight * loss (weight 1 unless an axis set one)."""

    neutral = True

    def forward(self, loss_fn, logps, beta):
        losses = loss_fn(logps, beta)
        return (losses if logps.weight is None else losses * logps.weight).mean()


class AOT(Aggregate):
    """aggregate=aot, AOT (Melnyk et al. 2024, "Distributional Preference
    Alignment of LLMs via Optimal Transport", arXiv 2406.05882; TRL loss_type
    "aot" and "aot_unpaired"): the policy's margins must dominate the
    reference's in distribution, not pair by pair. The batch's values are
    sorted and matched quantile to quantile, and the GPO family's f is applied
    to beta times their differences, averaged:

      paired (aot):            sort(log pi(y_w) - log pi(y_l)) - sort(log pi_ref(y_w) - log pi_ref(y_l))
      unpaired (aot_unpaired): sort(s(y_w)) - sort(s(y_l)),  s the log-ratio (or the rho axis's score)

    TRL's is the logistic f with label smoothing: loss=dpo or loss=cdpo here,
    and every other GPO family too. The batch must be a sample of the data:
    length-grouped batches would match the quantiles of one length band only,
    so the option turns `data.group_by_length` off (conf/aggregate/aot.yaml)
    and the check refuses it on. Per-pair quantities (offsets, soft labels,
    weights) have no meaning once the pairs are sorted apart: refused too."""

    def __init__(self, paired: bool = True):
        super().__init__()
        self.paired = bool(paired)

    def forward(self, loss_fn, logps, beta):
        if self.paired:
            policy = (logps.policy_chosen - logps.policy_rejected).sort().values
            reference = (logps.reference_chosen - logps.reference_rejected).sort().values
            delta = policy - reference
        else:
            delta = logps.chosen_logratio.sort().values - logps.rejected_logratio.sort().values
        return loss_fn.f(beta * delta).mean()

    def check(self, run):
        needs_pairs(self, run)
        needs_gpo_family(self, run, "applies f to sorted margins")
        refuse(not run.loss.needs_reference, f"{self.name(run)} compares the policy's margins with the "
                                             "reference's; the loss is reference-free")
        per_pair = [axis for axis in (run.margin, run.labels) if not axis.neutral]
        for axis in per_pair + [axis for axis in (run.weighting, run.beta_schedule) if axis.weighs_pairs]:
            refuse(True, f"{self.name(run)} sorts the pairs apart, so the per-pair {axis.name(run)} has nothing "
                         "to apply to")
        refuse(self.paired and not run.rho.neutral,
               f"{self.name(run)} sorts the policy's and the reference's margins separately, so there is no "
               f"per-response score for {run.rho.name(run)} to change (aggregate=aot_unpaired takes it)")
        data = run.datamodule
        refuse(data.shuffle and data.group_by_length,
               f"{self.name(run)} matches the batch's quantiles to the data's, but data.group_by_length=true makes "
               "batches of pairs of similar length, which biases them: set data.group_by_length=false")


class DrDPO(Aggregate):
    """aggregate=dr_dpo, Dr.DPO (Wu et al. 2024, "Towards Robust Alignment of
    Language Models: Distributionally Robustifying Direct Preference
    Optimization", arXiv 2407.07880; official code github.com/junkangwu/Dr_DPO,
    trainers.py): loss = -beta' log mean_batch exp(-loss_i / beta'), a soft
    minimum that gives pairs with large losses (likely mislabelled) less
    weight; beta' -> inf is the mean. Any loss; beta' = 1 as the official code."""

    def __init__(self, beta_prime: float = 1.0):
        super().__init__()
        if not beta_prime > 0:
            raise InputError(f"aggregate.beta_prime must be > 0, got {beta_prime}")
        self.beta_prime = float(beta_prime)

    def forward(self, loss_fn, logps, beta):
        losses = loss_fn(logps, beta)
        return -self.beta_prime * (torch.logsumexp(-losses / self.beta_prime, dim=0) - math.log(len(losses)))

    def check(self, run):
        for axis in (run.weighting, run.beta_schedule):
            refuse(axis.weighs_pairs, f"{self.name(run)} averages exp(-loss / beta') over the batch; the per-pair "
                                      f"weights of {axis.name(run)} have no place in it")
