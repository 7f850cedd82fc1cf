"""Measuring a policy: sampling-based KL, gold reward and win rate (sampling),
and the callbacks that run it through training (callbacks)."""

from gpo.evaluation.callbacks import PairThroughput, SampleEvaluation
from gpo.evaluation.sampling import evaluate_samples, mean_and_stderr

__all__ = ["PairThroughput", "SampleEvaluation", "evaluate_samples", "mean_and_stderr"]
