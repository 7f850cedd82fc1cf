"""Sequence log-probabilities of responses under a causal LM."""

import torch
import torch.nn.functional as F


def sequence_logps(model, input_ids, attention_mask, response_mask) -> torch.Tensor:
    """log pi(y|x): the sum of response tokens' log-probs; prompt and padding
    positions are excluded by `response_mask`. One forward pass for the batch."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    # Token t is predicted from position t-1. Float32 for the log-softmax: bf16
    # log-probs summed over hundreds of tokens lose the margins we care about.
    token_logps = -F.cross_entropy(logits.float().transpose(1, 2), input_ids[:, 1:], reduction="none")
    return (token_logps * response_mask[:, 1:]).sum(-1)


def pair_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) log-probs of a batch built by PairCollator."""
    logps = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    return logps.chunk(2)
