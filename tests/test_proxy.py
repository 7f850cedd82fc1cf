"""The emergent over-optimisation testbed (gpo.data.sources.proxy): the gold,
the learned proxy and its mechanism, the data summary the projected-link
predictor reads, and computed facts about the behaviour policy. No training."""

import math
import random

import numpy as np
import pytest

from conftest import compose_train
from gpo.data import PreferenceDataModule
from gpo.data.sources import (
    CappedCount,
    LetterCountProxy,
    PreferredCharacters,
    ProxyPreferences,
    RepeatPenalisedCount,
    SyntheticPreferences,
)
from gpo.errors import InputError
from gpo.models import char_tokenizer


def proxy_task(num_pairs: int, **kwargs) -> ProxyPreferences:
    return ProxyPreferences(LetterCountProxy(num_pairs=num_pairs), num_pairs=kwargs.pop("pairs", 400), **kwargs)


def test_repeat_penalised_count():
    gold = RepeatPenalisedCount(penalty=1.0)
    assert gold("ab:", "abcdefgh") == 8  # every letter preferred, none repeated
    assert gold("ab:", "aaaaaaaa") == 8 - 28  # C(8, 2) pairs of identical letters
    assert gold("ab:", "aabbijkl") == 4 - 2
    assert RepeatPenalisedCount(penalty=0.5)("ab:", "ppp") == -1.5


def test_proxy_fit_is_deterministic_nested_by_seed_and_checks_its_input():
    first, again = proxy_task(100).proxy.weights, proxy_task(100).proxy.weights
    assert np.array_equal(first, again)
    other = ProxyPreferences(LetterCountProxy(num_pairs=100, seed=1), num_pairs=50).proxy.weights
    assert not np.allclose(first, other)
    for bad in (0, 2.5, "100"):
        with pytest.raises(InputError, match="num_pairs"):
            LetterCountProxy(num_pairs=bad)
    with pytest.raises(InputError, match="ridge"):
        LetterCountProxy(ridge=0)
    with pytest.raises(InputError, match="label_reward"):
        ProxyPreferences(LetterCountProxy(), label_reward=PreferredCharacters())
    with pytest.raises(RuntimeError, match="fit"):
        LetterCountProxy()("ab:", "abc")


def _tilted_responses(task, beta, prompts, per_prompt, rng):
    """Samples of the exact tilt q(l|x) exp(w_l / beta): where a policy that maximises the proxy goes."""
    w = task.proxy.weights
    out = []
    for prompt in prompts:
        q = task.letter_probabilities(prompt) * np.exp((w - w.max()) / beta)
        q /= q.sum()
        out += [(prompt, "".join(task.alphabet[i] for i in rng.choice(len(q), task.response_length, p=q)))
                for _ in range(per_prompt)]
    return out


def _correlation(task, responses):
    gold = [task.gold_reward(p, r) for p, r in responses]
    proxy = [task.label_reward(p, r) for p, r in responses]
    return float(np.corrcoef(gold, proxy)[0, 1]), float(np.mean(gold))


def test_proxy_agrees_with_gold_on_the_support_disagrees_off_it_and_improves_with_data():
    """The over-optimisation mechanism, cheaply: on the behaviour policy's
    responses the proxy orders them as the gold does; on what a policy that
    maximises it writes (the exact tilt at small beta) it is wrong: its
    scores rise as the gold falls. More gold labels: a proxy whose tilt
    stays closer to the gold."""
    prompts = SyntheticPreferences().evaluation_prompts(150)
    on, off = {}, {}
    for size in (100, 300, 1000):
        task = proxy_task(size)
        behaviour = [(p, task._behaviour_response(random.Random(i), p)) for i, p in enumerate(prompts)]
        on[size] = _correlation(task, behaviour)
        off[size] = _correlation(task, _tilted_responses(task, 0.15, prompts, 4, np.random.default_rng(0)))
        pairs = task.preferences()
        decided = [(task.gold_reward(p, c) > task.gold_reward(p, r), task.label_reward(p, c) > task.label_reward(p, r))
                   for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"])
                   if task.gold_reward(p, c) != task.gold_reward(p, r)]
        assert sum(g == q for g, q in decided) / len(decided) > 0.65  # the proxy orders behaviour pairs as gold does
        assert on[size][0] > 0.45
        assert off[size][0] < 0  # off the support, a higher proxy score means a lower gold
    reference_gold = on[100][1]
    assert off[100][1] < reference_gold - 2  # the smallest proxy's favourites are far worse than the reference
    assert off[100][1] < off[300][1] < off[1000][1]  # ... and a proxy from more labels is exploited less
    assert on[100][0] < on[1000][0]


def test_pairs_record_the_binned_proxy_score_and_the_summary_carries_label_features():
    task = proxy_task(100, pairs=300)
    pairs = task.preferences()
    scores = task.proxy.counts(pairs["chosen"]) @ task.proxy.weights
    assert pairs["chosen_feature"] == task.feature_bin(scores).tolist()
    edges = task.feature_edges
    assert all(edges[b] <= s <= edges[b + 1] + 1e-9 for b, s in zip(pairs["chosen_feature"], scores))
    datamodule = PreferenceDataModule(task, char_tokenizer(), max_length=32, max_prompt_length=16)
    datamodule.setup()
    features = datamodule.summary()["label_features"]
    assert sum(n for *_, n in features["pairs"]) == len(datamodule.text["train"])
    assert all(0 < p < 1 for _, _, p, _ in features["pairs"])
    reference = np.array(features["reference"])
    assert reference.shape == (64, task.feature_bins) and np.allclose(reference.sum(1), 1)
    plain = PreferenceDataModule(SyntheticPreferences(num_pairs=100), char_tokenizer(), max_length=32,
                                 max_prompt_length=16)
    plain.setup()
    assert "label_features" not in plain.summary()


def test_reference_distribution_over_bins_matches_the_behaviour_policy():
    """The exact per-prompt distribution of the binned proxy score against the
    source's own sampler (which the SFT reference imitates); the gold per bin
    against plain Monte Carlo where the behaviour policy visits often."""
    task = proxy_task(300, pairs=10)
    features = task.label_features(num_prompts=64)
    rng = random.Random(5)
    prompts = task.evaluation_prompts(64)
    responses = [(p, task._behaviour_response(rng, p)) for p in prompts for _ in range(150)]
    bins = task.feature_bin(task.proxy.counts([r for _, r in responses]) @ task.proxy.weights)
    empirical = np.bincount(bins, minlength=task.feature_bins) / len(bins)
    exact = np.mean(features["reference"], axis=0)
    standard_error = np.sqrt(exact * (1 - exact) / len(bins)) + 1e-4
    assert np.all(np.abs(empirical - exact) < 5 * standard_error)
    gold = np.array([task.gold_reward(p, r) for p, r in responses])
    for b in np.flatnonzero(np.bincount(bins, minlength=task.feature_bins) > 400):
        in_bin = gold[bins == b]
        assert abs(in_bin.mean() - features["gold"][b]) < 5 * in_bin.std() / np.sqrt(len(in_bin)) + 0.15


def test_experiment_config_builds_the_proxy_task(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_train(["experiment=proxy_overoptimisation", "data.source.proxy.num_pairs=300", "seed=4"],
                        output_dir=tmp_path)
    source = instantiate(cfg.data.source)
    assert isinstance(source, ProxyPreferences) and source.proxy.num_pairs == 300 and source.pairs_seed == 4
    assert isinstance(source._gold_reward, RepeatPenalisedCount)
    assert np.array_equal(source.proxy.weights, proxy_task(300).proxy.weights)  # the proxy ignores the run's seed


def binomial_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def test_behaviour_policy_writes_at_most_six_preferred_letters_95_2_percent_of_the_time():
    """A computed fact in docs/reproduction.md (the capped testbed): P(n <= 6) = 95.2% under the
    behaviour policy, not 96.5% (= 1 - 9/256, which forgets that a copied prompt letter is preferred
    with the prompt's share of preferred letters, not 1/2)."""
    task = SyntheticPreferences()
    copy, share = task.copy_prob, 8 / 16
    # k preferred letters among the 4 prompt letters ~ Binomial(4, 1/2); then each response letter is
    # preferred with probability copy * k / 4 + (1 - copy) / 2.
    exact = sum(math.comb(4, k) / 16 * binomial_cdf(6, 8, copy * k / 4 + (1 - copy) * share) for k in range(5))
    assert round(exact, 3) == 0.952
    rng = random.Random(0)
    count, capped = PreferredCharacters(), CappedCount()
    samples = [task._behaviour_response(rng, task._prompt(rng)) for _ in range(20000)]
    below = np.mean([count("", s) <= 6 for s in samples])
    assert abs(below - exact) < 4 * math.sqrt(exact * (1 - exact) / len(samples))
    assert np.mean([capped("", s) == count("", s) for s in samples]) == below
