"""Simulated sweeps with a known answer: what the report's intervals are
tested against (tests/test_report_coverage.py, benchmarks/interval_coverage.py).

A family's gold metric is a hump in KL(pi || pi_ref), the same curve for every
family up to a known offset (Gao et al. 2023's over-optimisation curves), and
its KL falls as a power of beta:

    KL_f(beta) = peak_kl * (beta / peak_beta_f) ** -kl_power_f
    metric     = baseline + offset_f + height * shape(sqrt(KL / peak_kl)) + seed effect + noise

so the best beta of a family is peak_beta_f, the ratio between two families
is the ratio of their peak_betas and the gap at matched KL is the offset
difference. Shapes, each peaking at 1 for u = sqrt(KL / peak_kl) = 1:

- "gao_rl":   u (1 - log u), Gao et al.'s RL form d(alpha - beta' log d);
- "gao_bon":  u (2 - u), their best-of-n form d(alpha - beta' d);
- "mirrored": (1 + log u) / u, the RL form mirrored in log beta (steep on the large-beta side).

In log beta all three are asymmetric humps. Seeds (one data sample each,
shared by every family) add an additive effect (sd `seed_offset`) and shift
the peak in log beta (sd `seed_shift`), each correlated between families by
`seed_correlation`; every run adds noise (sd `noise`) to the metric and a
relative error (sd `kl_noise`) to the measured KL. With seed shifts the
estimand is the maximum of the seed-averaged curve, computed here by
Gauss-Hermite quadrature over the shift.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

SHAPES = {
    "gao_rl": lambda u: u * (1 - np.log(u)),
    "gao_bon": lambda u: u * (2 - u),
    "mirrored": lambda u: (1 + np.log(u)) / u,
}


@dataclass(frozen=True)
class Family:
    name: str
    peak_beta: float
    kl_power: float = 1.4  # KL ∝ beta^-kl_power (the testbed's DPO: about 1.4)
    offset: float = 0.0  # its gold-vs-KL curve's offset: the gap to a family with offset 0
    scale: float = 1.0  # f''(0)/|f'(0)|, for the report's Taylor column


@dataclass(frozen=True)
class Scenario:
    """Defaults shaped like the over-optimisation testbed (docs/reproduction.md):
    a peak win rate of about 0.69 at KL about 1 nat, 0.35 at a sixth of the best beta."""

    families: tuple[Family, ...] = (Family("ipo", 0.33), Family("dpo", 1.1, scale=0.5))
    shape: str = "gao_rl"
    peak_kl: float = 1.0
    height: float = 0.19
    baseline: float = 0.5
    noise: float = 0.01
    kl_noise: float = 0.03
    seed_offset: float = 0.01
    seed_shift: float = 0.1
    seed_correlation: float = 0.5  # of a seed's shift (and offset) between families
    grids: dict = field(default_factory=dict)  # family name -> its beta grid; default `grid`
    grid: tuple[float, ...] = tuple(np.round(0.177 * np.sqrt(2) ** np.arange(10), 4))  # the testbed's
    jitter: bool = True  # move each sweep's peaks by a uniform fraction of a grid step (the grid's phase)

    def betas(self, name: str) -> np.ndarray:
        return np.asarray(self.grids.get(name, self.grid), float)


def fine_grid(centre: float, factor: float = 2 ** 0.25, each_side: int = 6) -> tuple[float, ...]:
    """A grid `factor` apart, `each_side` points either side of `centre` (the issue's 2^(1/4) design)."""
    return tuple(centre * factor ** np.arange(-each_side, each_side + 1))


def curve(scenario: Scenario, family: Family, log_beta: np.ndarray, shift=0.0) -> np.ndarray:
    """The expected metric (no seed offset, no noise) at log beta, with the peak shifted by `shift`."""
    log_u = -0.5 * family.kl_power * (log_beta - shift - np.log(family.peak_beta))
    return scenario.baseline + family.offset + scenario.height * SHAPES[scenario.shape](np.exp(log_u))


def true_best_log_beta(scenario: Scenario, family: Family) -> float:
    """argmax over log beta of the curve averaged over the seed shift (Gauss-Hermite)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(41)
    shifts, weights = scenario.seed_shift * nodes, weights / weights.sum()
    x = np.log(family.peak_beta) + np.linspace(-1, 1, 20001)
    mean = curve(scenario, family, x[:, None], shifts[None, :]) @ weights
    i = int(np.argmax(mean))
    a, b, _ = np.polyfit(x[i - 1:i + 2] - x[i], mean[i - 1:i + 2], 2)
    return float(x[i] - b / (2 * a))


@dataclass
class Simulated:
    """R replicate sweeps: per family (R, S, n) arrays of the metric and the measured KL, and
    each sweep's phase: how far its peak is moved in log beta (R,)."""

    scenario: Scenario
    metric: dict[str, np.ndarray]
    kl: dict[str, np.ndarray]
    phase: dict[str, np.ndarray]

    def best_log_beta(self, name: str) -> np.ndarray:
        """The true best log beta of each sweep (R,)."""
        family = next(f for f in self.scenario.families if f.name == name)
        return true_best_log_beta(self.scenario, family) + self.phase[name]

    def runs(self, replicate: int = 0) -> pd.DataFrame:
        """One replicate as the report's run table (`gpo.report.load` columns)."""
        rows = []
        for family in self.scenario.families:
            values, kls = self.metric[family.name][replicate], self.kl[family.name][replicate]
            for s, j in np.ndindex(values.shape):
                rows.append({"loss": family.name, "beta": self.scenario.betas(family.name)[j], "seed": s + 1,
                             "status": "finished", "regularisation_scale": family.scale,
                             "eval/win_rate": values[s, j], "eval/kl": kls[s, j]})
        from gpo.report.load import normalise

        return normalise(pd.DataFrame(rows))


def simulate(scenario: Scenario, n_seeds: int, replicates: int, rng: np.random.Generator) -> Simulated:
    """`replicates` independent sweeps of every family over its grid and `n_seeds` seeds."""
    common = rng.standard_normal((2, replicates, n_seeds, 1))
    rho = scenario.seed_correlation
    metric, kl, phase = {}, {}, {}
    for family in scenario.families:
        x = np.log(scenario.betas(family.name))[None, None, :]
        step = np.median(np.diff(x[0, 0])) if scenario.jitter else 0.0
        phase[family.name] = step * rng.uniform(-0.5, 0.5, replicates)
        shift, offset = (scale * (np.sqrt(rho) * common[i] + np.sqrt(1 - rho) * rng.standard_normal(common[i].shape))
                         for i, scale in enumerate([scenario.seed_shift, scenario.seed_offset]))
        noise = scenario.noise * rng.standard_normal((replicates, n_seeds, x.shape[-1]))
        shift = shift + phase[family.name][:, None, None]
        metric[family.name] = curve(scenario, family, x, shift) + offset + noise
        true_kl = scenario.peak_kl * np.exp(-family.kl_power * (x - shift - np.log(family.peak_beta)))
        kl[family.name] = true_kl * np.exp(scenario.kl_noise * rng.standard_normal(metric[family.name].shape))
    return Simulated(scenario, metric, kl, phase)
