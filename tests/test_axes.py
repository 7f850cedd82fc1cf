"""The method's axes (gpo.losses: rho, margin, labels, weighting, beta_schedule,
aggregate) and KTO, each against a closed form written here in numpy (float64)
on PairLogps-like inputs, and the one compatibility check that refuses parts
that cannot work together. Every option of every axis trains through the real
configs in tests/test_methods.py."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gpo.infra.config import group_options
from gpo.infra.errors import InputError
from gpo.losses import KTO, ConservativeLogistic, ExampleLogps, Logistic, PairLogps, Squared, TokenLogps
from gpo.losses.aggregate import AOT, DrDPO, Mean
from gpo.losses.axes import WPO, HardLabels, LengthMargin, NoMargin, NoWeighting, ScoreMargin, SoftLabels
from gpo.losses.rho import LD, SCORES, FDivergence, SamPO, Sum
from gpo.losses.rho import Mean as MeanRho
from gpo.losses.schedules import BetaDPO, Constant, Cosine, Linear
from gpo.training.composition import AXES, Composition

AXIS_OPTIONS = [(group, option) for group in AXES for option in group_options(group)]


def softplus(z):
    return np.logaddexp(0.0, z)


def pairs(n=16, seed=0, width=12):
    """Per-token log-probs of policy and reference, lengths 1..width, and the PairLogps built from them."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, width + 1, size=(2, n))
    mask = np.arange(width)[None, None, :] < lengths[:, :, None]  # [chosen/rejected, pair, token]
    reference = -rng.uniform(0.1, 3.0, size=(2, n, width)) * mask
    policy = (reference + rng.normal(0, 0.3, size=(2, n, width))) * mask
    square = -rng.uniform(0.5, 2.0, size=(2, n, width)) * mask  # log sum_v p_v^2 <= 0
    t = lambda a: torch.tensor(np.concatenate([a[0], a[1]]))  # noqa: E731  rows: chosen, then rejected
    tokens = TokenLogps(t(policy), t(reference), t(mask), t(square))
    logps = PairLogps(torch.tensor(policy[0].sum(-1)), torch.tensor(policy[1].sum(-1)),
                      torch.tensor(reference[0].sum(-1)), torch.tensor(reference[1].sum(-1)),
                      torch.tensor(lengths[0], dtype=torch.float64), torch.tensor(lengths[1], dtype=torch.float64),
                      tokens=tokens)
    return SimpleNamespace(policy=policy, reference=reference, mask=mask, square=square, lengths=lengths,
                           ratio=(policy - reference), logps=logps)


def dpo(t):
    return softplus(-t)


# ------------------------------------------------------------------ rho


def test_rho_sum_is_the_summed_log_ratio_and_changes_nothing():
    x = pairs()
    assert Sum()(x.logps, {}, 0) is x.logps
    rho = x.ratio[0].sum(-1) - x.ratio[1].sum(-1)
    np.testing.assert_allclose(x.logps.margin.numpy(), rho, rtol=1e-12)


def test_rho_mean_divides_each_log_ratio_by_its_length():
    x = pairs()
    scored = MeanRho()(x.logps, {}, 0)
    rho = x.ratio[0].sum(-1) / x.lengths[0] - x.ratio[1].sum(-1) / x.lengths[1]
    np.testing.assert_allclose(scored.margin.numpy(), rho, rtol=1e-12)
    np.testing.assert_allclose(Logistic()(scored, 0.7).numpy(), dpo(0.7 * rho), rtol=1e-12)
    assert torch.equal(scored.policy_chosen, x.logps.policy_chosen)  # log-probs themselves untouched


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_rho_ld_weights_the_tokens_past_the_shorter_response(alpha):
    x = pairs()
    shared = np.minimum(x.lengths[0], x.lengths[1])
    front = np.arange(x.ratio.shape[-1])[None, :] < shared[:, None]

    def score(r):
        return (r * front).sum(-1) + alpha * (r * ~front).sum(-1)

    scored = LD(alpha)(x.logps, {}, 0)
    np.testing.assert_allclose(scored.margin.numpy(), score(x.ratio[0]) - score(x.ratio[1]), rtol=1e-12, atol=1e-12)
    if alpha == 1.0:  # LD-DPO at alpha = 1 is DPO
        np.testing.assert_allclose(scored.margin.numpy(), x.logps.margin.numpy(), rtol=1e-12)


def test_rho_sampo_keeps_the_shorter_response_and_draws_as_many_tokens_of_the_longer():
    x = pairs(n=64)
    short = np.minimum(x.lengths[0], x.lengths[1])
    first, again, other = (SamPO(seed=3)(x.logps, {}, step) for step in (5, 5, 6))
    assert torch.equal(first.chosen_score, again.chosen_score)  # (seed, step) fixes the draw
    assert not torch.equal(first.chosen_score, other.chosen_score)
    for side, scores in ((0, first.chosen_score.numpy()), (1, first.rejected_score.numpy())):
        full = x.ratio[side].sum(-1)
        shorter = x.lengths[side] == short
        np.testing.assert_allclose(scores[shorter], full[shorter], rtol=1e-12)  # the shorter keeps all its tokens
        for i in np.flatnonzero(~shorter):  # the longer: a sum of exactly `short` of its own token log-ratios
            values = x.ratio[side, i, : x.lengths[side, i]]
            assert any(math.isclose(scores[i], total, rel_tol=1e-9, abs_tol=1e-9)
                       for total in subset_sums(values, short[i]))


def subset_sums(values, k, limit=20000):
    from itertools import combinations, islice

    return [sum(c) for c in islice(combinations(values, int(k)), limit)]


def test_rho_sampo_is_unbiased_for_the_down_scaled_sum():
    """E[score of the longer response] = (min length / its length) * its summed log-ratio."""
    x = pairs(n=8, seed=1)
    draws = np.stack([SamPO(seed=0)(x.logps, {}, step).chosen_score.numpy() for step in range(3000)])
    short = np.minimum(x.lengths[0], x.lengths[1])
    expected = x.ratio[0].sum(-1) * short / x.lengths[0]
    stderr = draws.std(0) / math.sqrt(len(draws)) + 1e-12
    assert (np.abs(draws.mean(0) - expected) < 5 * stderr + 1e-9).all()


@pytest.mark.parametrize("divergence", list(SCORES))
def test_rho_fdiv_scores_are_the_derivatives_of_f(divergence):
    x, alpha = pairs(), 0.3
    closed = {
        "reverse_kl": lambda r: r,
        "forward_kl": lambda r: 1 - np.exp(-r),
        "js_divergence": lambda r: np.log(2) - softplus(-r),
        "alpha_divergence": lambda r: (1 - np.exp(-alpha * r)) / alpha,
    }[divergence]
    lw, ll = x.ratio[0].sum(-1), x.ratio[1].sum(-1)
    scored = FDivergence(divergence, alpha)(x.logps, {}, 0)
    np.testing.assert_allclose(scored.margin.numpy(), closed(lw) - closed(ll), rtol=1e-10, atol=1e-12)


def test_rho_fdiv_alpha_divergence_spans_reverse_and_forward_kl():
    x = pairs()
    forward = FDivergence("forward_kl")(x.logps, {}, 0).margin
    np.testing.assert_allclose(FDivergence("alpha_divergence", 1.0)(x.logps, {}, 0).margin, forward, rtol=1e-12)
    np.testing.assert_allclose(FDivergence("alpha_divergence", 1e-7)(x.logps, {}, 0).margin, x.logps.margin,
                               rtol=1e-5)
    far = torch.tensor([-1e4, 1e4], dtype=torch.float32, requires_grad=True)  # finite far from the reference
    for name in SCORES:
        value = FDivergence(name, 0.5).score(far)
        (gradient,) = torch.autograd.grad(value.sum(), far)
        assert torch.isfinite(value).all() and torch.isfinite(gradient).all(), name


# ------------------------------------------------------------------ margin and labels


def test_margin_length_is_r_dpo():
    x, beta, alpha = pairs(), 0.4, 0.05
    shifted = LengthMargin(alpha)(x.logps, {})
    t = beta * (x.ratio[0].sum(-1) - x.ratio[1].sum(-1)) + alpha * (x.lengths[0] - x.lengths[1])
    np.testing.assert_allclose(Logistic()(shifted, beta).numpy(), dpo(t), rtol=1e-12)
    np.testing.assert_allclose(Squared()(shifted, beta).numpy(), (t - 1) ** 2, rtol=1e-12)  # any GPO family


def test_margin_score_is_odpo():
    x, beta, alpha = pairs(), 0.4, 0.7
    rng = np.random.default_rng(2)
    rejected = rng.uniform(0, 5, 16)
    chosen = rejected + rng.uniform(0.1, 4, 16)
    batch = {"score_chosen": torch.tensor(chosen), "score_rejected": torch.tensor(rejected)}
    shifted = ScoreMargin(alpha)(x.logps, batch)
    t = beta * (x.ratio[0].sum(-1) - x.ratio[1].sum(-1)) - alpha * np.log(chosen - rejected)
    np.testing.assert_allclose(Logistic()(shifted, beta).numpy(), dpo(t), rtol=1e-12)


def test_soft_labels_minimise_the_population_loss_and_label_smoothing_is_their_special_case():
    x, beta = pairs(), 0.5
    p = np.random.default_rng(4).uniform(0, 1, 16)
    soft = SoftLabels("p")(x.logps, {"p": torch.tensor(p)})
    t = beta * (x.ratio[0].sum(-1) - x.ratio[1].sum(-1))
    np.testing.assert_allclose(Logistic()(soft, beta).numpy(), p * dpo(t) + (1 - p) * dpo(-t), rtol=1e-12)
    np.testing.assert_allclose(Squared()(soft, beta).numpy(), p * (t - 1) ** 2 + (1 - p) * (-t - 1) ** 2, rtol=1e-12)
    eps = 0.1  # cDPO = soft labels p = 1 - eps for every pair
    smoothed = SoftLabels("p")(x.logps, {"p": torch.full((16,), 1 - eps, dtype=torch.float64)})
    np.testing.assert_allclose(Logistic()(smoothed, beta), ConservativeLogistic(eps)(x.logps, beta), rtol=1e-12)
    certain = SoftLabels("p")(x.logps, {"p": torch.ones(16, dtype=torch.float64)})
    np.testing.assert_allclose(Logistic()(certain, beta), Logistic()(x.logps, beta), rtol=1e-12)


def test_neutral_axes_return_their_input():
    x = pairs()
    for axis in (NoMargin(), HardLabels(), NoWeighting()):
        assert axis(x.logps, {}) is x.logps and axis.neutral


# ------------------------------------------------------------------ weighting


def test_wpo_weights_are_the_aligned_length_normalised_probabilities():
    x, beta = pairs(), 0.3
    weighted = WPO()(x.logps, {})
    mean = ((x.policy - x.square) * x.mask).sum(-1) / x.mask.sum(-1)
    weight = np.exp(mean[0]) * np.exp(mean[1])
    np.testing.assert_allclose(weighted.weight.numpy(), weight, rtol=1e-12)
    t = beta * (x.ratio[0].sum(-1) - x.ratio[1].sum(-1))
    np.testing.assert_allclose(Mean()(Logistic(), weighted, beta).item(), (weight * dpo(t)).mean(), rtol=1e-12)
    assert not weighted.weight.requires_grad


# ------------------------------------------------------------------ beta schedules


def test_constant_linear_and_cosine_schedules():
    x = pairs()
    assert Constant()(0.2, x.logps, lambda: 0.7) == (0.2, x.logps)
    for progress, linear, cosine in [(0.0, 0.2, 0.2), (0.5, 0.2 * 0.75, 0.2 * 0.75), (1.0, 0.1, 0.1)]:
        assert Linear(final=0.5)(0.2, x.logps, lambda p=progress: p)[0] == pytest.approx(linear)
        assert Cosine(final=0.5)(0.2, x.logps, lambda p=progress: p)[0] == pytest.approx(cosine)
    assert Cosine(final=0.5)(0.2, x.logps, lambda: 0.25)[0] == pytest.approx(0.2 * (0.5 + 0.5 * (1 + 2**-0.5) / 2))


def test_beta_dpo_first_step_closed_form():
    """Statistics from 0 with momentum m, the filter's kept share, beta from the kept pairs' mean margin."""
    x, beta, alpha, m = pairs(n=20), 0.1, 0.6, 0.9
    margins = x.logps.margin.numpy()
    schedule = BetaDPO(alpha=alpha, filter_fraction=0.25, momentum=m, seed=1)
    batch_beta, kept = schedule(beta, x.logps, lambda: 0.0)
    mean, std = (1 - m) * margins.mean(), (1 - m) * margins.std(ddof=1)
    assert schedule.margin_mean.item() == pytest.approx(mean) and schedule.margin_std.item() == pytest.approx(std)
    keep = kept.weight.numpy() > 0
    assert keep.sum() == 15 and np.allclose(kept.weight.numpy()[keep], 20 / 15)
    assert batch_beta == pytest.approx(beta * (1 + alpha * (margins[keep].mean() - mean)))
    t = beta * margins  # the loss averages over the kept pairs only
    np.testing.assert_allclose(Mean()(Logistic(), kept, beta).item(), dpo(t[keep]).mean(), rtol=1e-12)
    assert {"margin_mean", "margin_std", "updates"} <= set(schedule.state_dict())  # checkpointed


def test_beta_dpo_without_filter_or_alpha_and_in_eval_mode():
    x, beta = pairs(n=20), 0.1
    plain, logps = BetaDPO(alpha=0.0, filter_fraction=0.0)(beta, x.logps, lambda: 0.0)
    assert plain == pytest.approx(beta) and torch.allclose(logps.weight, torch.ones(20, dtype=torch.float64))
    schedule = BetaDPO(alpha=0.6)
    schedule(beta, x.logps, lambda: 0.0)
    state = {k: v.clone() for k, v in schedule.state_dict().items()}
    schedule.eval()
    eval_beta, eval_logps = schedule(beta, x.logps, lambda: 0.0)
    assert all(torch.equal(state[k], v) for k, v in schedule.state_dict().items())  # no update
    assert eval_logps.weight is None  # no filter on validation pairs
    assert eval_beta == pytest.approx(beta * (1 + 0.6 * (x.logps.margin.mean().item() - state["margin_mean"].item())))


# ------------------------------------------------------------------ aggregate


def test_aot_paired_and_unpaired_match_sorted_quantiles():
    x, beta = pairs(n=32), 0.8
    policy = np.sort(x.policy[0].sum(-1) - x.policy[1].sum(-1))
    reference = np.sort(x.reference[0].sum(-1) - x.reference[1].sum(-1))
    assert AOT(paired=True)(Logistic(), x.logps, beta).item() == pytest.approx(dpo(beta * (policy - reference)).mean())
    chosen, rejected = np.sort(x.ratio[0].sum(-1)), np.sort(x.ratio[1].sum(-1))
    assert AOT(paired=False)(Logistic(), x.logps, beta).item() == pytest.approx(dpo(beta * (chosen - rejected)).mean())
    eps = 0.2  # TRL's aot has label smoothing: cdpo here
    smooth = (1 - eps) * dpo(beta * (policy - reference)) + eps * dpo(-beta * (policy - reference))
    assert AOT()(ConservativeLogistic(eps), x.logps, beta).item() == pytest.approx(smooth.mean())


def test_dr_dpo_is_a_soft_minimum_that_tends_to_the_mean():
    x, beta = pairs(n=32), 0.8
    losses = dpo(beta * x.logps.margin.numpy())
    for beta_prime in (0.3, 1.0):
        expected = -beta_prime * np.log(np.mean(np.exp(-losses / beta_prime)))
        assert DrDPO(beta_prime)(Logistic(), x.logps, beta).item() == pytest.approx(expected, rel=1e-12)
    assert DrDPO(1e6)(Logistic(), x.logps, beta).item() == pytest.approx(losses.mean(), rel=1e-5)
    assert DrDPO(1.0)(Logistic(), x.logps, beta).item() < losses.mean()  # large losses count less


# ------------------------------------------------------------------ KTO


def test_kto_closed_form():
    rng = np.random.default_rng(5)
    n, beta = 24, 0.3
    policy, reference = -rng.uniform(1, 30, n), -rng.uniform(1, 30, n)
    mismatched_policy, mismatched_reference = -rng.uniform(1, 30, n), -rng.uniform(1, 30, n)
    desirable = rng.integers(0, 2, n).astype(bool)
    t = torch.tensor
    examples = ExampleLogps(t(policy), t(reference), t(np.full(n, 5.0)), t(desirable), t(mismatched_policy),
                            t(mismatched_reference))
    z0 = max(0.0, np.mean(mismatched_policy - mismatched_reference))
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    logratio = policy - reference
    expected = np.where(desirable, 1.5 * (1 - sigmoid(beta * (logratio - z0))),
                        0.5 * (1 - sigmoid(beta * (z0 - logratio))))
    np.testing.assert_allclose(KTO(1.5, 0.5)(examples, beta).numpy(), expected, rtol=1e-12)
    assert examples.kl_estimate.item() == pytest.approx(z0)
    below = ExampleLogps(t(policy), t(reference), t(np.full(n, 5.0)), t(desirable), t(reference - 1), t(reference))
    assert below.kl_estimate.item() == 0.0  # z0 is clamped at 0


# ------------------------------------------------------------------ the compatibility check


class FakeData:
    """What the check reads of a data module."""

    def __init__(self, unpaired=False, group_by_length=True, columns=(), rows=None):
        self.unpaired, self.shuffle, self.group_by_length = unpaired, True, group_by_length
        self.source = SimpleNamespace(description="test data")
        rows = rows or {}
        self.tokenized = {"train": _Table(["prompt_length", "chosen_input_ids", *columns, *rows], rows)}
        self._repr = f"FakeData(unpaired={unpaired}, group_by_length={group_by_length}, rows={rows})"

    def __repr__(self):  # in test ids: the same in every xdist worker (the default repr holds an address)
        return self._repr


class _Table:
    def __init__(self, columns, rows):
        self.column_names, self.rows = columns, rows

    def __getitem__(self, column):
        return self.rows[column]


def option_object(group, option):
    """The object a config option builds (`${seed}` resolved as in the train config)."""
    cfg = group_options(group)[option]
    return instantiate(OmegaConf.create({"seed": 0, "node": cfg.get(group, cfg)}).node)


def compose(loss="dpo", reference="cached", data=None, **axes):
    """A Composition of real config options (names as the CLI gives them)."""
    from gpo.reference import CachedReference, FrozenReference, NoReference, Sync

    loss_cfg = group_options("loss")[loss]
    loss_fn = instantiate(loss_cfg.loss if "loss" in loss_cfg else loss_cfg)
    refs = {"cached": CachedReference(None), "frozen": FrozenReference(None), "none": NoReference(None),
            "sync": FrozenReference(None, sync=Sync()), "cached_sync": CachedReference(None, sync=Sync())}
    parts = {group: option_object(group, option) for group, option in axes.items()}
    names = {"loss": loss, "reference": reference, **axes}
    return Composition(loss_fn, refs[reference], data or FakeData(unpaired=loss == "kto"), names=names, **parts)


REFUSED = [
    (dict(reference="cached_sync"), "reference.sync (TR-DPO)"),
    (dict(loss="simpo", rho="mean"), "rho=mean rescores the policy/reference log-ratios; loss=simpo is reference-free"),
    (dict(loss="ipo_length_normalised", rho="ld"), "averages them over tokens itself"),
    (dict(loss="nca", rho="fdiv"), "rho=fdiv changes the score whose difference is rho: it needs a GPO family"),
    (dict(loss="kto", rho="mean"), "rho=mean works on preference pairs; loss=kto trains on unpaired examples"),
    (dict(loss="bco", aggregate="aot"), "aggregate=aot applies f to sorted margins: it needs a GPO family"),
    (dict(aggregate="aot"), "data.group_by_length=true makes batches of pairs of similar length"),
    (dict(aggregate="aot", weighting="wpo", data=FakeData(group_by_length=False)), "weighting=wpo has nothing"),
    (dict(aggregate="aot", rho="mean", data=FakeData(group_by_length=False)), "aggregate=aot_unpaired takes it"),
    (dict(aggregate="dr_dpo", beta_schedule="beta_dpo"), "the per-pair weights of beta_schedule=beta_dpo"),
    (dict(loss="rpo", margin="length"), "margin=length shifts t = beta * rho: it needs a GPO family"),
    (dict(labels="soft"), "labels=soft reads the data column(s) ['p']"),
    (dict(margin="score", data=FakeData(rows={"score_chosen": [2.0, 1.0], "score_rejected": [1.0, 1.0]})),
     "train pair 1 has score_chosen=1.0 <= score_rejected=1.0"),
    (dict(labels="soft", data=FakeData(rows={"p": [0.2, 1.3]})), "train pair 1 has p=1.3, not a probability"),
    (dict(loss="kto", data=FakeData(unpaired=False)), "loss=kto trains on unpaired examples"),
    (dict(data=FakeData(unpaired=True)), "loss=dpo trains on preference pairs; the data are unpaired examples"),
    (dict(loss="simpo", reference="none", weighting="wpo", aggregate="aot", data=FakeData(group_by_length=False)),
     "aggregate=aot applies f to sorted margins"),
]


@pytest.mark.parametrize("parts,message", REFUSED, ids=lambda v: str(v) if isinstance(v, dict) else None)
def test_combinations_that_cannot_work_are_refused_in_one_line(parts, message):
    with pytest.raises(InputError, match=None) as error:
        compose(**parts).check()
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


UNGROUPED = FakeData(group_by_length=False)
ACCEPTED = [dict(), dict(rho="mean"), dict(rho="ld", loss="ipo"), dict(rho="fdiv", loss="savage"),
            dict(reference="sync", rho="sampo"), dict(aggregate="aot", loss="cdpo", data=UNGROUPED),
            dict(aggregate="aot_unpaired", rho="mean", data=UNGROUPED),
            dict(loss="kto"), dict(loss="simpo", reference="none", beta_schedule="beta_dpo"),
            dict(loss="rpo", weighting="wpo", rho="ld"), dict(loss="nca", aggregate="dr_dpo", rho="mean"),
            dict(labels="soft", data=FakeData(rows={"p": [0.0, 0.4, 1.0]})),
            dict(margin="score", loss="exponential",
                 data=FakeData(rows={"score_chosen": [2.0], "score_rejected": [1.5]}))]


@pytest.mark.parametrize("parts", ACCEPTED, ids=str)
def test_combinations_that_work_pass_the_check(parts):
    compose(**parts).check()


def test_every_axis_option_is_a_documented_axis_with_a_neutral_default():
    from gpo.infra.config import CONF_DIR

    defaults = {k: v for entry in OmegaConf.load(CONF_DIR / "train.yaml").defaults if not isinstance(entry, str)
                for k, v in entry.items()}
    for group, option in AXIS_OPTIONS:
        axis = option_object(group, option)
        assert axis.group == group and type(axis).__doc__
        assert axis.neutral == (option == defaults[group]), (group, option)


# ------------------------------------------------------------------ TR-DPO's update


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_sync_moves_each_parameter_alpha_of_the_way_to_the_policy(alpha):
    from gpo.reference import Sync

    torch.manual_seed(0)
    policy, reference = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    Sync(alpha=alpha, every_n_steps=1).mix(reference, policy)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(value, alpha * policy.state_dict()[name] + (1 - alpha) * before[name])
    with pytest.raises(InputError, match="alpha must lie in"):
        Sync(alpha=0.0)


# ------------------------------------------------------------------ the length-controlled win rate


def test_length_controlled_win_rate():
    from gpo.evaluation.sampling import length_controlled_win_rate

    rng = np.random.default_rng(0)
    wins = rng.integers(0, 2, 400).astype(float)
    assert length_controlled_win_rate(wins, np.zeros(400)) == pytest.approx(wins.mean(), abs=1e-3)  # no length term
    longer = rng.normal(1.5, 3, 4000)  # the policy tends to be longer; its wins come from length alone
    x = np.tanh(longer / longer.std())
    by_length = (rng.random(4000) < 1 / (1 + np.exp(-2.5 * x))).astype(float)
    assert by_length.mean() > 0.6  # a raw win rate well above 1/2 ...
    assert length_controlled_win_rate(by_length, longer) == pytest.approx(0.5, abs=0.04)  # ... that is all length
    skewed = rng.normal(2, 1, 400)  # the policy is longer, and wins when it is much longer
    wins = (skewed + rng.normal(0, 0.5, 400) > 2.5).astype(float)
    assert length_controlled_win_rate(wins, skewed) < wins.mean() - 0.05  # the length part taken out
    assert length_controlled_win_rate(np.ones(50), rng.normal(0, 1, 50)) > 0.95  # every comparison won: finite, ~1
