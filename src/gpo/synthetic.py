"""A synthetic preference task with a known gold reward, generated locally.

Prompts are short random strings over a small alphabet, followed by ':'.
A response is a fixed-length string over the same alphabet. The gold reward is
a known function of (prompt, response), chosen in the config: the number of
response characters from a preferred set (default), or the number that also
occur in the prompt (harder: the policy must learn to copy).

Responses come from a mediocre behaviour policy (copy a prompt character with
probability `copy_prob`, else a uniform character). It produces both the SFT
demonstrations (so the SFT reference imitates it) and the preference pairs, so
the offline data distribution matches the reference, as in Gao et al. 2023.
Pairs are labelled by a Bradley-Terry model on the gold reward.
"""

import math
import random
import string

from datasets import Dataset

from gpo.errors import InputError


class PreferredCharacters:
    """Gold reward: how many response characters are in `characters`."""

    def __init__(self, characters: str = "abcdefgh"):
        self.characters = set(characters)

    def __call__(self, prompt: str, response: str) -> float:
        return float(sum(ch in self.characters for ch in response))


class CopiedCharacters:
    """Gold reward: how many response characters also occur in the prompt."""

    def __call__(self, prompt: str, response: str) -> float:
        seen = set(prompt.removesuffix(":"))
        return float(sum(ch in seen for ch in response))


class SyntheticPreferences:
    def __init__(
        self,
        gold_reward=None,
        num_pairs: int = 2000,
        num_demonstrations: int = 4000,
        alphabet_size: int = 16,
        prompt_length: int = 4,
        response_length: int = 8,
        copy_prob: float = 0.3,
        reward_temperature: float = 1.0,
        seed: int = 0,
    ):
        if not 1 <= alphabet_size <= 26:
            raise InputError(f"data.source.alphabet_size must be in [1, 26], got {alphabet_size}")
        self.alphabet = string.ascii_lowercase[:alphabet_size]
        self.num_pairs = num_pairs
        self.num_demonstrations = num_demonstrations
        self.prompt_length = prompt_length
        self.response_length = response_length
        self.copy_prob = copy_prob
        self.reward_temperature = reward_temperature
        self.seed = seed
        self._gold_reward = gold_reward or PreferredCharacters()
        self.description = f"synthetic task (seed {seed})"

    def gold_reward(self, prompt: str, response: str) -> float:
        return self._gold_reward(prompt, response[: self.response_length])

    def _prompt(self, rng: random.Random) -> str:
        return "".join(rng.choices(self.alphabet, k=self.prompt_length)) + ":"

    def _behaviour_response(self, rng: random.Random, prompt: str) -> str:
        return "".join(
            rng.choice(prompt[:-1]) if rng.random() < self.copy_prob else rng.choice(self.alphabet)
            for _ in range(self.response_length)
        )

    def preferences(self) -> Dataset:
        rng = random.Random(self.seed)
        rows = []
        for _ in range(self.num_pairs):
            prompt = self._prompt(rng)
            a, b = self._behaviour_response(rng, prompt), self._behaviour_response(rng, prompt)
            r_a, r_b = self.gold_reward(prompt, a), self.gold_reward(prompt, b)
            p_a_wins = 1.0 / (1.0 + math.exp(-(r_a - r_b) / self.reward_temperature))
            (chosen, r_c), (rejected, r_r) = ((a, r_a), (b, r_b)) if rng.random() < p_a_wins else ((b, r_b), (a, r_a))
            rows.append(dict(prompt=prompt, chosen=chosen, rejected=rejected, gold_chosen=r_c, gold_rejected=r_r))
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
