"""The catalogue of metrics the report knows: label, unit, direction.

Keys are those of `RunSummary.metrics` (and of the W&B run summary). A metric
`m` may come with a per-run sampling error `m + STDERR_SUFFIX`.
"""

from dataclasses import dataclass

import pandas as pd

STDERR_SUFFIX = "_stderr"


@dataclass(frozen=True)
class Metric:
    key: str  # the name in summary.json / the W&B run summary
    label: str
    unit: str
    higher_is_better: bool
    # What the reference policy scores: a number, or the run-table column that holds it (None: unknown).
    reference: float | str | None = None

    @property
    def axis_label(self) -> str:
        return f"{self.label} ({self.unit})"


# Rewards are beta * log-ratios, so they are in nats like the log-probabilities.
METRICS = {
    m.key: m
    for m in [
        Metric("val/loss", "val loss E[f(β·ρ)]", "dimensionless", False),
        Metric("val/rewards/accuracies", "val preference accuracy", "fraction", True),
        Metric("val/rewards/margins", "val reward margin β·ρ", "nats", True),
        Metric("val/rewards/chosen", "val reward, chosen", "nats", True),
        Metric("val/rewards/rejected", "val reward, rejected", "nats", False),
        Metric("val/logps/chosen", "val log π(y_w|x)", "nats", True),
        Metric("val/logps/rejected", "val log π(y_l|x)", "nats", False),
        Metric("train/loss", "train loss E[f(β·ρ)]", "dimensionless", False),
        Metric("eval/kl", "KL(π‖π_ref)", "nats", False),
        Metric("eval/offline_regulariser", "offline regulariser E_data[ρ²]/2", "nats²", False),
        Metric("eval/gold_reward", "gold reward of policy samples", "gold-reward units", True,
               "eval/gold_reward_reference"),
        Metric("eval/gold_reward_reference", "gold reward of reference samples", "gold-reward units", True),
        Metric("eval/win_rate", "gold win rate vs reference", "fraction", True, 0.5),
        Metric("wall_time_s", "wall time", "s", False),
    ]
}

TABLE_METRICS = ["val/loss", "val/rewards/accuracies", "val/rewards/margins", "eval/kl",
                 "eval/gold_reward", "eval/win_rate", "wall_time_s"]
PLOT_METRICS = ["val/loss", "val/rewards/accuracies", "val/rewards/margins", "eval/kl",
                "eval/gold_reward", "eval/win_rate"]
# The selection metric for the best beta, in order of preference.
SELECTION_METRICS = ["eval/win_rate", "val/rewards/accuracies"]


def spec(key: str) -> Metric:
    """The metric's description; an unknown key is taken as higher-is-better, unitless."""
    return METRICS.get(key, Metric(key, key, "as logged", True))


def reference_level(key: str, runs: pd.DataFrame) -> float | None:
    """The reference policy's score on `key` (the mean over runs where a column holds it), or None."""
    reference = spec(key).reference
    if isinstance(reference, str):
        values = runs[reference].dropna() if reference in runs else pd.Series(dtype=float)
        return float(values.mean()) if len(values) else None
    return reference
