"""beta_scale (conf/train.yaml): one beta for every GPO family, rescaled per
family so that the families compare at the squared loss's (IPO's) local
regularisation.

  - taylor: scale(squared) / scale(f), with scale = f''(0)/|f'(0)|, the
    paper's Section 4 argument (DPO and Savage get 2 beta);
  - link: the link-function ratio on the data's preference probabilities
    (losses.base.link_ratio; derived here, docs/reproduction.md).
"""

from gpo.infra.config import instantiate
from gpo.infra.errors import InputError
from gpo.losses.base import GPOLoss, link_ratio
from gpo.losses.families import Squared


def beta_scale_factor(mode: str, loss, preference_probabilities=None) -> float | None:
    """What beta_scale=`mode` multiplies `loss`'s beta by; None if `loss` has
    no f''(0) > 0 to scale by (not a GPO family, or the hinge).
    `preference_probabilities`: [(p, count), ...] of the training pairs (link only)."""
    if mode == "none":
        return 1.0
    if not isinstance(loss, GPOLoss) or not loss.regularisation_scale > 0:
        return None
    if mode == "taylor":
        return Squared().regularisation_scale / loss.regularisation_scale
    if mode != "link":
        raise ValueError(f"unknown beta_scale {mode!r}")
    if not preference_probabilities:
        raise InputError("beta_scale=link needs the data's preference probabilities (the synthetic task, or "
                         "data relabelled by a gold reward: data.relabel_temperature)")
    p, weights = zip(*preference_probabilities)
    return link_ratio(loss, Squared(), p, weights)


def planned_beta(beta, mode: str, loss_config) -> float | None:
    """The beta a run with `beta`, `beta_scale=mode` and the loss config
    `loss_config` will use, from the config alone (run and folder names, the
    record of a run that failed early); None under `link`, whose factor needs
    the data. A config that cannot be built, or a beta that is no number, is
    named as given: the run itself reports the problem."""
    if mode == "link":
        return None
    if mode == "none":
        return beta
    try:
        factor = beta_scale_factor(mode, instantiate(loss_config))
    except Exception:  # noqa: BLE001 (reported by the run, in one line)
        return beta
    return beta * factor if factor is not None and isinstance(beta, (int, float)) else beta
