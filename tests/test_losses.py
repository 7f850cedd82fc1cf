"""gpo.losses: every conf/loss entry against a formula written here
independently (numpy, float64), the GPO families' derived theory (f(0), f'(0),
f''(0), scale, link) against closed forms, numerical safety at extreme margins,
reference-free losses, and BCO's checkpointed running shift.

The set of losses is conf/loss/*.yaml (globbed, never a hand list): a new yaml
is instantiated, checked at rho = 0 (if a GPO family), for extreme margins, and
against its reference formula, which the REFERENCE table below must then hold
(keyed by class, so a new yaml for an existing class needs nothing new).
"""

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import gpo.losses as losses
from conftest import compose_train
from gpo.infra.errors import InputError
from gpo.losses import GPOLoss, PairLogps, PreferenceLoss

ROOT = Path(__file__).resolve().parents[1]
LOSS_YAMLS = {p.stem: p for p in sorted((ROOT / "conf" / "loss").glob("*.yaml"))}
NAMES = sorted(LOSS_YAMLS)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny tensors: threads only add overhead, a lot of it on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def loss_node(name):
    """The loss node of a conf/loss yaml (a `# @package _global_` option, as kto's, holds it under `loss`)."""
    cfg = OmegaConf.load(LOSS_YAMLS[name])
    return cfg.loss if "loss" in cfg and "_target_" not in cfg else cfg


def load(name, **overrides) -> PreferenceLoss:
    cfg = loss_node(name)
    cfg.merge_with(overrides)
    return instantiate(cfg)


GPO_NAMES = [n for n in NAMES if isinstance(load(n), GPOLoss)]
# Losses on preference pairs; KTO (unpaired examples) is checked in tests/test_axes.py.
PAIR_NAMES = [n for n in NAMES if load(n).inputs is PairLogps]


# --------------------------------------------------------------------------------------------
# Reference formulas, independent of the implementation: numpy, float64.
# x: pc, pr, rc, rr (log-probs summed over response tokens), lc, lr (lengths).
# --------------------------------------------------------------------------------------------

def softplus(z):
    return np.logaddexp(0.0, z)


def log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def sigmoid(z):
    return np.exp(log_sigmoid(z))


def derived(x):
    lw, ll = x.pc - x.rc, x.pr - x.rr
    return lw, ll, lw - ll, x.pc / x.lc, x.pr / x.lr


def ref_logistic(x, b):
    return -log_sigmoid(b * derived(x)[2])


def ref_bco(x, b):
    # First call of a fresh module in training mode: delta = this batch's mean reward.
    lw, ll, *_ = derived(x)
    delta = np.concatenate([b * lw, b * ll]).mean()
    return -log_sigmoid(b * lw - delta) - log_sigmoid(-(b * ll - delta))


def ref_chipo(x, b, reward_bound):
    lw, ll, *_ = derived(x)
    logits = b * (np.exp(lw) + lw) - b * (np.exp(ll) + ll)
    return -log_sigmoid(np.clip(logits, -2 * reward_bound, 2 * reward_bound))


def ref_orpo(x, b):
    *_, aw, al = derived(x)
    log_odds = (aw - al) - (np.log(1 - np.exp(aw)) - np.log(1 - np.exp(al)))
    return -aw - b * log_sigmoid(log_odds)


def ref_discopop(x, b, tau):
    t = b * derived(x)[2]
    s = sigmoid(t / tau)
    return -log_sigmoid(t) * (1 - s) + np.exp(-t) * s


def ref_exo(x, b, eps):
    t = b * derived(x)[2]
    qw, ql = sigmoid(t), sigmoid(-t)
    return qw * (np.log(qw) - np.log(1 - eps)) + ql * (np.log(ql) - np.log(eps))


REFERENCE = {  # class name -> reference(x, beta, **hyperparameters from the yaml)
    "Logistic": ref_logistic,
    "Squared": lambda x, b: (b * derived(x)[2] - 1) ** 2,
    "Hinge": lambda x, b: np.maximum(0.0, 1 - b * derived(x)[2]),
    "Exponential": lambda x, b: np.exp(-b * derived(x)[2]),
    "TruncatedQuadratic": lambda x, b: np.maximum(0.0, 1 - b * derived(x)[2]) ** 2,
    "Savage": lambda x, b: 1 / (1 + np.exp(b * derived(x)[2])) ** 2,
    "Exo": ref_exo,
    "ConservativeLogistic": lambda x, b, eps: (
        -(1 - eps) * log_sigmoid(b * derived(x)[2]) - eps * log_sigmoid(-b * derived(x)[2])
    ),
    "RobustLogistic": lambda x, b, eps: (
        (-(1 - eps) * log_sigmoid(b * derived(x)[2]) + eps * log_sigmoid(-b * derived(x)[2])) / (1 - 2 * eps)
    ),
    "DiscoPOP": ref_discopop,
    "ChiPO": ref_chipo,
    "RPO": lambda x, b, eta, token_mean: ref_logistic(x, b) - eta * b * (x.pc / x.lc if token_mean else x.pc),
    "IPOLengthNormalised": lambda x, b: (
        ((x.pc / x.lc - x.rc / x.lc) - (x.pr / x.lr - x.rr / x.lr) - 1 / (2 * b)) ** 2
    ),
    "SimPO": lambda x, b, gamma: -log_sigmoid(b * (x.pc / x.lc - x.pr / x.lr) - gamma),
    "NCA": lambda x, b: (
        -log_sigmoid(b * derived(x)[0]) - 0.5 * log_sigmoid(-b * derived(x)[0]) - 0.5 * log_sigmoid(-b * derived(x)[1])
    ),
    "BCO": ref_bco,
    "APOZero": lambda x, b: (1 - sigmoid(b * derived(x)[0])) + sigmoid(b * derived(x)[1]),
    "APODown": lambda x, b: sigmoid(b * derived(x)[0]) + (1 - sigmoid(b * derived(x)[2])),
    "SPPOHard": lambda x, b: (derived(x)[0] - 0.5 / b) ** 2 + (derived(x)[1] + 0.5 / b) ** 2,
    "ORPO": ref_orpo,
    "SFT": lambda x, b: -x.pc / x.lc,
    "DPOP": lambda x, b, penalty: softplus(-b * (derived(x)[2] - penalty * np.maximum(0.0, -derived(x)[0]))),
    "CalDPO": lambda x, b: (softplus(-derived(x)[2]) + 0.5 * ((derived(x)[0] - 1 / (2 * b)) ** 2
                                                              + (derived(x)[1] + 1 / (2 * b)) ** 2)),
    "CPO": lambda x, b, alpha: softplus(-b * (x.pc - x.pr)) - alpha * x.pc / x.lc,
    "SimPER": lambda x, b: -np.exp(x.pc / x.lc) + np.exp(x.pr / x.lr),
    "AlphaPO": lambda x, b, alpha, gamma: softplus(-(b * ((1 - np.exp(-alpha * x.pc / x.lc)) / alpha
                                                          - (1 - np.exp(-alpha * x.pr / x.lr)) / alpha) - gamma)),
}


def reference_loss(cfg, x, beta):
    cls = cfg["_target_"].rsplit(".", 1)[-1]
    if cls == "WeightedSum":
        return sum(float(t.get("weight", 1.0)) * reference_loss(t["loss"], x, beta) for t in cfg["terms"])
    if cls not in REFERENCE:
        pytest.fail(f"no reference formula for {cls}: add one to REFERENCE in tests/test_losses.py")
    params = {k: v for k, v in cfg.items() if k != "_target_"}
    return REFERENCE[cls](x, beta, **params)


def random_pairs(n=64, seed=0, spread=1.5):
    """Reference log-probs of realistic size, policy within a few nats of them."""
    rng = np.random.default_rng(seed)
    lc, lr = rng.integers(1, 40, n).astype(float), rng.integers(1, 40, n).astype(float)
    rc, rr = -rng.uniform(0.2, 3.0, n) * lc, -rng.uniform(0.2, 3.0, n) * lr
    pc, pr = rc + rng.normal(0, spread, n), rr + rng.normal(0, spread, n)
    pc, pr = np.minimum(pc, -1e-3), np.minimum(pr, -1e-3)  # log-probs are negative
    return SimpleNamespace(pc=pc, pr=pr, rc=rc, rr=rr, lc=lc, lr=lr)


def to_logps(x, dtype=torch.float64, reference=True, requires_grad=False):
    t = lambda a: torch.tensor(a, dtype=dtype)  # noqa: E731
    pc, pr = t(x.pc).requires_grad_(requires_grad), t(x.pr).requires_grad_(requires_grad)
    return PairLogps(pc, pr, t(x.rc) if reference else None, t(x.rr) if reference else None,
                     torch.tensor(x.lc).long(), torch.tensor(x.lr).long())


# Extra hyperparameter settings checked against the formulas beyond the yaml defaults.
EXTRA = [("chipo", {"reward_bound": 0.5}), ("rpo", {"token_mean": True}), ("cdpo", {"eps": 0.0}),
         ("robust", {"eps": 0.3}), ("exo", {"eps": 0.2}), ("discopop", {"tau": 0.5}), ("simpo", {"gamma": 2.0}),
         ("dpop", {"penalty": 5.0}), ("cpo", {"alpha": 0.0}), ("alphapo", {"alpha": -0.5, "gamma": 1.0})]


@pytest.mark.parametrize("name,overrides", [(n, {}) for n in PAIR_NAMES] + EXTRA,
                         ids=lambda v: str(v) if v else "defaults")
def test_loss_matches_reference_formula(name, overrides):
    cfg = loss_node(name)
    cfg.merge_with(overrides)
    # BCO keeps its running shift in a float32 buffer (module state), so float32 rounding applies.
    rtol = 1e-6 if "BCO" in OmegaConf.to_yaml(cfg) else 1e-10
    for seed, beta in enumerate([0.1, 1.0, 3.0]):
        x = random_pairs(seed=seed)
        got = instantiate(cfg)(to_logps(x), beta)  # fresh module each time (BCO's first call)
        assert got.shape == (len(x.pc),) and got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), reference_loss(OmegaConf.to_container(cfg), x, beta),
                                   rtol=rtol, atol=1e-12)


def test_chipo_clip_is_exercised_by_the_formula_test():
    x, beta = random_pairs(seed=2), 3.0
    lw, ll = x.pc - x.rc, x.pr - x.rr
    logits = beta * (np.exp(lw) + lw - np.exp(ll) - ll)
    assert (np.abs(logits) > 2 * 10.0).any() and (np.abs(logits) < 2 * 10.0).any()  # seed 2, beta 3 in the test above
    assert (np.abs(beta * (lw - ll)) > 1.0).any()


@pytest.mark.parametrize("name", PAIR_NAMES)
def test_gradient_matches_finite_differences(name):
    loss = load(name).eval()  # eval: BCO's shift stays fixed between gradcheck's calls
    x = random_pairs(n=6, seed=3)
    reference = (torch.tensor(x.rc), torch.tensor(x.rr))
    lengths = (torch.tensor(x.lc).long(), torch.tensor(x.lr).long())

    def fn(pc, pr):
        return loss(PairLogps(pc, pr, *reference, *lengths), 0.7)

    inputs = (torch.tensor(x.pc, requires_grad=True), torch.tensor(x.pr, requires_grad=True))
    assert torch.autograd.gradcheck(fn, inputs)


# --------------------------------------------------------------------------------------------
# Every conf/loss entry
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_every_loss_config_instantiates_to_a_preference_loss(name):
    loss = load(name)
    assert isinstance(loss, PreferenceLoss) and isinstance(loss, torch.nn.Module)
    assert isinstance(loss.needs_reference, bool)
    assert type(loss).__doc__  # formula and paper
    if isinstance(loss, GPOLoss):
        assert set(loss.theory()) >= {"f0", "df0", "d2f0", "regularisation_scale"}
    else:
        assert loss.theory() == {}


def test_a_loss_config_composes_within_the_train_config():
    cfg = compose_train(["loss=mpo"])
    loss = instantiate(cfg.loss)
    assert isinstance(loss, losses.WeightedSum) and len(loss.terms) == 3


@pytest.mark.parametrize("name", GPO_NAMES)
def test_gpo_loss_at_zero_margin_is_f0(name):
    loss = load(name)
    x = random_pairs(n=8)
    x.pc, x.pr = x.rc + 0.3, x.rr + 0.3  # policy = reference up to a shared shift: rho = 0
    for beta in (0.1, 2.0):
        got = loss(to_logps(x), beta)
        np.testing.assert_allclose(got.numpy(), loss.f0, rtol=1e-12)


def test_docs_table_lists_every_loss_config():
    doc = (ROOT / "docs" / "losses.md").read_text()
    for name in NAMES:
        loss = load(name)
        assert f"| `{name}` |" in doc, f"docs/losses.md has no row for conf/loss/{name}.yaml"
        assert f"`{type(loss).__name__}`" in doc


# --------------------------------------------------------------------------------------------
# Numerical safety
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PAIR_NAMES)
def test_extreme_margins_give_finite_loss_and_gradient(name):
    """float32, log-probs down to -1e4, |beta * rho| up to 1e4 (beta = 0.5) and 2e4 (beta = 1)."""
    loss = load(name)
    values = torch.tensor([-1e4, -3e3, -1.0, -1e-4])
    grid = torch.cartesian_prod(values, values, values, values)  # pc, pr, rc, rr: every combination
    pc, pr = grid[:, 0].clone().requires_grad_(), grid[:, 1].clone().requires_grad_()
    for lengths in (1, 100):
        n = torch.full((len(grid),), lengths)
        for beta in (0.5, 1.0, 1e-2):
            logps = PairLogps(pc, pr, grid[:, 2], grid[:, 3], n, n)  # |rho| up to 2e4
            for mode in (loss.train, loss.eval):
                mode()
                out = loss(logps, beta)
                assert out.dtype == torch.float32 and torch.isfinite(out).all(), out[~torch.isfinite(out)]
                gpc, gpr = torch.autograd.grad(out.sum(), (pc, pr), allow_unused=True, materialize_grads=True)
                assert torch.isfinite(gpc).all() and torch.isfinite(gpr).all()


def test_log1mexp_is_accurate_and_finite():
    from gpo.losses.zoo import log1mexp

    x = torch.tensor([-1e4, -50.0, -1.0, -math.log(2), -1e-3, -1e-10, 0.0], dtype=torch.float64, requires_grad=True)
    y = log1mexp(x)
    expected = [math.log1p(-math.exp(-1e4)), math.log1p(-math.exp(-50)), math.log(1 - math.exp(-1)), math.log(0.5),
                math.log(-math.expm1(-1e-3)), math.log(-math.expm1(-1e-10))]
    np.testing.assert_allclose(y[:-1].detach().numpy(), expected, rtol=1e-12)
    assert torch.isfinite(y).all()  # a log-prob that rounded to 0 is clamped, not -inf
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(g).all()


# --------------------------------------------------------------------------------------------
# Reference-free losses
# --------------------------------------------------------------------------------------------

def test_reference_free_losses():
    free = {n for n in NAMES if not load(n).needs_reference}
    assert {"simpo", "orpo", "sft", "cpo", "simper", "alphapo"} <= free
    x = random_pairs(n=8)
    for name in free:
        loss = load(name)
        got = loss(to_logps(x, reference=False), 0.5)
        np.testing.assert_allclose(got.numpy(), loss(to_logps(x), 0.5).numpy())  # reference ignored


def test_weighted_sum_needs_a_reference_iff_a_term_does():
    sft, simpo, dpo = ({"_target_": f"gpo.losses.{c}"} for c in ("SFT", "SimPO", "Logistic"))
    free = instantiate({"_target_": "gpo.losses.WeightedSum", "terms": [{"loss": sft, "weight": 1.0},
                                                                        {"loss": simpo, "weight": 0.5}]})
    assert free.needs_reference is False
    x = random_pairs(n=8)
    assert torch.isfinite(free(to_logps(x, reference=False), 0.5)).all()
    mixed = instantiate({"_target_": "gpo.losses.WeightedSum", "terms": [{"loss": sft}, {"loss": dpo}]})
    assert mixed.needs_reference is True
    assert load("mpo").needs_reference is True


# --------------------------------------------------------------------------------------------
# BCO: running reward shift
# --------------------------------------------------------------------------------------------

def test_bco_running_shift_updates_in_train_mode_only_and_is_checkpointed():
    bco, beta = losses.BCO(), 0.4
    batches = [to_logps(random_pairs(n=16, seed=s)) for s in range(3)]
    batch_means = [torch.cat([beta * b.chosen_logratio, beta * b.rejected_logratio]).mean().item() for b in batches]
    for i, b in enumerate(batches):
        bco(b, beta)
        assert bco.running_mean.item() == pytest.approx(np.mean(batch_means[: i + 1]), rel=1e-6)
    assert int(bco.running_count) == 3

    bco.eval()
    before = bco.running_mean.clone()
    eval_loss = bco(batches[0], beta)
    bco(batches[1], beta)
    assert torch.equal(bco.running_mean, before) and int(bco.running_count) == 3

    state = bco.state_dict()
    assert {"running_mean", "running_count"} <= set(state)
    restored = losses.BCO()
    restored.load_state_dict(state)
    restored.eval()
    torch.testing.assert_close(restored(batches[0], beta), eval_loss)
    assert not torch.allclose(losses.BCO().eval()(batches[0], beta), eval_loss)  # the shift matters


def test_bco_inside_a_weighted_sum_is_saved_and_follows_train_eval():
    mpo = load("mpo")
    assert any(k.endswith("running_mean") for k in mpo.state_dict())
    mpo(to_logps(random_pairs(n=4)), 0.1)
    bco = next(m for m in mpo.modules() if isinstance(m, losses.BCO))
    assert int(bco.running_count) == 1
    mpo.eval()
    mpo(to_logps(random_pairs(n=4)), 0.1)
    assert int(bco.running_count) == 1


# --------------------------------------------------------------------------------------------
# GPO theory: Taylor coefficients, regularisation scale and link
# --------------------------------------------------------------------------------------------

logit = lambda p: np.log(p / (1 - p))  # noqa: E731

# f(t), f'(0), f''(0), f''(0)/|f'(0)| and t*(p): the paper's table (GPO.md) for the six families;
# derived here from f for the others (see each class's docstring), at the hyperparameters in HYPER.
D = 0.05  # DiscoPOP tau
HYPER = {"Exo": {"eps": 1e-3}, "ConservativeLogistic": {"eps": 0.1}, "RobustLogistic": {"eps": 0.1},
         "DiscoPOP": {"tau": D}}
THEORY = {
    "Logistic": (lambda t: math.log1p(math.exp(-t)), -1 / 2, 1 / 4, 1 / 2, logit),
    "Squared": (lambda t: (t - 1) ** 2, -2, 2, 1, lambda p: 2 * p - 1),
    "Hinge": (lambda t: max(0.0, 1 - t), -1, 0, 0, lambda p: np.sign(2 * p - 1)),
    "Exponential": (lambda t: math.exp(-t), -1, 1, 1, lambda p: logit(p) / 2),
    "TruncatedQuadratic": (lambda t: max(0.0, 1 - t) ** 2, -2, 2, 1, lambda p: 2 * p - 1),
    "Savage": (lambda t: 1 / (1 + math.exp(t)) ** 2, -1 / 4, 1 / 8, 1 / 2, logit),
    "Exo": (None, -math.log(999) / 4, 1 / 4, 1 / math.log(999), lambda p: (2 * p - 1) * math.log(999)),
    "ConservativeLogistic": (None, -0.8 / 2, 1 / 4, 1 / (2 * 0.8), lambda p: logit(0.1 + 0.8 * p)),
    "RobustLogistic": (None, -1 / (2 * 0.8), 1 / 4, 0.8 / 2, lambda p: logit((p - 0.1) / 0.8)),
    "DiscoPOP": (None, -3 / 4 + (1 - math.log(2)) / (4 * D), 5 / 8 - 1 / (4 * D),
                 (5 / 8 - 1 / (4 * D)) / abs(-3 / 4 + (1 - math.log(2)) / (4 * D)), None),
}


def family(cls) -> GPOLoss:
    return getattr(losses, cls)(**HYPER.get(cls, {}))


@pytest.mark.parametrize("cls", [c for c in THEORY if THEORY[c][0] is not None])
def test_paper_families_values_match_closed_form(cls):
    f, closed = family(cls), THEORY[cls][0]
    for t in [-3.0, -0.7, -0.1, 0.0, 0.3, 0.999, 1.5, 4.0]:
        assert f.f(torch.tensor(t, dtype=torch.float64)).item() == pytest.approx(closed(t), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("cls", list(THEORY))
def test_taylor_coefficients_and_scale_match_closed_forms(cls):
    f = family(cls)
    _, df0, d2f0, scale, _ = THEORY[cls]
    assert (f.df0, f.d2f0, f.regularisation_scale) == pytest.approx((df0, d2f0, scale), rel=1e-10, abs=1e-12)
    # and autograd's second derivative agrees with finite differences (every f is smooth at 0)
    h = 1e-4
    fm, f0, fp = f.f(torch.tensor([-h, 0.0, h], dtype=torch.float64)).tolist()
    assert f0 == pytest.approx(f.f0, rel=1e-12)
    assert (fp - 2 * f0 + fm) / h**2 == pytest.approx(f.d2f0, rel=1e-4, abs=1e-6)


P = np.array([0.05, 0.2, 0.4, 0.6, 0.75, 0.95])


@pytest.mark.parametrize("cls", [c for c in THEORY if THEORY[c][4] is not None])
def test_link_matches_closed_form(cls):
    link = THEORY[cls][4]
    p = P if cls != "RobustLogistic" else P[(P > 0.1) & (P < 0.9)]  # robust: finite only for eps < p < 1 - eps
    np.testing.assert_allclose(family(cls).link(p), link(p), atol=1e-5)


@pytest.mark.parametrize("name", GPO_NAMES)
def test_link_is_a_minimiser(name):
    """For every GPO family (any yaml): t*(p) minimises p f(t) + (1 - p) f(-t) locally and globally
    on the search range, or the objective still decreases at the range's edge (no minimiser)."""
    from gpo.losses.base import LINK_RANGE

    loss = load(name)

    def objective(p, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return (p * loss.f(t) + (1 - p) * loss.f(-t)).numpy()

    grid = np.linspace(-LINK_RANGE, LINK_RANGE, 12345)  # not the implementation's grid
    for p, t in zip(P, loss.link(P)):
        if abs(t) > LINK_RANGE - 1:  # unbounded below in this direction (robust DPO at p outside (eps, 1 - eps))
            assert objective(p, t) < objective(p, t - np.sign(t))
            continue
        assert objective(p, t) <= objective(p, t - 0.01) and objective(p, t) <= objective(p, t + 0.01)
        assert objective(p, t) <= objective(p, grid).min() + 1e-9


def test_discopop_link_moves_away_from_zero():
    """DiscoPOP has a bump at t = 0 (f'(0) > 0): even weak preferences get a margin of clear sign."""
    t = family("DiscoPOP").link(np.array([0.45, 0.55]))
    assert t[0] < -0.1 and t[1] > 0.1


def test_savage_is_decreasing_but_not_convex_below_minus_log_two():
    f = losses.Savage()
    t = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    assert (f.f(t).diff() < 0).all()
    second = f.f(t).diff().diff()
    assert (second[t[1:-1] < -math.log(2) - 0.05] < 0).all() and (second[t[1:-1] > -math.log(2) + 0.05] > 0).all()


# --------------------------------------------------------------------------------------------
# 2024-25 losses: what the formulas above do not cover
# --------------------------------------------------------------------------------------------

def test_dpop_takes_any_gpo_family_and_is_the_family_while_the_chosen_response_gains():
    x, beta = random_pairs(seed=7), 0.5
    lw, ll, rho, *_ = derived(x)
    got = losses.DPOP(penalty=3.0, family=losses.Squared())(to_logps(x), beta).numpy()
    np.testing.assert_allclose(got, (beta * (rho - 3.0 * np.maximum(0.0, -lw)) - 1) ** 2, rtol=1e-10)
    gaining = lw > 0  # no penalty: DPOP is its family there
    np.testing.assert_allclose(got[gaining], ((beta * rho - 1) ** 2)[gaining], rtol=1e-10)
    assert gaining.any() and (~gaining).any()


def test_alphapo_tends_to_simpo_as_alpha_tends_to_zero():
    x = random_pairs(seed=8)
    simpo = losses.SimPO(gamma=0.5)(to_logps(x), 2.0)
    np.testing.assert_allclose(losses.AlphaPO(alpha=1e-7, gamma=0.5)(to_logps(x), 2.0), simpo, rtol=1e-5)
    with pytest.raises(InputError, match="loss=simpo"):
        losses.AlphaPO(alpha=0.0)


def test_cal_dpo_calibration_pulls_the_implied_rewards_to_plus_minus_one_over_two_beta():
    beta = 0.25
    x = random_pairs(n=4, seed=9)
    x.pc, x.pr = x.rc + 1 / (2 * beta), x.rr - 1 / (2 * beta)  # log-ratios at the calibration targets
    got = losses.CalDPO()(to_logps(x), beta).numpy()
    np.testing.assert_allclose(got, softplus(-1 / beta), rtol=1e-12)  # only the contrastive term is left
