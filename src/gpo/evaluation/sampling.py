"""Evaluation by sampling: KL(pi || pi_ref), gold reward, gold win rate, and
how long the samples are.

KL is estimated from policy samples y ~ pi(.|x) as the mean of
log pi(y|x) - log pi_ref(y|x) (unbiased), with its standard error. Sampling is
plain ancestral sampling (temperature 1, no top-k/top-p) so the samples come
from pi itself, which the estimator requires.

Length: the mean number of tokens of the samples (EOS included), and the
length-controlled win rate, AlpacaEval 2's (Dubois et al. 2024, "Length-
Controlled AlpacaEval", arXiv 2404.04475) with its length term only: a
logistic regression of each prompt's win (1, 1/2 for a tie, 0) on
tanh(length difference / its standard deviation), read at no length
difference. A policy that wins by writing longer loses that part of its win rate.
"""

import math

import numpy as np
import torch

from gpo.data.tokenization import encode_prompt, pad_sequences
from gpo.model.logprobs import LogProbs
from gpo.model.runtime import eval_mode


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
    return mean, math.sqrt(variance / n)


def length_controlled_win_rate(wins, length_differences, ridge: float = 1e-4) -> float:
    """sigmoid(a) for the logistic regression P(win) = sigmoid(a + b tanh(d / std(d))),
    fitted by Newton's method to the (possibly fractional) wins; a tiny ridge keeps
    a, b finite when every comparison is won (or lost). Without length variation
    it is the win rate itself."""
    y = np.asarray(wins, dtype=float)
    d = np.asarray(length_differences, dtype=float)
    spread = d.std()
    x = np.stack([np.ones_like(d), np.tanh(d / spread) if spread > 0 else np.zeros_like(d)], axis=1)
    theta = np.zeros(2)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(x @ theta)))
        gradient = x.T @ (p - y) + ridge * len(y) * theta
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + ridge * len(y) * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(1.0 / (1.0 + np.exp(-theta[0])))


@torch.no_grad()
def sample(model, prompt_ids: list[list[int]], max_new_tokens: int, pad_token_id: int, eos_token_id: int):
    """One sampled response (token ids, ending at EOS if produced) per prompt."""
    width = max(map(len, prompt_ids))
    device = next(model.parameters()).device
    input_ids = torch.full((len(prompt_ids), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, ids in enumerate(prompt_ids):  # left padding: generation continues from the right end
        input_ids[i, width - len(ids) :] = torch.tensor(ids)
        attention_mask[i, width - len(ids) :] = 1
    output = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
        max_new_tokens=max_new_tokens, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
    )
    responses = []
    for row in output[:, width:].tolist():
        responses.append(row[: row.index(eos_token_id) + 1] if eos_token_id in row else row)
    return responses


@torch.no_grad()
def response_logps(model, prompt_ids, responses, pad_token_id, logprobs: LogProbs) -> torch.Tensor:
    batch = pad_sequences([p + r for p, r in zip(prompt_ids, responses)], [len(p) for p in prompt_ids], pad_token_id)
    device = next(model.parameters()).device
    return logprobs.sequence_logps(model, *(batch[k].to(device)
                                            for k in ("input_ids", "attention_mask", "response_mask")))


@torch.no_grad()
def evaluate_samples(policy, reference, tokenizer, prompts, max_prompt_length, max_new_tokens, gold_reward=None,
                     batch_size=64, logprobs: LogProbs | None = None):
    """Returns (metrics, rows): metrics under `eval/`, rows of (prompt, policy
    sample, reference sample[, gold rewards]) for a samples table.
    `reference` is a gpo.reference.Reference (its `model(device)` context
    yields the reference model; a LoRA policy serves as its own); `logprobs`:
    how log-probs are computed (the run's settings). The policy samples in
    eval mode and is back in its mode after, however this ends."""
    device, logprobs = next(policy.parameters()).device, logprobs or LogProbs()
    kl, policy_gold, reference_gold, wins, rows, lengths = [], [], [], [], [], []
    special = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    with eval_mode(policy):
        for start in range(0, len(prompts), batch_size):
            texts = prompts[start : start + batch_size]
            prompt_ids = [encode_prompt(tokenizer, text)[-max_prompt_length:] for text in texts]
            policy_samples = sample(policy, prompt_ids, max_new_tokens, **special)
            policy_logps = response_logps(policy, prompt_ids, policy_samples, tokenizer.pad_token_id, logprobs)
            with reference.model(device) as reference_lm:  # the policy may not be usable as itself inside this block
                reference_samples = sample(reference_lm, prompt_ids, max_new_tokens, **special)
                reference_logps = response_logps(reference_lm, prompt_ids, policy_samples, tokenizer.pad_token_id,
                                                 logprobs)
            kl += (policy_logps - reference_logps).tolist()
            lengths += [(len(ours), len(theirs)) for ours, theirs in zip(policy_samples, reference_samples)]
            for text, ours, theirs in zip(texts, policy_samples, reference_samples):
                row = {
                    "prompt": text,
                    "policy": tokenizer.decode(ours, skip_special_tokens=True),
                    "reference": tokenizer.decode(theirs, skip_special_tokens=True),
                }
                if gold_reward is not None:
                    row["gold_policy"] = gold_reward(text, row["policy"])
                    row["gold_reference"] = gold_reward(text, row["reference"])
                    policy_gold.append(row["gold_policy"])
                    reference_gold.append(row["gold_reference"])
                    wins.append(0.5 if row["gold_policy"] == row["gold_reference"]
                                else float(row["gold_policy"] > row["gold_reference"]))
                rows.append(row)

    metrics = {}
    metrics["eval/kl"], metrics["eval/kl_stderr"] = mean_and_stderr(kl)
    if gold_reward is not None:
        metrics["eval/gold_reward"], metrics["eval/gold_reward_stderr"] = mean_and_stderr(policy_gold)
        metrics["eval/gold_reward_reference"], _ = mean_and_stderr(reference_gold)
        metrics["eval/win_rate"], metrics["eval/win_rate_stderr"] = mean_and_stderr(wins)
    ours, theirs = (np.array(side, dtype=float) for side in zip(*lengths))
    metrics["eval/length"], metrics["eval/length_stderr"] = mean_and_stderr(ours.tolist())
    metrics["eval/length_reference"] = float(theirs.mean())
    if gold_reward is not None:
        metrics["eval/lc_win_rate"] = length_controlled_win_rate(wins, ours - theirs)
    return metrics, rows
