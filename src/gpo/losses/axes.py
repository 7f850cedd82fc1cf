"""The method's axes beside the loss family: each a config group whose options
are objects the training step composes, in this order (gpo.training.module):

    logps = rho(logps)  ->  margin  ->  labels  ->  weighting      (per pair: PairLogps -> PairLogps)
    beta, logps = beta_schedule(beta, logps)                        (gpo.losses.schedules)
    loss = aggregate(loss_fn, logps, beta)                          (gpo.losses.aggregate)

This module holds the base class and the small per-pair axes: `margin` (an
offset on t: R-DPO, ODPO), `labels` (soft labels) and `weighting` (WPO); the
rho axis is gpo.losses.rho. Every option is a `torch.nn.Module` (state, such as
beta-DPO's running statistics, lands in checkpoints) that says whether it is
`neutral` (leaves the step as plain GPO: the defaults) and checks, before any
compute, that it can work with the rest of the run (`check`: one line naming
the problem, or nothing). The step never asks which option it holds.
"""

from dataclasses import replace

import torch

from gpo.infra.errors import InputError
from gpo.losses.base import GPOLoss, PairLogps


class Axis(torch.nn.Module):
    """One option of one axis. `group`: its config group, for messages."""

    group: str = "?"
    neutral: bool = False  # True: the step is plain GPO along this axis (the group's default)
    # What the step must compute for it beyond summed log-probs: "policy_tokens", "reference_tokens"
    # (per-token log-probs), "policy_square_norm" (log sum_v pi(v|.)^2 per token).
    needs: frozenset[str] = frozenset()
    weighs_pairs: bool = False  # sets per-pair weights (logps.weight)

    def check(self, run) -> None:
        """Raise InputError if this option cannot work with `run`
        (gpo.training.composition.Composition: the loss, the other axes, the
        reference, the data, the config choices by group in `run.names`)."""

    def name(self, run) -> str:
        return f"{self.group}={run.names.get(self.group, type(self).__name__)}"

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_") and k != "training")


def refuse(condition: bool, message: str) -> None:
    if condition:
        raise InputError(message)


def needs_pairs(axis: Axis, run) -> None:
    refuse(run.loss.inputs is not PairLogps,
           f"{axis.name(run)} works on preference pairs; loss={run.names.get('loss')} trains on unpaired examples")


def needs_gpo_family(axis: Axis, run, why: str) -> None:
    refuse(not isinstance(run.loss, GPOLoss),
           f"{axis.name(run)} {why}: it needs a GPO family, a loss that is f(t) of t = beta * rho alone "
           f"(dpo, ipo, slic, ...); loss={run.names.get('loss')} is not one")


def data_columns(run) -> set[str]:
    return set(run.datamodule.tokenized["train"].column_names)


def needs_columns(axis: Axis, run, columns) -> None:
    missing = [c for c in columns if c not in data_columns(run)]
    refuse(bool(missing), f"{axis.name(run)} reads the data column(s) {missing}, which "
                          f"{run.datamodule.source.description} does not have")


# ------------------------------------------------------------------ margin: an offset on t


class NoMargin(Axis):
    """margin=none: t = beta * rho."""

    group, neutral = "margin", True

    def forward(self, logps, batch):
        return logps


class LengthMargin(Axis):
    """margin=length, R-DPO (Park et al. 2024, "Disentangling Length from Quality
    in Direct Preference Optimization", arXiv 2403.19159, eq. 9):
    t = beta * rho + alpha * (|y_w| - |y_l|), lengths in tokens: a longer
    chosen response needs less margin, so length alone earns less. As the
    SamPO repository's `lenN` loss (github.com/LuJunru/SamPO, dpo_trainer.py)."""

    group = "margin"

    def __init__(self, alpha: float = 0.01):
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, logps, batch):
        return replace(logps, offset=-self.alpha * (logps.chosen_length - logps.rejected_length))

    def check(self, run):
        needs_pairs(self, run)
        needs_gpo_family(self, run, "shifts t = beta * rho")


class ScoreMargin(Axis):
    """margin=score, ODPO (Amini et al. 2024, "Direct Preference Optimization with
    an Offset", arXiv 2402.10571, eq. 6; official code github.com/rycolab/odpo,
    trainers.py): t = beta * rho - alpha * log(s_w - s_l), with s the responses'
    scores from the data's `chosen_column` and `rejected_column` (default
    score_chosen / score_rejected, as UltraFeedback-binarized names them):
    pairs whose chosen response scored much higher must win by more."""

    group = "margin"

    def __init__(self, alpha: float = 1.0, chosen_column: str = "score_chosen",
                 rejected_column: str = "score_rejected"):
        super().__init__()
        self.alpha, self.chosen_column, self.rejected_column = float(alpha), chosen_column, rejected_column

    def forward(self, logps, batch):
        difference = batch[self.chosen_column].to(logps.policy_chosen) - batch[self.rejected_column].to(
            logps.policy_chosen)
        return replace(logps, offset=self.alpha * torch.log(difference))

    def check(self, run):
        needs_pairs(self, run)
        needs_gpo_family(self, run, "shifts t = beta * rho")
        needs_columns(self, run, [self.chosen_column, self.rejected_column])
        for split, data in run.datamodule.tokenized.items():
            pairs = list(zip(data[self.chosen_column], data[self.rejected_column]))
            for i, (chosen, rejected) in enumerate(pairs):
                if not chosen > rejected:
                    raise InputError(f"{self.name(run)}: {split} pair {i} has {self.chosen_column}={chosen} <= "
                                     f"{self.rejected_column}={rejected}; ODPO's offset log(s_w - s_l) needs the "
                                     "chosen response scored higher")


# ------------------------------------------------------------------ labels


class HardLabels(Axis):
    """labels=hard: the chosen response won (p = 1)."""

    group, neutral = "labels", True

    def forward(self, logps, batch):
        return logps


class SoftLabels(Axis):
    """labels=soft: each pair's probability p that its chosen response wins,
    from the data column `column`; a GPO family then minimises
    p f(t) + (1 - p) f(-t), whose minimiser is the link t*(p) (GPO.md). Label
    smoothing (cDPO) is the special case p = 1 - eps for every pair. On the
    synthetic task `column=preference_probability` trains on the labelling
    model's own probabilities."""

    group = "labels"

    def __init__(self, column: str = "p"):
        super().__init__()
        self.column = column

    def forward(self, logps, batch):
        return replace(logps, preference=batch[self.column].to(logps.policy_chosen))

    def check(self, run):
        needs_pairs(self, run)
        needs_gpo_family(self, run, "weighs f(t) and f(-t)")
        needs_columns(self, run, [self.column])
        for split, data in run.datamodule.tokenized.items():
            for i, p in enumerate(data[self.column]):
                if not 0.0 <= p <= 1.0:
                    raise InputError(f"{self.name(run)}: {split} pair {i} has {self.column}={p}, not a "
                                     "probability in [0, 1]")


# ------------------------------------------------------------------ weighting


class NoWeighting(Axis):
    """weighting=none: every pair counts once."""

    group, neutral = "weighting", True

    def forward(self, logps, batch):
        return logps


class WPO(Axis):
    """weighting=wpo, WPO (Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted
    Preference Optimization", arXiv 2406.11827, eq. 2; TRL `use_weighting`):
    each pair's loss times w(y_w) w(y_l), no gradient through w,

        w(y) = exp( mean over y's tokens of [log pi(y_t|.) - log sum_v pi(v|.)^2] ),

    the policy's own length-normalised probability of the response, aligned by
    each position's sum of squared probabilities: pairs the policy would
    itself sample weigh more (off-policy data simulated as on-policy)."""

    group, weighs_pairs = "weighting", True
    needs = frozenset({"policy_tokens", "policy_square_norm"})

    def forward(self, logps, batch):
        tokens = logps.tokens
        with torch.no_grad():
            aligned = ((tokens.policy - tokens.policy_log_sum_sq) * tokens.mask).sum(-1) / tokens.mask.sum(-1)
            chosen, rejected = tokens.halves(torch.exp(aligned))
            weight = chosen * rejected
        return replace(logps, weight=weight if logps.weight is None else logps.weight * weight)

    def check(self, run):
        needs_pairs(self, run)
