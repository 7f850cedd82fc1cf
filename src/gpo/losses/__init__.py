"""Preference losses: one interface (`PreferenceLoss`: loss_fn(logps, beta) ->
per-pair loss), GPO families defined by their f alone (`GPOLoss`).

families.py: the GPO paper's six families; variants.py: published losses that
are GPO families too (EXO, cDPO, robust DPO, DiscoPOP); zoo.py: the others
(chi-PO, RPO, length-normalised IPO, SimPO, NCA, BCO, APO, SPPO, ORPO, SFT,
and `WeightedSum` to mix any of them from the config). docs/losses.md lists
every conf/loss entry."""

from gpo.losses.base import GPOLoss, PairLogps, PreferenceLoss
from gpo.losses.families import Exponential, Hinge, Logistic, Savage, Squared, TruncatedQuadratic
from gpo.losses.variants import ConservativeLogistic, DiscoPOP, Exo, RobustLogistic
from gpo.losses.zoo import (
    BCO,
    NCA,
    ORPO,
    RPO,
    SFT,
    APODown,
    APOZero,
    ChiPO,
    IPOLengthNormalised,
    SimPO,
    SPPOHard,
    WeightedSum,
)

__all__ = [
    "GPOLoss", "PairLogps", "PreferenceLoss",
    "Exponential", "Hinge", "Logistic", "Savage", "Squared", "TruncatedQuadratic",
    "ConservativeLogistic", "DiscoPOP", "Exo", "RobustLogistic",
    "APODown", "APOZero", "BCO", "ChiPO", "IPOLengthNormalised", "NCA", "ORPO", "RPO", "SFT", "SimPO",
    "SPPOHard", "WeightedSum",
]
