"""The emergent over-optimisation testbed (Gao et al. 2023's protocol, CPU sized).

Three parts, as in Gao et al.:
  - a GOLD reward, the judge (`RepeatPenalisedCount`: preferred letters count,
    repeated letters cost);
  - a PROXY reward model learned from `num_pairs` gold-labelled pairs
    (`LetterCountProxy`: Bradley-Terry logistic regression on the response's
    letter counts, fitted deterministically from its seed);
  - the policy's preference pairs, labelled by Bradley-Terry on the proxy
    (`ProxyPreferences`), and judged by the gold reward.

Nothing caps the gold in the direction the labels push. A linear proxy fitted
on the behaviour policy's responses ranks them as the gold does, but it scores
a response as the sum of its letters' weights, so it over-values what the
behaviour policy rarely writes: the same letter many times. With few gold
labels its weights are noisy, and the letters it happens to over-weight are
where a policy that maximises it goes; the gold's repetition penalty makes
that costly. With more labels the preferred letters' weights become equal and
the policy spreads over them: over-optimisation comes later and flattens.

The labels see a response only through the proxy's score phi = r_p(y): the
source records, for the projected-link predictor (gpo.report.theory), each
pair's binned phi and `label_features()`: the bins, the reference's
distribution over them per evaluation prompt and the gold's mean in each bin.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np

from gpo.data.gold import bradley_terry
from gpo.data.sources.synthetic import PreferredCharacters, SyntheticPreferences
from gpo.errors import InputError

_LABEL_FEATURES: dict[tuple, dict] = {}  # the last task's label features (deterministic; see label_features)


class RepeatPenalisedCount(PreferredCharacters):
    """Gold: n - penalty * (pairs of identical characters), n the count of
    preferred characters. 'abcdefgh' scores 8; 'aaaaaaaa' 8 - 28 * penalty."""

    def __init__(self, characters: str = "abcdefgh", penalty: float = 1.0):
        super().__init__(characters)
        self.penalty = penalty

    def __call__(self, prompt: str, response: str) -> float:
        pairs = sum(k * (k - 1) // 2 for k in Counter(response).values())
        return super().__call__(prompt, response) - self.penalty * pairs


class LetterCountProxy:
    """A Bradley-Terry reward model r_p(y) = w . c(y), c(y) the counts of the
    task's letters in y. `fit(source)` draws `num_pairs` pairs of behaviour
    responses from a stream seeded by `seed` (pairs nest: the first 100 of 300
    are the 100), labels each by Bradley-Terry on the source's gold reward at
    `label_temperature`, and maximises the likelihood with an L2 penalty
    `ridge` * |w|^2 / 2 by Newton's method (deterministic; the penalty also
    fixes the direction the counts cannot identify, since they sum to the
    response length)."""

    def __init__(self, num_pairs: int = 100, seed: int = 0, ridge: float = 1.0, label_temperature: float = 1.0):
        if isinstance(num_pairs, bool) or not isinstance(num_pairs, int) or num_pairs < 1:
            raise InputError(f"data.source.proxy.num_pairs must be an integer >= 1, got {num_pairs!r}")
        if not isinstance(ridge, (int, float)) or not isinstance(label_temperature, (int, float)) \
                or not ridge > 0 or not label_temperature > 0:
            raise InputError(f"data.source.proxy: ridge and label_temperature must be > 0, got {ridge}, "
                             f"{label_temperature}")
        self.num_pairs, self.seed, self.ridge, self.label_temperature = num_pairs, seed, ridge, label_temperature
        self.alphabet: str = ""
        self.weights: np.ndarray | None = None

    def counts(self, responses: list[str]) -> np.ndarray:
        index = {ch: i for i, ch in enumerate(self.alphabet)}
        out = np.zeros((len(responses), len(self.alphabet)))
        for row, response in enumerate(responses):
            for ch in response:
                if ch in index:
                    out[row, index[ch]] += 1
        return out

    def fit(self, source: SyntheticPreferences) -> LetterCountProxy:
        self.alphabet = source.alphabet
        rng = random.Random(f"proxy-{self.seed}")  # its own stream: not the pairs', demonstrations' or prompts'
        first, second, labels = [], [], []
        for _ in range(self.num_pairs):
            prompt = source._prompt(rng)
            a, b = source._behaviour_response(rng, prompt), source._behaviour_response(rng, prompt)
            p = bradley_terry(source.gold_reward(prompt, a), source.gold_reward(prompt, b), self.label_temperature)
            first.append(a), second.append(b), labels.append(float(rng.random() < p))
        x, z = self.counts(first) - self.counts(second), np.array(labels)
        w = np.zeros(x.shape[1])
        for _ in range(100):  # the penalised log-likelihood is strictly concave: Newton converges in a few steps
            s = 0.5 * (1.0 + np.tanh(0.5 * (x @ w)))
            gradient = x.T @ (s - z) + self.ridge * w
            hessian = (x * (s * (1 - s))[:, None]).T @ x + self.ridge * np.eye(len(w))
            step = np.linalg.solve(hessian, gradient)
            w -= step
            if np.abs(step).max() < 1e-12:
                break
        self.weights = w
        return self

    def __call__(self, prompt: str, response: str) -> float:
        if self.weights is None:
            raise RuntimeError("LetterCountProxy: fit(source) before scoring")
        return float(self.counts([response])[0] @ self.weights)


class ProxyPreferences(SyntheticPreferences):
    """The synthetic task with pairs labelled by a learned proxy of the gold
    reward (`proxy`, fitted here on gold labels); `gold_reward` judges the
    policy. `feature_bins`: how many bins of the proxy score phi the
    projected-link summary uses."""

    def __init__(self, proxy: LetterCountProxy, gold_reward=None, feature_bins: int = 32, **kwargs):
        if kwargs.get("label_reward") is not None:
            raise InputError("data.source.label_reward: ProxyPreferences labels with its fitted proxy; "
                             "set data.source.proxy instead")
        if feature_bins < 2:
            raise InputError(f"data.source.feature_bins must be >= 2, got {feature_bins}")
        super().__init__(gold_reward=gold_reward or RepeatPenalisedCount(), **kwargs)
        self.proxy = proxy.fit(self)
        self._label_reward = self.proxy
        self.feature_bins = feature_bins
        self.description = (f"proxy-labelled synthetic task (proxy from {proxy.num_pairs} gold-labelled pairs, "
                            f"proxy seed {proxy.seed}; seed {self.seed}, pairs seed {self.pairs_seed})")

    # -- the feature the labels see: the proxy score, binned ------------------------------------------------
    @property
    def feature_edges(self) -> np.ndarray:
        """Bin edges spanning every score a response can get (all letters the lowest- or highest-weighted)."""
        w = self.proxy.weights
        return np.linspace(self.response_length * w.min(), self.response_length * w.max(), self.feature_bins + 1)

    def feature_bin(self, scores) -> np.ndarray:
        return np.clip(np.searchsorted(self.feature_edges, scores, side="right") - 1, 0, self.feature_bins - 1)

    def preferences(self):
        pairs = super().preferences()
        for side in ("chosen", "rejected"):
            scores = self.proxy.counts(pairs[side]) @ self.proxy.weights
            pairs = pairs.add_column(f"{side}_feature", self.feature_bin(scores).tolist())
        return pairs

    def letter_probabilities(self, prompt: str) -> np.ndarray:
        """The behaviour policy's distribution of one response letter given the
        prompt (`_behaviour_response`: copy a prompt letter w.p. copy_prob, else uniform)."""
        q = np.full(len(self.alphabet), (1 - self.copy_prob) / len(self.alphabet))
        body = prompt.removesuffix(":")
        for ch in body:
            q[self.alphabet.index(ch)] += self.copy_prob / len(body)
        return q

    def label_features(self, num_prompts: int = 64, gold_prompts: int = 256, samples: int = 16,
                       tilts: int = 9) -> dict:
        """What the projected-link predictor needs besides the pairs: per evaluation prompt, the
        reference's (the behaviour policy's) distribution over the bins of phi, exact (phi is a sum of
        i.i.d. letter weights given the prompt: an 8-fold convolution on a grid of 1/1000 of the
        weights' range); and the gold's mean in each bin, by self-normalised importance sampling from
        `tilts` per-letter tilts q_s(l|x) proportional to q(l|x) exp(s w_l), s symmetric around 0,
        weighted by pi_ref(y|x) / mean_s q_s(y|x), so that the bins the reference rarely visits get
        samples too (None where none does). Deterministic (seeded by the task and the proxy)."""
        key = (repr(sorted(vars(self._gold_reward).items())), type(self._gold_reward).__name__, self.alphabet,
               self.copy_prob, self.prompt_length, self.response_length, self.seed, self.proxy.weights.tobytes(),
               self.feature_bins, num_prompts, gold_prompts, samples, tilts)
        if key not in _LABEL_FEATURES:  # a sweep's jobs in one process share the task: computed once (~1 s)
            _LABEL_FEATURES.clear()
            _LABEL_FEATURES[key] = self._label_features(num_prompts, gold_prompts, samples, tilts)
        return _LABEL_FEATURES[key]

    def _label_features(self, num_prompts, gold_prompts, samples, tilts) -> dict:
        """label_features, uncached."""
        w = self.proxy.weights
        step = max(np.ptp(w), 1e-12) / 1000
        grid = np.round((w - w.min()) / step).astype(int)
        reference = []
        for prompt in self.evaluation_prompts(num_prompts):
            letter = np.bincount(grid, self.letter_probabilities(prompt), minlength=grid.max() + 1)
            density = np.array([1.0])
            for _ in range(self.response_length):
                density = np.convolve(density, letter)
            phi = self.response_length * w.min() + step * np.arange(len(density))
            reference.append(np.bincount(self.feature_bin(phi), density, minlength=self.feature_bins))
        rng = np.random.default_rng([self.seed, self.proxy.seed, self.proxy.num_pairs])
        strengths = np.linspace(-1.0, 1.0, tilts) * 8.0 / max(np.ptp(w), 1e-12)
        scores, golds, weights = [], [], []
        for prompt in self.evaluation_prompts(gold_prompts):
            q = self.letter_probabilities(prompt)
            tilted = q * np.exp(strengths[:, None] * (w - w.max())[None, :])
            log_z = np.log(tilted.sum(1)) + strengths * w.max()  # log sum_l q(l) exp(s w_l)
            tilted /= tilted.sum(1, keepdims=True)
            for row in tilted:
                letters = rng.choice(len(self.alphabet), size=(samples, self.response_length), p=row)
                phi = w[letters].sum(1)
                log_ratio = strengths[None, :] * phi[:, None] - self.response_length * log_z[None, :]
                top = log_ratio.max(1, keepdims=True)  # log mean_s q_s(y|x)/pi_ref(y|x), stably
                weights.append(np.exp(-(top[:, 0] + np.log(np.exp(log_ratio - top).mean(1)))))
                scores.append(phi)
                golds.append([self.gold_reward(prompt, "".join(self.alphabet[i] for i in y)) for y in letters])
        bins = self.feature_bin(np.concatenate(scores))
        weights, golds = np.concatenate(weights), np.concatenate(golds)
        mass = np.bincount(bins, weights, minlength=self.feature_bins)
        gold_sum = np.bincount(bins, weights * golds, minlength=self.feature_bins)
        edges = self.feature_edges
        return {"centres": ((edges[:-1] + edges[1:]) / 2).round(6).tolist(),
                "reference": np.round(reference, 8).tolist(),
                "gold": [round(float(g / m), 6) if m > 0 else None for g, m in zip(gold_sum, mass)],
                "proxy_weights": dict(zip(self.alphabet, w.round(6).tolist()))}
