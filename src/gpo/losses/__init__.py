"""Preference losses: one interface (`PreferenceLoss`: loss_fn(logps, beta) ->
per-pair loss), GPO families defined by their f alone (`GPOLoss`), and the
method's axes that compose with every loss.

families.py: the GPO paper's six families; variants.py: published losses that
are GPO families too (EXO, cDPO, robust DPO, DiscoPOP); zoo.py and recent.py:
the others (chi-PO, RPO, length-normalised IPO, SimPO, NCA, BCO, APO, SPPO,
ORPO, SFT, `WeightedSum`; DPO-Positive, Cal-DPO, CPO, SimPER, AlphaPO); kto.py:
KTO on unpaired examples. The axes (conf groups beside `loss`): rho.py (how rho
comes from token log-probs), axes.py (margin, labels, weighting), schedules.py
(beta_schedule), aggregate.py. docs/losses.md lists every conf/loss entry and
every axis option."""

from gpo.losses.base import ExampleLogps, GPOLoss, PairLogps, PreferenceLoss, TokenLogps
from gpo.losses.families import Exponential, Hinge, Logistic, Savage, Squared, TruncatedQuadratic
from gpo.losses.kto import KTO
from gpo.losses.recent import CPO, DPOP, AlphaPO, CalDPO, SimPER
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
    "ExampleLogps", "GPOLoss", "PairLogps", "PreferenceLoss", "TokenLogps",
    "Exponential", "Hinge", "Logistic", "Savage", "Squared", "TruncatedQuadratic",
    "ConservativeLogistic", "DiscoPOP", "Exo", "RobustLogistic",
    "APODown", "APOZero", "BCO", "ChiPO", "IPOLengthNormalised", "NCA", "ORPO", "RPO", "SFT", "SimPO",
    "SPPOHard", "WeightedSum", "CPO", "DPOP", "AlphaPO", "CalDPO", "SimPER", "KTO",
]
