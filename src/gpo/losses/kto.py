"""KTO, the loss on unpaired examples: each example is a completion with a
desirable/undesirable label, not a pair (gpo.data: `data=unpaired` files, or
any pairs seen through `data.unpaired=true`). The step builds `ExampleLogps`
for it (its `inputs`), and the run's check refuses it on pairs."""

import torch

from gpo.infra.errors import InputError
from gpo.losses.base import ExampleLogps, PreferenceLoss


class KTO(PreferenceLoss):
    """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic
    Optimization", arXiv 2402.01306, eq. 7; TRL KTOTrainer loss_type "kto"):

        desirable:    w_d (1 - sigmoid(beta (l - z_0)))
        undesirable:  w_u (1 - sigmoid(beta (z_0 - l)))

    l = log pi(y|x) - log pi_ref(y|x), z_0 = max(0, batch mean of the same for
    mismatched completions y' (another example's completion under this
    prompt)), without gradient, as TRL. The weights w_d, w_u balance unequal
    numbers of desirable and undesirable examples (the paper advises
    w_d n_d / (w_u n_u) in [1, 4/3])."""

    inputs = ExampleLogps
    formula = "w_d (1 - sigmoid(beta (l - z_0))) or w_u (1 - sigmoid(beta (z_0 - l))), one example, z_0 = KL estimate"

    def __init__(self, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
        super().__init__()
        if not desirable_weight > 0 or not undesirable_weight > 0:
            raise InputError(f"loss.desirable_weight and loss.undesirable_weight must be > 0, got "
                             f"{desirable_weight}, {undesirable_weight}")
        self.desirable_weight, self.undesirable_weight = float(desirable_weight), float(undesirable_weight)

    def forward(self, examples: ExampleLogps, beta):
        z0, logratio = examples.kl_estimate, examples.logratio
        desirable = self.desirable_weight * (1 - torch.sigmoid(beta * (logratio - z0)))
        undesirable = self.undesirable_weight * (1 - torch.sigmoid(beta * (z0 - logratio)))
        return torch.where(examples.desirable.bool(), desirable, undesirable)
