"""A synthetic preference task with a known gold reward, generated locally.

Prompts are short random strings over a small alphabet, followed by ':'.
A response is a fixed-length string over the same alphabet. Responses come
from a mediocre behaviour policy (copy a prompt character with probability
`copy_prob`, else a uniform character). It writes both the SFT demonstrations
(so the SFT reference imitates it) and the preference pairs, so the offline
data distribution matches the reference, as in Gao et al. 2023.

Two rewards, both known functions of (prompt, response):
  - the *label* reward: pairs are labelled by Bradley-Terry on it, at
    temperature `reward_temperature`;
  - the *gold* reward: what the trained policy is judged by (gold reward and
    win rate of its samples). By default the same function as the labels.
Giving them different functions makes a task where the labels and the gold
reward agree where the behaviour policy puts its mass and disagree off it:
the over-optimisation testbed (conf/experiment/overoptimisation.yaml).
"""

import random
import string

from datasets import Dataset

from gpo.data.gold import bradley_terry
from gpo.infra.errors import InputError


class PreferredCharacters:
    """How many response characters are in `characters`."""

    def __init__(self, characters: str = "abcdefgh"):
        self.characters = set(characters)

    def __call__(self, prompt: str, response: str) -> float:
        return float(sum(ch in self.characters for ch in response))


class CopiedCharacters:
    """How many response characters also occur in the prompt."""

    def __call__(self, prompt: str, response: str) -> float:
        seen = set(prompt.removesuffix(":"))
        return float(sum(ch in seen for ch in response))


class PreferredFraction(PreferredCharacters):
    """The share of response characters in `characters` (0 for an empty
    response): what the count measures, without rewarding length."""

    def __call__(self, prompt: str, response: str) -> float:
        return super().__call__(prompt, response) / len(response) if response else 0.0


class CappedCount(PreferredCharacters):
    """The count n of preferred characters up to `cap`; each one beyond it
    costs `penalty`: n if n <= cap, else cap - penalty * (n - cap). Too much
    of a good thing: the additive count is a good proxy for it wherever
    responses rarely exceed the cap."""

    def __init__(self, characters: str = "abcdefgh", cap: int = 6, penalty: float = 2.0):
        super().__init__(characters)
        self.cap, self.penalty = cap, penalty

    def __call__(self, prompt: str, response: str) -> float:
        n = super().__call__(prompt, response)
        return n if n <= self.cap else self.cap - self.penalty * (n - self.cap)


class SyntheticPreferences:
    def __init__(
        self,
        gold_reward=None,
        label_reward=None,
        num_pairs: int = 2000,
        num_demonstrations: int = 4000,
        alphabet_size: int = 16,
        prompt_length: int = 4,
        response_length: int = 8,
        min_response_length: int | None = None,
        copy_prob: float = 0.3,
        reward_temperature: float = 1.0,
        seed: int = 0,
        pairs_seed: int | None = None,
    ):
        """`seed` fixes the task (demonstrations, hence the SFT reference, and
        the evaluation prompts); `pairs_seed` (default: `seed`) the sample of
        preference pairs and their label draws, so seeds of a sweep can vary
        the data while sharing one reference. `min_response_length`: responses
        of min_response_length..response_length characters, uniformly (None:
        all of response_length), for tasks where length matters
        (conf/experiment/length_bias.yaml)."""
        if not 1 <= alphabet_size <= 26:
            raise InputError(f"data.source.alphabet_size must be in [1, 26], got {alphabet_size}")
        if not reward_temperature > 0:
            raise InputError(f"data.source.reward_temperature must be > 0, got {reward_temperature}")
        self.alphabet = string.ascii_lowercase[:alphabet_size]
        self.num_pairs = num_pairs
        self.num_demonstrations = num_demonstrations
        self.prompt_length = prompt_length
        self.response_length = response_length
        if min_response_length is not None and not 1 <= min_response_length <= response_length:
            raise InputError(f"data.source.min_response_length must lie in [1, response_length={response_length}], "
                             f"got {min_response_length}")
        self.min_response_length = min_response_length
        self.copy_prob = copy_prob
        self.reward_temperature = reward_temperature
        self.seed = seed
        self.pairs_seed = seed if pairs_seed is None else pairs_seed
        self._gold_reward = gold_reward or PreferredCharacters()
        self._label_reward = label_reward or self._gold_reward
        self.description = f"synthetic task (seed {seed}, pairs seed {self.pairs_seed})"

    def gold_reward(self, prompt: str, response: str) -> float:
        return self._gold_reward(prompt, response[: self.response_length])

    def label_reward(self, prompt: str, response: str) -> float:
        return self._label_reward(prompt, response[: self.response_length])

    def _prompt(self, rng: random.Random) -> str:
        return "".join(rng.choices(self.alphabet, k=self.prompt_length)) + ":"

    def _behaviour_response(self, rng: random.Random, prompt: str) -> str:
        length = (self.response_length if self.min_response_length is None
                  else rng.randint(self.min_response_length, self.response_length))
        return "".join(
            rng.choice(prompt[:-1]) if rng.random() < self.copy_prob else rng.choice(self.alphabet)
            for _ in range(length)
        )

    def preferences(self) -> Dataset:
        """Pairs with their gold rewards and `preference_probability`, the
        probability that the chosen response wins under the labelling model."""
        rng = random.Random(self.pairs_seed)
        rows = []
        for _ in range(self.num_pairs):
            prompt = self._prompt(rng)
            a, b = self._behaviour_response(rng, prompt), self._behaviour_response(rng, prompt)
            p_a = bradley_terry(self.label_reward(prompt, a), self.label_reward(prompt, b), self.reward_temperature)
            chosen, rejected, p = (a, b, p_a) if rng.random() < p_a else (b, a, 1.0 - p_a)
            rows.append(dict(prompt=prompt, chosen=chosen, rejected=rejected,
                             gold_chosen=self.gold_reward(prompt, chosen),
                             gold_rejected=self.gold_reward(prompt, rejected), preference_probability=p))
        return Dataset.from_list(rows)

    def evaluation_prompts(self, n: int) -> list[str]:
        """Fresh prompts for sampling-based evaluation, from a stream of their
        own: the same for every run of a sweep, drawn independently of the training pairs."""
        rng = random.Random(self.seed + 2)
        return [self._prompt(rng) for _ in range(n)]

    def demonstrations(self) -> Dataset:
        rng = random.Random(self.seed + 1)  # disjoint stream from the preference pairs
        prompts = [self._prompt(rng) for _ in range(self.num_demonstrations)]
        return Dataset.from_dict(
            {"prompt": prompts, "response": [self._behaviour_response(rng, p) for p in prompts]}
        )
