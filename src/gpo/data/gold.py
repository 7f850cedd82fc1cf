"""Gold rewards for the controlled protocol of Gao et al. 2023 (the GPO paper's
Section 5): a fixed judge stands in for human labellers, both to label the
preference pairs and to score the trained policy's samples.

A gold reward is any callable (prompt, response) -> float; it may also offer
`score_batch(prompts, responses) -> list[float]`, used where many pairs are
scored at once. The synthetic task brings its own (gpo.data.sources.synthetic); this module
adds a reward model loaded by name through transformers, the paper-scale
substitute, and Bradley-Terry relabelling of any preference data by a gold reward.
"""

import hashlib
import math

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from gpo.infra.errors import InputError
from gpo.model.runtime import device_for


def bradley_terry(first: float, second: float, temperature: float) -> float:
    """P(first preferred) = sigmoid((first - second) / temperature), overflow-free."""
    return 0.5 * (1.0 + math.tanh((first - second) / (2.0 * temperature)))


class RewardModelGold:
    """A sequence-classification reward model by hub name or local path; the
    gold reward is its logit `label` for the (prompt, response) text.

    `pair_input`: encode prompt and response as a text pair (the convention of
    e.g. OpenAssistant/reward-model-deberta-v3-large-v2), else as one string."""

    def __init__(
        self,
        name_or_path: str,
        label: int = 0,
        pair_input: bool = True,
        max_length: int = 1024,
        batch_size: int = 16,
        dtype: str = "auto",
        device: str | None = None,
    ):
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.model = AutoModelForSequenceClassification.from_pretrained(name_or_path, dtype=dtype).eval()
        self.model.requires_grad_(False)
        if not 0 <= label < self.model.config.num_labels:
            raise InputError(
                f"gold reward model {name_or_path} has {self.model.config.num_labels} output(s); "
                f"label={label} is out of range"
            )
        if self.tokenizer.pad_token is None:  # decoder-only reward models often lack one; padding is masked anyway
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:  # the model finds each row's last token through it
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = torch.device(device) if device else device_for("auto")
        self.model.to(self.device)
        self.label, self.pair_input = label, pair_input
        self.name = f"{name_or_path}[{label}]{'pair' if pair_input else 'concat'}"  # identity for cache keys
        self.max_length, self.batch_size = max_length, batch_size

    @torch.no_grad()
    def score_batch(self, prompts: list[str], responses: list[str]) -> list[float]:
        scores = []
        for start in range(0, len(prompts), self.batch_size):
            p, r = prompts[start : start + self.batch_size], responses[start : start + self.batch_size]
            texts = (p, r) if self.pair_input else ([a + b for a, b in zip(p, r)],)
            batch = self.tokenizer(*texts, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt")
            logits = self.model(**batch.to(self.device)).logits
            scores += logits[:, self.label].float().tolist()
        return scores

    def __call__(self, prompt: str, response: str) -> float:
        return self.score_batch([prompt], [response])[0]


def gold_scores(gold_reward, prompts: list[str], responses: list[str]) -> list[float]:
    if hasattr(gold_reward, "score_batch"):
        return gold_reward.score_batch(prompts, responses)
    return [gold_reward(p, r) for p, r in zip(prompts, responses)]


def relabel(pairs: Dataset, gold_reward, temperature: float, seed: int = 0, batch_size: int = 256) -> Dataset:
    """The same (prompt, response, response) triples, with chosen/rejected drawn
    by Bradley-Terry on the gold reward: the first response is chosen with
    probability sigmoid((r_a - r_b) / temperature); the original labels are
    discarded. Adds the float columns gold_chosen, gold_rejected and
    preference_probability (that the chosen response wins)."""
    if not temperature > 0:
        raise InputError(f"data.relabel_temperature must be > 0, got {temperature}")
    draws = np.random.default_rng(seed).random(len(pairs))

    def label(rows, indices):
        r_a = gold_scores(gold_reward, rows["prompt"], rows["chosen"])
        r_b = gold_scores(gold_reward, rows["prompt"], rows["rejected"])
        out = {"chosen": [], "rejected": [], "gold_chosen": [], "gold_rejected": [], "preference_probability": []}
        for a, b, ra, rb, i in zip(rows["chosen"], rows["rejected"], r_a, r_b, indices):
            p_a = bradley_terry(ra, rb, temperature)
            (c, rc), (r, rr), p = ((a, ra), (b, rb), p_a) if draws[i] < p_a else ((b, rb), (a, ra), 1.0 - p_a)
            out["chosen"].append(c), out["rejected"].append(r)
            out["gold_chosen"].append(float(rc)), out["gold_rejected"].append(float(rr))
            out["preference_probability"].append(p)
        return out

    # Cached by `datasets` for file-backed data: a reward model pass over a
    # large dataset is paid once per (data, gold, temperature, seed). The key is
    # given, not hashed from the function, which would serialise the model.
    gold_name = getattr(gold_reward, "name", type(gold_reward).__qualname__)
    identity = f"{pairs._fingerprint}|{gold_name}|{temperature}|{seed}"
    return pairs.map(label, batched=True, batch_size=batch_size, with_indices=True, desc="Gold relabelling",
                     new_fingerprint=hashlib.sha256(identity.encode()).hexdigest()[:16])
