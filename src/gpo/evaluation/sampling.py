"""Evaluation by sampling: KL(pi || pi_ref), gold reward and gold win rate.

KL is estimated from policy samples y ~ pi(.|x) as the mean of
log pi(y|x) - log pi_ref(y|x) (unbiased), with its standard error. Sampling is
plain ancestral sampling (temperature 1, no top-k/top-p) so the samples come
from pi itself, which the estimator requires; log pi(y|x) is summed from the
logits the samples were drawn from (no second forward pass) where those fit
LOGITS_BUDGET_MB, and log pi_ref(y|x) takes one reference forward pass. The
reference's own samples (the other side of the win rate) are drawn by the
caller, who may keep them: they depend on the initial policy, the prompts and
a seed, not on training."""

import math

import torch

from gpo.data.gold import gold_scores
from gpo.data.tokenization import encode_prompts, pad_sequences
from gpo.logprobs import sequence_logps

LOGITS_BUDGET_MB = 256  # float32 logits of one generate call kept for the policy's log-probs; more: a forward pass


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
    return mean, math.sqrt(variance / n)


def prompt_token_ids(tokenizer, prompts: list[str], max_prompt_length: int) -> list[list[int]]:
    """What generation continues from: each prompt's ids, its last max_prompt_length tokens."""
    return [ids[-max_prompt_length:] for ids in encode_prompts(tokenizer, prompts)]


def vocabulary_size(model) -> int:
    head = model.get_output_embeddings()
    return head.weight.shape[0] if head is not None else model.config.get_text_config().vocab_size


@torch.no_grad()
def sample(model, prompt_ids: list[list[int]], max_new_tokens: int, pad_token_id: int, eos_token_id: int,
           batch_size: int | None = None, with_logps: bool = False):
    """(responses, log-probs): one sampled response per prompt (token ids,
    ending at EOS if produced), `batch_size` prompts per generate call, from
    the current RNG state; with `with_logps`, log model(response | prompt) of
    each from the generation's own logits, else (or when the logits of a call
    would exceed LOGITS_BUDGET_MB) None."""
    batch_size = batch_size or len(prompt_ids)
    device = next(model.parameters()).device
    keep = with_logps and batch_size * max_new_tokens * vocabulary_size(model) * 4 <= LOGITS_BUDGET_MB * 2**20
    responses, logps = [], []
    for start in range(0, len(prompt_ids), batch_size):
        batch = prompt_ids[start : start + batch_size]
        width = max(map(len, batch))
        # left padding: generation continues from the right end
        input_ids = torch.tensor([[pad_token_id] * (width - len(ids)) + ids for ids in batch])
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch])
        output = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
            do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
            max_new_tokens=max_new_tokens, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
            output_logits=keep, return_dict_in_generate=keep,
        )
        new = (output.sequences if keep else output)[:, width:]
        for row in new.tolist():
            responses.append(row[: row.index(eos_token_id) + 1] if eos_token_id in row else row)
        if keep:  # the raw logits (float32) each token was drawn from; nothing after a row's first EOS counts
            token_logps = torch.stack(output.logits, 1).log_softmax(-1).gather(-1, new[..., None]).squeeze(-1)
            eos = new == eos_token_id
            logps.append(token_logps.masked_fill(eos.cumsum(1) - eos.long() > 0, 0.0).sum(1).cpu())
    return responses, torch.cat(logps) if keep else None


@torch.no_grad()
def response_logps(model, prompt_ids, responses, pad_token_id, batch_size: int | None = None) -> torch.Tensor:
    """log model(response | prompt) of every pair, `batch_size` pairs per forward pass."""
    batch_size = batch_size or len(prompt_ids)
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompt_ids), batch_size):
        prompts, tails = prompt_ids[start : start + batch_size], responses[start : start + batch_size]
        batch = pad_sequences([p + r for p, r in zip(prompts, tails)], [len(p) for p in prompts], pad_token_id)
        out.append(sequence_logps(model, *(batch[k].to(device) for k in ("input_ids", "attention_mask",
                                                                           "response_mask"))).cpu())
    return torch.cat(out)


@torch.no_grad()
def evaluate_samples(policy, reference, tokenizer, prompts: list[str], prompt_ids: list[list[int]],
                     reference_samples: list[list[int]], max_new_tokens: int, gold_reward=None, batch_size=64):
    """Returns (metrics, rows): metrics under `eval/`, rows of (prompt, policy
    sample, reference sample[, gold rewards]) for a samples table. Policy
    samples are drawn here (the current RNG state); `reference_samples` are
    the reference's, one per prompt. `reference` is a gpo.reference.Reference
    (its `model(device)` context yields the reference model; a LoRA policy
    serves as its own)."""
    device = next(policy.parameters()).device
    special = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    was_training = policy.training
    policy.eval()
    try:
        policy_samples, policy_logps = sample(policy, prompt_ids, max_new_tokens, batch_size=batch_size,
                                              with_logps=True, **special)
        if policy_logps is None:  # logits too large to keep: a forward pass
            policy_logps = response_logps(policy, prompt_ids, policy_samples, tokenizer.pad_token_id, batch_size)
        with reference.model(device) as reference_lm:  # the policy may not be usable as itself inside this block
            reference_logps = response_logps(reference_lm, prompt_ids, policy_samples, tokenizer.pad_token_id,
                                             batch_size)
    finally:
        policy.train(was_training)
    texts = {"policy": tokenizer.batch_decode(policy_samples, skip_special_tokens=True),
             "reference": tokenizer.batch_decode(reference_samples, skip_special_tokens=True)}
    rows = [{"prompt": prompt, "policy": ours, "reference": theirs}
            for prompt, ours, theirs in zip(prompts, texts["policy"], texts["reference"])]
    metrics = {}
    metrics["eval/kl"], metrics["eval/kl_stderr"] = mean_and_stderr((policy_logps - reference_logps).tolist())
    if gold_reward is not None:  # scored in one call per side: a reward model scores them in batches
        gold = {side: gold_scores(gold_reward, prompts, texts[side]) for side in texts}
        wins = [0.5 if ours == theirs else float(ours > theirs) for ours, theirs in zip(gold["policy"],
                                                                                      gold["reference"])]
        for row, ours, theirs in zip(rows, gold["policy"], gold["reference"]):
            row["gold_policy"], row["gold_reference"] = ours, theirs
        metrics["eval/gold_reward"], metrics["eval/gold_reward_stderr"] = mean_and_stderr(gold["policy"])
        metrics["eval/gold_reward_reference"], _ = mean_and_stderr(gold["reference"])
        metrics["eval/win_rate"], metrics["eval/win_rate_stderr"] = mean_and_stderr(wins)
    return metrics, rows
