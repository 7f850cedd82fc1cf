"""The beta_schedule axis (conf/beta_schedule): the beta each training step uses.

    beta, logps = schedule(beta, logps, progress)

`beta` is the run's (after beta_scale), `progress()` the share of training
done (step / total steps; a callable, asked only by the schedules that need
it). A schedule may also weigh pairs (beta-DPO's filter sets `logps.weight`).
Validation steps use the schedule's beta without updating its state.
"""

import math
from dataclasses import replace

import torch

from gpo.infra.errors import InputError
from gpo.losses.axes import Axis, needs_pairs


class BetaSchedule(Axis):
    group = "beta_schedule"

    def forward(self, beta: float, logps, progress):
        raise NotImplementedError


class Constant(BetaSchedule):
    """beta_schedule=constant: the run's beta at every step (the default)."""

    neutral = True

    def forward(self, beta, logps, progress):
        return beta, logps


class Linear(BetaSchedule):
    """beta_schedule=linear: from beta to final * beta, linearly in the step."""

    def __init__(self, final: float = 0.5):
        super().__init__()
        if not final > 0:
            raise InputError(f"beta_schedule.final must be > 0 (a multiple of beta), got {final}")
        self.final = float(final)

    def factor(self, progress: float) -> float:
        return 1.0 + (self.final - 1.0) * progress

    def forward(self, beta, logps, progress):
        return beta * self.factor(min(max(progress(), 0.0), 1.0)), logps


class Cosine(Linear):
    """beta_schedule=cosine: from beta to final * beta along half a cosine."""

    def factor(self, progress: float) -> float:
        return self.final + (1.0 - self.final) * (1.0 + math.cos(math.pi * progress)) / 2.0


class BetaDPO(BetaSchedule):
    """beta_schedule=beta_dpo, beta-DPO (Wu et al. 2024, "beta-DPO: Direct
    Preference Optimization with Dynamic beta", arXiv 2407.08639; official code
    github.com/junkangwu/beta-DPO, trainers.py), batch by batch:

      1. the running mean M_0 and standard deviation sigma of the margins rho
         (exponential moving averages with `momentum`, from 0, updated with
         each training batch before use, as the official code);
      2. filter: (1 - filter_fraction) of the batch's pairs drawn without
         replacement with weights exp(-(rho - M_0)^2 / (2 sigma^2)), so
         outlying margins are left out; the loss averages over the kept pairs;
      3. beta_batch = beta * (1 + alpha * (mean rho of the kept pairs - M_0)),
         at least 1e-3, no gradient.

    alpha = 0 keeps beta and only filters; filter_fraction = 0 keeps every pair.
    Differences from the official code: the draw uses a generator seeded by
    (seed, step) (reproducible, resumable, the global RNG untouched), and
    validation batches neither update the statistics nor filter (their beta
    uses the batch's mean margin). M_0 and sigma are buffers: in checkpoints."""

    def __init__(self, alpha: float = 0.6, filter_fraction: float = 0.2, momentum: float = 0.9, seed: int = 0):
        super().__init__()
        if not 0.0 <= filter_fraction < 1.0:
            raise InputError(f"beta_schedule.filter_fraction must lie in [0, 1), got {filter_fraction}")
        if not 0.0 <= momentum < 1.0:
            raise InputError(f"beta_schedule.momentum must lie in [0, 1), got {momentum}")
        self.alpha, self.filter_fraction, self.momentum, self.seed = (float(alpha), float(filter_fraction),
                                                                      float(momentum), int(seed))
        self.register_buffer("margin_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("margin_std", torch.zeros((), dtype=torch.float64))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def forward(self, beta, logps, progress):
        margins = logps.margin.detach().double()
        if not self.training:
            return beta * max(1e-3, 1.0 + self.alpha * float(margins.mean() - self.margin_mean)), logps
        m = self.momentum
        self.margin_mean.mul_(m).add_((1 - m) * margins.mean().cpu())
        self.margin_std.mul_(m).add_((1 - m) * (margins.std() if len(margins) > 1 else 0.0))
        self.updates += 1
        n = len(margins)
        kept = max(1, int(n * (1.0 - self.filter_fraction)))
        spread = self.margin_std.clamp(min=1e-8).to(margins.device)
        weights = torch.exp(-0.5 * ((margins - self.margin_mean.to(margins.device)) / spread) ** 2)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.updates))
        chosen = torch.multinomial(weights.cpu().clamp(min=1e-300), kept, replacement=False, generator=generator)
        keep = torch.zeros(n, dtype=logps.policy_chosen.dtype)
        keep[chosen] = n / kept  # mean over the batch of keep * loss = mean loss over the kept pairs
        keep = keep.to(logps.policy_chosen.device)
        batch_beta = beta * max(1e-3, 1.0 + self.alpha * float(margins[chosen.to(margins.device)].mean()
                                                                - self.margin_mean))
        return batch_beta, replace(logps, weight=keep if logps.weight is None else logps.weight * keep)

    @property
    def weighs_pairs(self) -> bool:
        return self.filter_fraction > 0

    def check(self, run):
        needs_pairs(self, run)
