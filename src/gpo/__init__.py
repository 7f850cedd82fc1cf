"""Generalized Preference Optimization (Tang et al. 2024) with Hydra and Lightning."""

from gpo.losses import Exponential, GPOLoss, Hinge, Logistic, Savage, Squared, TruncatedQuadratic

__all__ = ["GPOLoss", "Logistic", "Squared", "Hinge", "Exponential", "TruncatedQuadratic", "Savage"]
