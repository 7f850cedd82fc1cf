"""Unpaired examples (KTO): a prompt, one completion and a desirable/undesirable
label, instead of a preference pair.

Two ways in: a file of examples (gpo.data.sources.UnpairedExamples: prompt,
completion and label columns; conf/data/unpaired.yaml), or any pairs seen as
examples (`data.unpaired=true`: each pair gives its chosen response as a
desirable example and its rejected one as an undesirable example, as TRL's
unpair_preference_dataset).

Tokenized, an example is the two sequences the training step needs, in the
columns pairs use (so batching, packing and the cached reference serve both):
`chosen_input_ids` holds prompt + completion, `rejected_input_ids` prompt + a
*mismatched* completion (another example's, of a different prompt), whose
log-ratio estimates KTO's KL reference point; `desirable` the label. The
partner of each example is fixed when the data are prepared (a seeded
derangement that avoids equal prompts), so the reference log-probs of both
sequences are cached once; TRL instead rotates completions within each batch.
"""

import logging

import numpy as np
from datasets import Dataset

from gpo.data.tokenization import encode_prompts, encode_responses, truncate
from gpo.infra.errors import DataError

log = logging.getLogger(__name__)

EXAMPLE_COLUMNS = ("prompt", "completion", "label")
TRUE, FALSE = ("true", "1", "yes", "desirable", "good"), ("false", "0", "no", "undesirable", "bad")


def label_value(label) -> bool | None:
    """A desirable/undesirable label as a bool: true/false, 1/0 or their common words; None if it is none of these."""
    if isinstance(label, bool):
        return label
    if isinstance(label, (int, float)) and label in (0, 1):
        return bool(label)
    if isinstance(label, str) and label.strip().lower() in TRUE + FALSE:
        return label.strip().lower() in TRUE
    return None


def example_problem(row: dict) -> str:
    """Why an example row cannot be trained on ("" if it can)."""
    if row.get("problem"):
        return row["problem"]
    for column in ("prompt", "completion"):
        value = row[column]
        if not isinstance(value, str):
            return f"'{column}' is not text (got {type(value).__name__}; unpaired examples are plain text)"
        if not value.strip():
            return f"'{column}' is empty"
    if label_value(row["label"]) is None:
        return f"'label' is not true/false or 1/0 (got {row['label']!r:.40})"
    return ""


def examples_from_pairs(pairs: Dataset) -> Dataset:
    """The paired-to-unpaired view: each pair's chosen response a desirable
    example, its rejected one an undesirable example, in that order."""
    prompts = pairs["prompt"]
    return Dataset.from_dict({
        "prompt": [p for p in prompts for _ in (0, 1)],
        "completion": [r for c, r in zip(pairs["chosen"], pairs["rejected"]) for r in (c, r)],
        "label": [flag for _ in prompts for flag in (True, False)],
    })


def mismatched_partners(prompts: list, seed: int) -> np.ndarray:
    """partner[i] != i with prompts[partner[i]] != prompts[i] wherever the data
    allow it: a seeded random derangement, then swaps that undo equal prompts."""
    n = len(prompts)
    if n < 2:
        raise DataError("unpaired examples: the KL reference point needs at least two examples")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = np.roll(order, 1)  # a cycle through a random order: no fixed point
    for i in range(n):
        if prompts[partner[i]] != prompts[i]:
            continue
        for j in rng.permutation(n):  # swap partners with an example both of whose prompts then differ
            if prompts[partner[j]] != prompts[i] and prompts[partner[i]] != prompts[j] and j != i:
                partner[i], partner[j] = partner[j], partner[i]
                break
    return partner


def tokenize_examples(split: Dataset, tokenizer, max_length: int, max_prompt_length: int, seed: int,
                      where: str) -> tuple[Dataset, dict]:
    """Checked example rows -> (tokenized examples, counts of what truncation did);
    numeric columns other than the label are kept."""
    prompts = encode_prompts(tokenizer, split["prompt"])
    completions = encode_responses(tokenizer, split["completion"])
    partner = mismatched_partners(split["prompt"], seed)
    same_prompt = sum(split["prompt"][i] == split["prompt"][j] for i, j in enumerate(partner))
    if same_prompt:
        log.warning("%s: %d of %d examples have no completion of another prompt to estimate KL with; their "
                    "mismatched completion shares their prompt", where, same_prompt, len(split))
    out = {"prompt_length": [], "chosen_input_ids": [], "rejected_input_ids": [], "desirable": []}
    truncated = 0
    for i, (prompt, label) in enumerate(zip(prompts, split["label"])):
        kept, (completion, other), prompt_cut, response_cut = truncate(
            prompt, [completions[i], completions[partner[i]]], max_length, max_prompt_length)
        truncated += prompt_cut or response_cut
        out["prompt_length"].append(len(kept))
        out["chosen_input_ids"].append(kept + completion)
        out["rejected_input_ids"].append(kept + other)
        out["desirable"].append(int(label_value(label)))
    extra = {c: split[c] for c in split.column_names if c not in EXAMPLE_COLUMNS and c != "problem"}
    tokenized = Dataset.from_dict({**out, **extra})
    desirable = sum(out["desirable"])
    return tokenized, {"examples": len(tokenized), "desirable": desirable, "undesirable": len(tokenized) - desirable,
                       "truncated": truncated, "kl_partner_same_prompt": same_prompt, "kept": len(tokenized)}
