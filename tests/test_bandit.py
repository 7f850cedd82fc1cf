"""The exact bandit solver against closed forms (derivations in docs/bandit.md)."""

import csv

import pytest
import torch
import torch.nn.functional as F

from gpo.bandit.solver import gpo_loss, implied_reward, kl, kl_optimum_logits, make_bandit, solve, trajectory
from gpo.losses import Exponential, Hinge, Logistic, Savage, Squared, TruncatedQuadratic

FAMILIES = [Logistic(), Squared(), Hinge(), Exponential(), TruncatedQuadratic(), Savage()]
SMOOTH = [f for f in FAMILIES if not isinstance(f, Hinge)]
BETAS = [0.05, 0.3, 1.0, 4.0]
NO_DATA = 3


@pytest.fixture
def bandit():
    # Unequal pair weights and unevenly spaced rewards, so that no family agrees
    # with another by coincidence.
    mu = [[0, 3, 1, 1], [0, 0, 2, 1], [0, 0, 0, 1], [0, 0, 0, 0]]
    return make_bandit([1.0, 0.3, 0.0, 1.6], [0.0, 0.5, 1.0, -0.5], mu)


def log_pi(theta):
    return F.log_softmax(theta, dim=-1)


def least_squares_margins(bandit, deterministic=False):
    """Squared loss: per pair, p (d-1)^2 + (1-p)(-d-1)^2 = (d - (2p-1))^2 + const, so u*
    is the mu-weighted least-squares fit of u_a - u_b to 2p(a>b) - 1: Laplacian(mu) u = s,
    minimum-norm solution = the mean-zero gauge."""
    weights, prefs = bandit.pair_weights, bandit.preferences(deterministic)
    laplacian = torch.diag(weights.sum(dim=1)) - weights
    return torch.linalg.pinv(laplacian) @ (weights * (2 * prefs - 1)).sum(dim=1)


@pytest.mark.parametrize("loss", FAMILIES, ids=lambda f: type(f).__name__)
def test_loss_at_reference_is_f0(bandit, loss):
    for deterministic in (False, True):
        value = gpo_loss(bandit.ref_logits, bandit, bandit.preference_data(deterministic), loss, 0.7)
        assert value.item() == pytest.approx(loss.f0, abs=1e-12)


def test_two_actions_squared_margin_is_2p_minus_1_over_beta():
    two = make_bandit([0.8, 0.0], [0.3, -0.2], [[0, 1], [0, 0]])
    p = torch.sigmoid(torch.tensor(0.8, dtype=torch.float64))
    for beta, theta in zip(BETAS, solve(two, Squared(), BETAS)):
        rho = (theta - two.ref_logits)[0] - (theta - two.ref_logits)[1]
        assert rho.item() == pytest.approx(((2 * p - 1) / beta).item(), rel=1e-10)


@pytest.mark.parametrize("loss", [Squared(), TruncatedQuadratic()], ids=lambda f: type(f).__name__)
def test_squared_family_is_weighted_least_squares(bandit, loss):
    # |2p - 1| < 1 keeps every margin where the truncated quadratic equals the squared loss.
    expected = least_squares_margins(bandit)
    torch.testing.assert_close(implied_reward(bandit, loss), expected, atol=1e-10, rtol=0)
    thetas = solve(bandit, loss, BETAS)
    for beta, theta in zip(BETAS, thetas):
        torch.testing.assert_close(theta, bandit.ref_logits + expected / beta, atol=1e-9, rtol=0)


def test_logistic_with_full_coverage_is_the_kl_regularised_optimum(bandit):
    # sigmoid(beta rho) = p(a > b) = sigmoid(r_a - r_b) on every pair: pi ∝ pi_ref exp(r/beta).
    for beta, theta in zip(BETAS, solve(bandit, Logistic(), BETAS)):
        optimum = kl_optimum_logits(bandit, beta)
        torch.testing.assert_close(log_pi(theta), log_pi(optimum), atol=1e-9, rtol=0)
        assert kl(theta, bandit).item() == pytest.approx(kl(optimum, bandit).item(), rel=1e-9)


def test_logistic_optimum_does_not_depend_on_pair_weights(bandit):
    weights = torch.rand(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.1
    other = make_bandit(bandit.reward, bandit.ref_logits, weights)
    torch.testing.assert_close(implied_reward(other, Logistic()), implied_reward(bandit, Logistic()),
                               atol=1e-10, rtol=0)


def test_savage_and_exponential_closed_forms(bandit):
    # Savage: p s(-t)^2 s(t) = (1-p) s(t)^2 s(-t) gives e^t = p/(1-p): DPO's optimum.
    # Exponential: p e^-t = (1-p) e^t gives t = (r_a - r_b)/2: pi* at 2 beta.
    centred = bandit.reward - bandit.reward.mean()
    torch.testing.assert_close(implied_reward(bandit, Savage()), centred, atol=1e-10, rtol=0)
    torch.testing.assert_close(implied_reward(bandit, Exponential()), centred / 2, atol=1e-10, rtol=0)
    for beta, theta in zip(BETAS, solve(bandit, Exponential(), BETAS)):
        torch.testing.assert_close(log_pi(theta), log_pi(kl_optimum_logits(bandit, 2 * beta)), atol=1e-9, rtol=0)


@pytest.mark.parametrize("loss", SMOOTH, ids=lambda f: type(f).__name__)
def test_solution_is_stationary_in_theta_at_every_beta(bandit, loss):
    # Checks the beta-free reparametrisation: the returned logits are critical points of the
    # loss as written in theta, at each beta separately.
    data = bandit.preference_data()
    for beta, theta in zip(BETAS, solve(bandit, loss, BETAS)):
        theta = theta.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(gpo_loss(theta, bandit, data, loss, beta), theta)
        assert grad.abs().max().item() < 1e-12 * max(beta, 1.0)


def test_hinge_matches_linear_programme(bandit):
    optimize = pytest.importorskip("scipy.optimize")
    import numpy as np

    winners, losers, weights = bandit.preference_data()
    k, n = len(bandit.reward), len(weights)
    # min sum w_i s_i  s.t.  s_i >= 1 - (u_w - u_l), s_i >= 0, sum u = 0
    a_ub = np.zeros((n, k + n))
    a_ub[np.arange(n), winners.numpy()] = -1.0
    a_ub[np.arange(n), losers.numpy()] = 1.0
    a_ub[np.arange(n), k + np.arange(n)] = -1.0
    lp = optimize.linprog(np.r_[np.zeros(k), weights.numpy()], A_ub=a_ub, b_ub=-np.ones(n),
                          A_eq=np.r_[np.ones(k), np.zeros(n)][None], b_eq=[0.0],
                          bounds=[(None, None)] * k + [(0, None)] * n)
    u = implied_reward(bandit, Hinge())
    value = gpo_loss(bandit.ref_logits + u, bandit, bandit.preference_data(), Hinge(), 1.0).item()
    assert value == pytest.approx(lp.fun, abs=1e-7)
    torch.testing.assert_close(u, torch.as_tensor(lp.x[:k]), atol=1e-5, rtol=0)


def test_deterministic_labels_unbounded_families_keep_moving(bandit):
    beta, steps, lr = 1.0, 2000, 0.5
    bound = -log_pi(bandit.ref_logits)[bandit.reward.argmax()].item()
    for loss in (Logistic(), Exponential(), Savage()):
        run = trajectory(bandit, loss, beta, steps, lr, deterministic=True)
        assert (run["kl"][100:].diff() > 0).all(), type(loss).__name__
        assert run["kl"][steps] - run["kl"][steps // 4] > 0.05
        assert run["kl"][steps] < bound  # a finite bandit's KL tops out at collapse onto the best action
        assert run["margin"][steps] - run["margin"][steps // 4] > 0.5  # rho itself is unbounded
    for loss in (Squared(), Hinge(), TruncatedQuadratic()):
        run = trajectory(bandit, loss, beta, steps, lr, deterministic=True)
        assert abs(run["kl"][steps] - run["kl"][steps // 4]) < 1e-10, type(loss).__name__
        assert run["kl"][steps] < bound - 1.0


def test_deterministic_squared_stops_at_least_squares(bandit):
    run = trajectory(bandit, Squared(), 1.0, 2000, 0.5, deterministic=True)
    expected = bandit.ref_logits + least_squares_margins(bandit, deterministic=True)
    torch.testing.assert_close(run["theta"][-1], expected, atol=1e-10, rtol=0)


def test_action_without_data_moves_only_through_the_normaliser(bandit):
    partial = bandit.without_action(NO_DATA)
    assert partial.support.tolist() == [True, True, True, False]
    theta = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    for loss in FAMILIES:
        (grad,) = torch.autograd.grad(gpo_loss(theta, partial, partial.preference_data(), loss, 0.5), theta)
        assert grad[NO_DATA].item() == 0.0
        assert grad[:NO_DATA].abs().max().item() > 1e-6  # the others do get pushed
        for solution in solve(partial, loss, BETAS):
            assert solution[NO_DATA].item() == partial.ref_logits[NO_DATA].item()
            shift = torch.logsumexp(partial.ref_logits, 0) - torch.logsumexp(solution, 0)
            ratio = log_pi(solution)[NO_DATA] - log_pi(partial.ref_logits)[NO_DATA]
            assert ratio.item() == pytest.approx(shift.item(), abs=1e-12)


def test_reward_of_unseen_action_is_invisible_to_gpo_but_not_to_pi_star(bandit):
    changed = make_bandit(bandit.reward + torch.tensor([0, 0, 0, 5.0], dtype=torch.float64),
                          bandit.ref_logits, bandit.without_action(NO_DATA).pair_weights)
    partial = bandit.without_action(NO_DATA)
    torch.testing.assert_close(solve(changed, Logistic(), BETAS), solve(partial, Logistic(), BETAS))
    assert not torch.allclose(kl_optimum_logits(changed, 1.0), kl_optimum_logits(partial, 1.0))


def test_gradient_descent_reaches_the_same_minimiser(bandit):
    # The solver picks one minimiser of a degenerate problem; plain gradient descent from
    # pi_ref must land on the same one, no-data action's probability included.
    partial = bandit.without_action(NO_DATA)
    run = trajectory(partial, Squared(), 1.0, 2000, 0.5, deterministic=False)
    torch.testing.assert_close(run["theta"][-1], solve(partial, Squared(), [1.0])[0], atol=1e-10, rtol=0)


@pytest.mark.slow
def test_script_writes_figures_and_results(tmp_path, run_in_process):
    overrides = [f"hydra.run.dir={tmp_path}", "betas.num=7", "trajectory.steps=200",
                 "trajectory.summary_steps=[10,200]", "solver.adam_steps=300"]
    done = run_in_process("src/bandit.py", *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pi* (KL-regularised)" in done.stdout

    import matplotlib.image

    for name in ("kl_reward_vs_beta", "kl_vs_steps", "no_data_action"):
        image = matplotlib.image.imread(tmp_path / f"bandit_{name}.png")
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600
        assert image[..., :3].std() > 0.05  # not a blank canvas

    with open(tmp_path / "bandit_sweep.csv") as handle:
        rows = list(csv.DictReader(handle))
    policies = {row["policy"] for row in rows}
    assert {"dpo", "ipo", "slic", "exponential", "truncated_quadratic", "savage"} < policies
    assert len(rows) == 2 * len(policies) * 7  # summary betas 0.1, 1, 10 lie on this grid
    dpo = [row for row in rows if row["policy"] == "dpo" and row["data"] == "full"]
    assert max(float(row["max_abs_log_ratio_to_opt"]) for row in dpo) < 1e-9
    assert (tmp_path / "bandit_trajectory.csv").stat().st_size > 0
    assert "collapse bound" in (tmp_path / "bandit_summary.txt").read_text()
