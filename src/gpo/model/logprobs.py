"""Sequence log-probabilities of responses under a causal LM.

Two batch layouts (gpo.data.tokenization.PairCollator), one result, log pi(y|x)
per sequence:
  - padded: one sequence per row, `attention_mask` marks the real tokens;
  - packed: several sequences per row, no padding between them; `position_ids`
    restart at 0 for each sequence (transformers builds block-causal masks from
    them under sdpa/eager, and flash-attention's varlen kernel uses them), and
    `sequence_ids` says which sequence each token belongs to.

Two ways to get from hidden states to log-probs (`LogProbs.chunk_mb`):
  - chunked (default): the output head is applied to the response positions
    only, a chunk of tokens at a time, each chunk upcast to float32 for the
    logsumexp and recomputed in the backward pass, so no [tokens x vocabulary]
    float32 tensor ever exists: peak memory grows with the chunk, not with
    batch x length x vocabulary;
  - full (chunk_mb=null): the model's own forward, full-vocabulary logits at
    every position upcast to float32 (simple, and what any model supports).
"""

import logging
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gpo.model.runtime import eval_mode

log = logging.getLogger(__name__)

DEFAULT_CHUNK_MB = 256


def _token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Float32 for the log-softmax: bf16 log-probs summed over hundreds of tokens lose the margins we care about.
    logits = logits.float()
    return logits.gather(-1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)


def _head_logps(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _token_logps(head(hidden), targets)


def log_sum_squared_probs(logits: torch.Tensor) -> torch.Tensor:
    """log sum_v p_v^2 of softmax(logits) over the last dimension, in float32
    (WPO's per-position normaliser: logsumexp(2 z) - 2 logsumexp(z))."""
    logits = logits.float()
    return torch.logsumexp(2 * logits, dim=-1) - 2 * torch.logsumexp(logits, dim=-1)


@torch.no_grad()
def chunked_log_sum_squared_probs(head: torch.nn.Module, hidden: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    return torch.cat([log_sum_squared_probs(head(h)) for h in hidden.detach().split(chunk_tokens)])


def pad_by_sequence(values: torch.Tensor, owner: torch.Tensor, num_sequences: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat per-token values with the sequence each belongs to -> ([sequences, longest], mask),
    each sequence's values in their original order from column 0, zeros past its end."""
    counts = torch.bincount(owner, minlength=num_sequences)
    width = int(counts.max()) if len(values) else 0
    order = torch.argsort(owner, stable=True)
    row = owner[order]
    column = torch.arange(len(values), device=values.device) - (torch.cumsum(counts, 0) - counts)[row]
    padded = values.new_zeros(num_sequences, width).index_put((row, column), values[order])
    mask = torch.zeros(num_sequences, width, dtype=torch.bool, device=values.device).index_put(
        (row, column), torch.ones_like(row, dtype=torch.bool))
    return padded, mask


@dataclass(frozen=True)
class ResponseTokens:
    """Per-sequence response log-probs and their per-token parts: `sums` [n]
    (exactly what sequence_logps returns), `values` and `mask` [n, longest
    response] (values 0 past a response's end), and with `square_norm`
    `log_sum_sq` [n, longest]: log sum_v pi(v|.)^2 at each position, no gradient."""

    sums: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor
    log_sum_sq: torch.Tensor | None = None


def chunked_token_logps(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                        chunk_tokens: int) -> torch.Tensor:
    """log softmax(head(hidden))[targets] for [N, d] hidden states, `chunk_tokens`
    rows at a time. Under autograd every chunk is checkpointed: only its input
    (a slice of `hidden`) is kept, and its logits are recomputed in the
    backward pass, so one chunk's logits is the most that is alive at once.
    Tokens that fit in one chunk skip the recomputation: they are within budget."""
    if len(hidden) <= chunk_tokens:
        return _head_logps(head, hidden, targets)
    out = []
    for h, t in zip(hidden.split(chunk_tokens), targets.split(chunk_tokens)):
        if torch.is_grad_enabled() and h.requires_grad:
            out.append(checkpoint(_head_logps, head, h, t, use_reentrant=False, preserve_rng_state=False))
        else:
            out.append(_head_logps(head, h, t))
    return torch.cat(out)


def _causal_lm_parts(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(decoder: ids -> last hidden states, output head: hidden -> logits)."""
    return model.get_decoder(), model.get_output_embeddings()


class LogProbs:
    """How response log-probs are computed (conf/train.yaml `logprobs`).

    `chunk_mb`: float32 logits per chunk in MiB (the chunk is
    chunk_mb / (4 x vocabulary) tokens); null: full-vocabulary logits (the
    model's own forward). A model whose output is not just head(hidden)
    (logit soft-capping or scaling) fails a check on first use and gets the
    full path."""

    def __init__(self, chunk_mb: float | None = DEFAULT_CHUNK_MB):
        self.chunk_mb = chunk_mb
        self._chunkable = weakref.WeakKeyDictionary()  # model -> whether `check` passed (once per model)

    def chunk_tokens(self, vocab_size: int) -> int:
        return max(1, int(self.chunk_mb * 2**20) // (4 * vocab_size))

    def uses_chunks(self, model) -> bool:
        if self.chunk_mb is None:
            return False
        if model not in self._chunkable:
            self._chunkable[model] = self._check(model)
        return self._chunkable[model]

    @torch.no_grad()
    def _check(self, model) -> bool:
        """Whether the chunked path reproduces the model's own logits on a short
        input (it would not for a model that soft-caps or scales its logits
        after the head); if not, this model gets the full path, said in a log line."""
        try:
            decoder, head = _causal_lm_parts(model)
            device = next(model.parameters()).device
            ids = torch.randint(0, head.weight.shape[0], (1, 6), generator=torch.Generator().manual_seed(0)).to(device)
            with eval_mode(model):
                full = model(input_ids=ids, use_cache=False).logits.float()
                mine = head(decoder(input_ids=ids, use_cache=False)[0]).float()
            ok = full.shape == mine.shape and torch.allclose(full, mine, rtol=1e-3, atol=1e-3)
        except Exception as error:  # no get_decoder/get_output_embeddings, an unusual forward signature, ...
            log.debug("Chunked log-probs check failed: %r", error)
            ok = False
        if not ok:
            log.info("Log-probs: %s's output is not head(hidden states) (e.g. soft-capped logits): computing "
                     "full-vocabulary logits for it (logprobs.chunk_mb applies to plain heads)", type(model).__name__)
        return ok

    def _response_tokens(self, model, input_ids, attention_mask, response_mask, position_ids, sequence_ids,
                         num_sequences, square_norm: bool = False):
        """(log-prob of every response token, flat; the sequence each belongs to;
        the number of sequences; log sum_v p_v^2 per token with `square_norm`, else None)."""
        packed = sequence_ids is not None
        if packed:
            attention_mask = None  # transformers detects packed rows from position_ids only without a mask
        # use_cache=False: with a KV cache transformers ignores packed position_ids (plain causal mask).
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        # Token t is predicted from position t-1. A response token is never the first of its sequence
        # (a prompt precedes it), so in packed rows no prediction crosses a sequence boundary.
        targets, mask = input_ids[:, 1:], response_mask[:, 1:].bool()
        if packed:
            owner = sequence_ids[:, 1:][mask]
        else:
            num_sequences = len(input_ids)
            owner = torch.arange(len(input_ids), device=input_ids.device)[:, None].expand_as(mask)[mask]
        square = None
        if self.uses_chunks(model):
            decoder, head = _causal_lm_parts(model)
            hidden = decoder(**inputs)[0][:, :-1][mask]
            chunk = self.chunk_tokens(head.weight.shape[0])
            token_logps = chunked_token_logps(head, hidden, targets[mask], chunk)
            if square_norm:
                square = chunked_log_sum_squared_probs(head, hidden, chunk)
        else:
            logits = model(**inputs).logits[:, :-1]
            token_logps = -F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")[mask]
            if square_norm:
                with torch.no_grad():
                    square = log_sum_squared_probs(logits[mask])
        return token_logps, owner, num_sequences, square

    def sequence_logps(self, model, input_ids, attention_mask=None, response_mask=None, *, position_ids=None,
                       sequence_ids=None, num_sequences: int | None = None) -> torch.Tensor:
        """log pi(y|x) of every sequence: the sum of its response tokens'
        log-probs (prompt and padding positions are excluded by
        `response_mask`). One forward pass for the batch. Padded layout:
        `attention_mask`; packed layout: `position_ids`, `sequence_ids`,
        `num_sequences` (see the module docstring)."""
        token_logps, owner, num_sequences, _ = self._response_tokens(
            model, input_ids, attention_mask, response_mask, position_ids, sequence_ids, num_sequences)
        return token_logps.new_zeros(num_sequences).index_add(0, owner, token_logps)

    def sequence_tokens(self, model, input_ids, attention_mask=None, response_mask=None, *, position_ids=None,
                        sequence_ids=None, num_sequences: int | None = None,
                        square_norm: bool = False) -> ResponseTokens:
        """As sequence_logps (the same sums, from the same forward pass), with
        the per-token log-probs kept (ResponseTokens), for the axes that read tokens."""
        token_logps, owner, num_sequences, square = self._response_tokens(
            model, input_ids, attention_mask, response_mask, position_ids, sequence_ids, num_sequences, square_norm)
        values, mask = pad_by_sequence(token_logps, owner, num_sequences)
        return ResponseTokens(token_logps.new_zeros(num_sequences).index_add(0, owner, token_logps), values, mask,
                              None if square is None else pad_by_sequence(square, owner, num_sequences)[0])

    def batch_logps(self, model, batch) -> torch.Tensor:
        """Log-probs of every sequence of a PairCollator batch, either layout
        (chosen sequences first, then rejected)."""
        return self.sequence_logps(model, batch["input_ids"], **_layout(batch))

    def batch_tokens(self, model, batch, square_norm: bool = False) -> ResponseTokens:
        """batch_logps with the per-token log-probs kept (rows: chosen sequences, then rejected)."""
        return self.sequence_tokens(model, batch["input_ids"], **_layout(batch), square_norm=square_norm)

    def pair_logps(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) log-probs of a batch built by PairCollator."""
        return self.batch_logps(model, batch).chunk(2)



def _layout(batch) -> dict:
    """The layout arguments of sequence_logps for a PairCollator batch (two sequences per row)."""
    return dict(attention_mask=batch.get("attention_mask"), response_mask=batch["response_mask"],
                position_ids=batch.get("position_ids"), sequence_ids=batch.get("sequence_ids"),
                num_sequences=2 * len(batch["chosen_length"]) if "sequence_ids" in batch else None)
