"""The projected-link predictor (gpo.report.theory) against closed forms: no training."""

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import CONF
from gpo.losses import Exponential, Hinge, Logistic, Savage, Squared, TruncatedQuadratic
from gpo.report.theory import (
    best_kl,
    beta_at_kl,
    piecewise_linear_pieces,
    predictions,
    projected_link,
    projected_link_ratios,
    tilt,
    tilt_gold,
    tilt_kl,
)

FAMILIES = {"dpo": Logistic(), "ipo": Squared(), "slic": Hinge(), "exponential": Exponential(),
            "truncated_quadratic": TruncatedQuadratic(), "savage": Savage()}


def bradley_terry_pairs(phi, temperature=1.0, seed=0):
    """Every ordered pair of distinct bins, labelled by Bradley-Terry on phi, with random counts."""
    rng = np.random.default_rng(seed)
    return [[a, b, 1 / (1 + np.exp(-(phi[a] - phi[b]) / temperature)), int(rng.integers(1, 20))]
            for a in range(len(phi)) for b in range(len(phi)) if a != b]


def loss_configs():
    return {name: OmegaConf.to_container(OmegaConf.load(f"{CONF}/loss/{name}.yaml")) for name in FAMILIES}


def test_only_the_hinge_is_solved_as_a_linear_programme():
    assert piecewise_linear_pieces(Hinge()) == [(-1.0, 1.0), (0.0, 0.0)]
    for name, loss in FAMILIES.items():
        if name != "slic":
            assert piecewise_linear_pieces(loss) is None, name


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("p", [0.6, 0.8, 0.95])
def test_two_bins_give_the_link(name, p):
    """With one kind of pair, any margin is realisable: u*(1) - u*(0) is the link t*(p)."""
    loss = FAMILIES[name]
    u = projected_link(loss, [[1, 0, p, 10]], 2)
    assert u[1] - u[0] == pytest.approx(float(loss.link([p])[0]), abs=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_logistic_and_savage_recover_the_exact_tilt_exponential_half_of_it(temperature):
    """Bradley-Terry labels on phi at temperature tau: the projected link of DPO (and Savage, whose link
    is the same) is phi / tau, so pi_{u*/beta} is the exact tilt pi_ref exp(phi / (tau beta)); the
    exponential loss's is phi / (2 tau) (the tilt at 2 beta)."""
    phi = np.linspace(-2.0, 2.5, 10)
    pairs = bradley_terry_pairs(phi, temperature)
    for loss, scale in ((Logistic(), 1.0), (Savage(), 1.0), (Exponential(), 0.5)):
        u = projected_link(loss, pairs, len(phi))
        assert u - u[0] == pytest.approx(scale * (phi - phi[0]) / temperature, abs=1e-4)


def test_the_squared_loss_is_bounded_where_the_logistic_is_not():
    phi = np.linspace(-3.0, 3.0, 9)
    pairs = bradley_terry_pairs(phi)
    u_dpo, u_ipo = (projected_link(loss, pairs, len(phi)) for loss in (Logistic(), Squared()))
    assert np.all(np.diff(u_ipo) > 0)  # monotone in phi ...
    assert np.ptp(u_ipo) < 0.5 * np.ptp(u_dpo)  # ... with a smaller range: (2p - 1) saturates


def test_hinge_linear_programme_reaches_the_brute_force_minimum():
    """Three bins: the LP's objective equals the minimum over a fine grid of (u1 - u0, u2 - u0)."""
    pairs = [[1, 0, 0.7, 5], [2, 1, 0.8, 3], [2, 0, 0.9, 2], [0, 2, 0.3, 1]]
    hinge = Hinge()

    def objective(u):
        total = 0.0
        for a, b, p, n in pairs:
            d = u[a] - u[b]
            total += n * (p * max(0.0, 1 - d) + (1 - p) * max(0.0, 1 + d))
        return total

    u = projected_link(hinge, pairs, 3)
    grid = np.linspace(-3, 3, 121)
    brute = min(objective([0.0, x, y]) for x in grid for y in grid)
    assert objective(u) == pytest.approx(brute, abs=1e-9)


def test_tilt_kl_and_its_inverse():
    reference = np.array([[0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4]])
    u = np.array([0.0, 1.0, 2.0, 3.0])
    for row in reference:  # one prompt: the closed form
        pi = row * np.exp(u / 0.7)
        pi /= pi.sum()
        inside = pi > 0
        assert tilt_kl(u, 0.7, row) == pytest.approx(np.sum(pi[inside] * np.log(pi[inside] / row[inside])))
    assert tilt_kl(u, 0.7, reference) == pytest.approx(np.mean([tilt_kl(u, 0.7, row) for row in reference]))
    assert np.allclose(tilt(u, 0.7, reference).sum(1), 1) and tilt(u, 0.7, reference)[0, 3] == 0
    assert tilt_kl(u, 1e6, reference) == pytest.approx(0, abs=1e-9)
    for kl in (0.05, 0.5, 1.2):
        assert tilt_kl(u, beta_at_kl(u, kl, reference), reference) == pytest.approx(kl, rel=1e-8)
    ceiling = -np.mean(np.log([0.2, 0.4]))  # every prompt's mass on its top bin
    assert np.isnan(beta_at_kl(u, ceiling + 0.01, reference))  # beyond what the support allows


def test_best_kl_is_where_the_gold_peaks():
    reference = np.array([0.3, 0.3, 0.2, 0.195, 0.005])
    u = np.arange(5.0)
    gold = np.array([0.0, 1.0, 2.0, 3.0, -10.0])  # the top bin, rare under the reference, over-optimised
    kl = best_kl(u, reference, gold)
    beta = beta_at_kl(u, kl, reference)
    assert 0 < kl < tilt_kl(u, 1e-3, reference)
    assert tilt_gold(u, beta, reference, gold) > tilt_gold(u, 1e6, reference, gold) + 0.1  # above the reference's
    for factor in (0.8, 1.25):
        assert tilt_gold(u, beta, reference, gold) >= tilt_gold(u, beta * factor, reference, gold)


def test_projected_ratios_tend_to_the_taylor_ratio_as_labels_weaken():
    """Near p = 1/2 every link is (2p - 1)/scale, so the projected ratio to IPO tends to
    scale(ipo)/scale(f): 2 for DPO and Savage, 1 for exponential and truncated quadratic."""
    phi = np.linspace(-3.0, 3.0, 12)
    reference = np.exp(-phi**2 / 4)
    reference /= reference.sum()
    features = {"pairs": bradley_terry_pairs(phi, temperature=40.0), "reference": reference.tolist(),
                "gold": (phi - 0.3 * phi**2).tolist(), "centres": phi.tolist()}
    configs = {k: v for k, v in loss_configs().items() if k != "slic"}
    ratios = projected_link_ratios(configs, "ipo", features, kl=0.001)
    assert ratios["ipo"] == pytest.approx(1.0)
    assert ratios["dpo"] == pytest.approx(2.0, rel=0.02) and ratios["savage"] == pytest.approx(2.0, rel=0.02)
    assert ratios["exponential"] == pytest.approx(1.0, rel=0.02)
    assert ratios["truncated_quadratic"] == pytest.approx(1.0, rel=0.02)
    confident = projected_link_ratios(configs, "ipo", {**features, "pairs": bradley_terry_pairs(phi, 0.5)})
    assert confident["dpo"] > 2.4  # confident labels: the logistic link is unbounded, the squared one is not


def test_predictions_carry_the_projected_ratio_when_runs_have_label_features():
    phi = np.linspace(-2.0, 2.0, 8)
    reference = np.full(8, 1 / 8)
    features = {"pairs": bradley_terry_pairs(phi), "reference": [reference.tolist()] * 2,
                "gold": (phi - 0.4 * phi**2).tolist(), "centres": phi.tolist()}
    configs = loss_configs()
    rows = [{"loss": name, "beta": 0.1, "seed": 1, "status": "finished", "loss_config": configs[name],
             "regularisation_scale": loss.regularisation_scale, "preference_probabilities": [[0.7, 3], [0.6, 2]],
             "label_features": features} for name, loss in FAMILIES.items()]
    table = predictions(pd.DataFrame(rows)).set_index("loss")
    assert table.loc["ipo", "projected_link_ratio"] == pytest.approx(1.0)
    assert table.loc["dpo", "projected_link_ratio"] == pytest.approx(table.loc["savage", "projected_link_ratio"],
                                                                      rel=1e-3)
    assert table["projected_link_ratio"].notna().all()
    without = predictions(pd.DataFrame(rows).drop(columns="label_features"))
    assert without["projected_link_ratio"].isna().all() and without["link_ratio"].notna().all()
