"""Exact GPO on a tabular bandit: the toy experiment of Tang et al. (2024).

A handful of actions, a reference policy pi_ref = softmax(ref_logits), a fixed
offline distribution mu over pairs of actions, a known reward r(a), and
preference labels drawn from r. Everything is a small table, so the GPO loss
can be taken in expectation over the data, with no sampling,

    L(theta) = sum_{a != b} mu({a,b}) p(a > b) f(beta rho(a, b)),

and minimised to machine precision, then compared with the KL-regularised
optimum pi*(a) ∝ pi_ref(a) exp(r(a) / beta).

The policy is pi_theta = softmax(theta), started at theta = ref_logits.
rho(a, b) = (theta_a - theta_b) - (ref_a - ref_b): the normaliser cancels, so
the loss sees only logit differences between actions that share a pair.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DTYPE = torch.float64
OPTIMUM = "pi* (KL-regularised)"  # how tables and figures name pi* (kl_optimum_logits)


@dataclass(frozen=True)
class Bandit:
    reward: torch.Tensor  # r(a), shape [K]
    ref_logits: torch.Tensor  # pi_ref = softmax(ref_logits), shape [K]
    pair_weights: torch.Tensor  # mu({a,b}) at [a,b] and [b,a]; the a < b entries sum to 1

    @property
    def support(self) -> torch.Tensor:
        """Actions that appear in at least one pair of the data."""
        return self.pair_weights.sum(dim=1) > 0

    def without_action(self, action: int) -> "Bandit":
        """The same bandit with every pair involving `action` removed from the data."""
        weights = self.pair_weights.clone()
        weights[action, :] = 0.0
        weights[:, action] = 0.0
        return make_bandit(self.reward, self.ref_logits, weights)

    def preferences(self, deterministic: bool = False) -> torch.Tensor:
        """P[a, b] = p(a > b): Bradley-Terry, or the better action always wins (ties: 1/2)."""
        gap = self.reward[:, None] - self.reward[None, :]
        if deterministic:
            return (torch.sign(gap) + 1.0) / 2.0
        return torch.sigmoid(gap)

    def preference_data(self, deterministic: bool = False):
        """The population as weighted (winner, loser) triples, the form GPO's loss expects.

        Pairs a label never produces get no row at all, rather than weight 0:
        with deterministic labels f(beta * rho) of the impossible orientation
        can overflow, and 0 * inf would poison the gradient.
        """
        weights = self.pair_weights * self.preferences(deterministic)
        winners, losers = torch.nonzero(weights > 0, as_tuple=True)
        return winners, losers, weights[winners, losers]


def make_bandit(reward, ref_logits, mu) -> Bandit:
    """mu[a][b] is the weight of showing the pair {a, b}; which one wins is the label's
    business, so mu and its transpose describe the same data. The diagonal is ignored."""
    reward = torch.as_tensor(reward, dtype=DTYPE)
    ref_logits = torch.as_tensor(ref_logits, dtype=DTYPE)
    mu = torch.as_tensor(mu, dtype=DTYPE)
    if not (reward.shape == ref_logits.shape == mu.shape[:1] and mu.shape == (len(reward),) * 2):
        raise ValueError(f"shapes disagree: reward {reward.shape}, ref {ref_logits.shape}, mu {mu.shape}")
    if (mu < 0).any():
        raise ValueError("mu must be non-negative")
    weights = (mu + mu.T).fill_diagonal_(0.0)
    total = weights.triu().sum()
    if total <= 0:
        raise ValueError("mu puts no weight on any pair of distinct actions")
    return Bandit(reward, ref_logits, weights / total)


def log_ratio(theta: torch.Tensor, bandit: Bandit) -> torch.Tensor:
    """log pi_theta(a) - log pi_ref(a)."""
    return F.log_softmax(theta, dim=-1) - F.log_softmax(bandit.ref_logits, dim=-1)


def kl(theta: torch.Tensor, bandit: Bandit) -> torch.Tensor:
    """KL(pi_theta || pi_ref), nats."""
    return (F.softmax(theta, dim=-1) * log_ratio(theta, bandit)).sum(dim=-1)


def expected_reward(theta: torch.Tensor, bandit: Bandit) -> torch.Tensor:
    return (F.softmax(theta, dim=-1) * bandit.reward).sum(dim=-1)


def kl_optimum_logits(bandit: Bandit, beta: float) -> torch.Tensor:
    """argmax_pi E_pi[r] - beta KL(pi || pi_ref): pi* ∝ pi_ref exp(r / beta)."""
    return bandit.ref_logits + bandit.reward / beta


def _margin_loss(u, data, loss) -> torch.Tensor:
    """E_mu[f(t)] with t = u_winner - u_loser, u = beta (theta - ref_logits)."""
    winners, losers, weights = data
    return (weights * loss.f(u[winners] - u[losers])).sum()


def gpo_loss(theta, bandit: Bandit, data, loss, beta: float) -> torch.Tensor:
    """Population GPO loss E_mu[f(beta rho)] for one family f (a gpo.losses callable)."""
    return _margin_loss(beta * (theta - bandit.ref_logits), data, loss)


def component_centring(bandit: Bandit) -> torch.Tensor:
    """Projection that subtracts, from a vector over actions, its mean over each
    connected component of the data's pair graph (an action with no data is a
    component of its own, so its entry is zeroed)."""
    k = len(bandit.reward)
    reach = ((bandit.pair_weights > 0) | torch.eye(k, dtype=torch.bool)).to(DTYPE)
    for _ in range(k.bit_length()):  # repeated squaring: paths of length up to 2^steps
        reach = ((reach @ reach) > 0).to(DTYPE)
    return torch.eye(k, dtype=DTYPE) - reach / reach.sum(dim=1, keepdim=True)


def implied_reward(bandit: Bandit, loss, deterministic: bool = False,
                   adam_steps: int = 1000, lbfgs_iter: int = 200,
                   stationary_tol: float = 1e-8, newton_steps: int = 5) -> torch.Tensor:
    """The minimiser u* of E_mu[f(u_winner - u_loser)]: what a family makes of the data.

    The loss sees theta only through u = beta (theta - ref_logits), so this one
    minimisation, with no beta in it, solves every beta at once:
    theta(beta) = ref_logits + u* / beta (see `solve`). Beta is a temperature
    on u*; the logistic loss with Bradley-Terry labels gives u* = r + const,
    which is exactly the KL-regularised optimum.

    u* is not unique: adding a constant to u on a connected component of the
    data's pair graph changes no margin. Optimising in the centred subspace
    picks the one with the reference's mean logit on every component, which is
    where gradient descent from pi_ref stays (its steps sum to zero on each
    component); so an action without data keeps u = 0, its reference logit.

    L-BFGS does most of the work. A kink (hinge) can stall its line search
    short of the minimum; then Adam with a decaying step size walks through
    the kinks and L-BFGS runs again. Line searches judge by loss values, which
    stop resolving u at about 1e-8, so a few Newton steps, accepted only while
    they shrink the gradient, finish smooth families to machine precision.
    Where the minimisers form a set even after centring (the hinge's flat
    faces; any margin >= 1 for hinge and truncated quadratic with
    deterministic labels) this returns one of them. With deterministic labels
    the logistic, exponential and Savage losses have no minimiser; then this
    returns wherever the step budget leaves u.
    """
    data = bandit.preference_data(deterministic)
    centre = component_centring(bandit)
    u = torch.zeros_like(bandit.reward, requires_grad=True)

    def objective(v):
        return _margin_loss(centre @ v, data, loss)

    def gradient(v):
        v = v.detach().requires_grad_(True)
        return torch.autograd.grad(objective(v), v)[0]

    def polish():
        lbfgs = torch.optim.LBFGS([u], lr=1.0, max_iter=lbfgs_iter, history_size=50,
                                  tolerance_grad=1e-14, tolerance_change=1e-16,
                                  line_search_fn="strong_wolfe")

        def closure():
            lbfgs.zero_grad()
            value = objective(u)
            value.backward()
            return value

        lbfgs.step(closure)
        return gradient(u).abs().max().item()

    if polish() > stationary_tol:
        adam = torch.optim.Adam([u], lr=0.1)
        decay = torch.optim.lr_scheduler.ExponentialLR(adam, gamma=1e-5 ** (1.0 / max(adam_steps, 1)))
        for _ in range(adam_steps):
            adam.zero_grad()
            objective(u).backward()
            adam.step()
            decay.step()
        polish()

    u = u.detach()
    for _ in range(newton_steps):
        hessian = torch.autograd.functional.hessian(objective, u)
        candidate = u - torch.linalg.pinv(hessian, hermitian=True) @ gradient(u)
        if gradient(candidate).norm() >= gradient(u).norm():
            break
        u = candidate
    return centre @ u


def policy_logits(bandit: Bandit, implied: torch.Tensor, betas) -> torch.Tensor:
    """theta(beta) = ref_logits + u / beta for each beta; shape [len(betas), K]."""
    betas = torch.as_tensor(betas, dtype=DTYPE).reshape(-1, 1)
    return bandit.ref_logits + implied / betas


def solve(bandit: Bandit, loss, betas, deterministic: bool = False, **solver) -> torch.Tensor:
    """The population GPO minimiser's logits for each beta, [len(betas), K]."""
    return policy_logits(bandit, implied_reward(bandit, loss, deterministic, **solver), betas)


def trajectory(bandit: Bandit, loss, beta: float, steps: int, lr: float,
               deterministic: bool = True) -> dict:
    """Plain gradient descent from pi_ref on the population loss, for `steps` steps.

    Fixed-step gradient descent rather than L-BFGS, so that "more optimisation"
    has a plain meaning: a loss whose infimum is only approached as rho -> inf
    keeps moving the policy for as long as it is trained.

    Returns, for the start and after every step: KL(pi || pi_ref), expected
    reward, the smallest margin beta * rho(winner, loser) over the data, and
    the logits theta.
    """
    data = bandit.preference_data(deterministic)
    winners, losers, _ = data
    thetas = bandit.ref_logits.repeat(steps + 1, 1)
    theta = bandit.ref_logits.clone().requires_grad_(True)
    for step in range(1, steps + 1):
        (grad,) = torch.autograd.grad(gpo_loss(theta, bandit, data, loss, beta), theta)
        with torch.no_grad():
            theta -= lr * grad
            thetas[step] = theta
    shift = thetas - bandit.ref_logits
    margins = beta * (shift[:, winners] - shift[:, losers])
    return {"kl": kl(thetas, bandit), "reward": expected_reward(thetas, bandit),
            "margin": margins.min(dim=1).values, "theta": thetas}
