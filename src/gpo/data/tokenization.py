"""Text to token ids, and token ids to batches: the one encoding every stage
uses (preference training, the SFT stage, sampling prompts).

Prompt and response are tokenized separately and joined, so no token merges
across the boundary and the response mask is exact: the prompt gets the
tokenizer's special tokens (BOS), the response ends in EOS.
"""

import hashlib
import logging

import numpy as np
import pyarrow.compute as pc
import torch
from datasets import Dataset

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("prompt", "chosen", "rejected")
TRUNCATION_FLAGS = ("truncated_prompt", "truncated_response")


def encode_prompts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Prompt token ids with the tokenizer's special tokens (BOS), unless the
    text already starts with BOS (a chat template that writes it itself).
    One batched tokenizer call per kind of text (much faster than one per text)."""
    bos = tokenizer.bos_token
    starts_with_bos = [bool(bos) and text.startswith(bos) for text in texts]
    out: list[list[int]] = [[] for _ in texts]
    for has_bos in (False, True):
        where = [i for i, flag in enumerate(starts_with_bos) if flag == has_bos]
        if where:
            encoded = tokenizer([texts[i] for i in where], add_special_tokens=not has_bos)["input_ids"]
            for i, ids in zip(where, encoded):
                out[i] = ids
    return out


def encode_responses(tokenizer, texts: list[str]) -> list[list[int]]:
    """Response ids ending in EOS (added unless the text, e.g. a chat turn, already ends with it)."""
    eos = tokenizer.eos_token_id
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [ids if ids[-1:] == [eos] else ids + [eos] for ids in encoded]


def encode_prompt(tokenizer, text: str) -> list[int]:
    return encode_prompts(tokenizer, [text])[0]


def encode_response(tokenizer, text: str) -> list[int]:
    return encode_responses(tokenizer, [text])[0]


def truncate(prompt: list[int], responses: list[list[int]], max_length: int, max_prompt_length: int):
    """Keep the end of the prompt (at most max_prompt_length tokens, only when
    the longest response would not fit) and the start of each response.
    Returns (prompt, responses, prompt_truncated, response_truncated)."""
    kept = prompt
    if len(kept) + max(map(len, responses)) > max_length:
        kept = kept[-max_prompt_length:]
    room = max_length - len(kept)
    return kept, [r[:room] for r in responses], len(kept) < len(prompt), max(map(len, responses)) > room


def tokenize_pairs(rows: dict[str, list], tokenizer, max_length: int, max_prompt_length: int) -> dict[str, list]:
    """Preference rows (a batch: column -> values) as token ids. As
    max_length > max_prompt_length, every response keeps at least one token."""
    prompts = encode_prompts(tokenizer, rows["prompt"])
    chosen, rejected = (encode_responses(tokenizer, rows[key]) for key in ("chosen", "rejected"))
    out = {key: [] for key in ("prompt_length", "chosen_input_ids", "rejected_input_ids", *TRUNCATION_FLAGS)}
    for prompt, *responses in zip(prompts, chosen, rejected):
        prompt, (c, r), prompt_cut, response_cut = truncate(prompt, responses, max_length, max_prompt_length)
        for key, value in zip(out, (len(prompt), prompt + c, prompt + r, prompt_cut, response_cut)):
            out[key].append(value)
    return out


def tokenize_pair(row: dict, tokenizer, max_length: int, max_prompt_length: int) -> dict:
    """One preference row as token ids (tokenize_pairs on a batch of one)."""
    batch = tokenize_pairs({key: [row[key]] for key in TEXT_COLUMNS}, tokenizer, max_length, max_prompt_length)
    return {key: values[0] for key, values in batch.items()}


def tokenize_demonstrations(rows: dict[str, list], tokenizer, max_length: int, max_prompt_length: int) -> dict:
    """(prompt, response) demonstrations for the SFT stage, encoded exactly as
    a preference pair's chosen side (tests hold the two to the same ids)."""
    out = {"input_ids": [], "prompt_length": []}
    prompts, responses = encode_prompts(tokenizer, rows["prompt"]), encode_responses(tokenizer, rows["response"])
    for prompt, response in zip(prompts, responses):
        prompt, (response,), _, _ = truncate(prompt, [response], max_length, max_prompt_length)
        out["input_ids"].append(prompt + response)
        out["prompt_length"].append(len(prompt))
    return out


def tokenize_demonstration(row: dict, tokenizer, max_length: int, max_prompt_length: int) -> dict:
    batch = tokenize_demonstrations({"prompt": [row["prompt"]], "response": [row["response"]]}, tokenizer,
                                    max_length, max_prompt_length)
    return {key: values[0] for key, values in batch.items()}


def tokenize_split(split: Dataset, tokenizer, max_length: int, max_prompt_length: int, num_proc, where: str):
    """Tokenized pairs (a fingerprinted `datasets` map: cached for file-backed
    data) and counts of what truncation did. Pairs whose chosen and rejected are
    the same tokens after truncation are dropped: rho is 0 for them whatever the
    policy, so they carry no gradient and would only dilute the metrics."""
    fn_kwargs = dict(tokenizer=tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
    tokenized = split.map(tokenize_pairs, batched=True, fn_kwargs=fn_kwargs, remove_columns=list(TEXT_COLUMNS),
                          num_proc=num_proc, desc=f"Tokenizing {where}")
    report = {"pairs": len(tokenized), "prompt_truncated": sum(tokenized["truncated_prompt"]),
              "response_truncated": sum(tokenized["truncated_response"])}
    tokenized = tokenized.remove_columns(list(TRUNCATION_FLAGS)).filter(
        lambda chosen, rejected: [c != r for c, r in zip(chosen, rejected)],
        input_columns=["chosen_input_ids", "rejected_input_ids"], batched=True, num_proc=num_proc,
    )
    report["dropped_identical_after_truncation"] = report["pairs"] - len(tokenized)
    report["kept"] = len(tokenized)
    if report["dropped_identical_after_truncation"]:
        log.warning("%s: dropped %d pairs whose chosen and rejected are the same tokens after truncation",
                    where, report["dropped_identical_after_truncation"])
    return tokenized, report


def pad_sequences(sequences: list[list[int]], prompt_lengths: list[int], pad_token_id: int) -> dict:
    """Right-pad to the longest sequence; response_mask marks the response tokens."""
    width = max(map(len, sequences))
    input_ids = torch.tensor([sequence + [pad_token_id] * (width - len(sequence)) for sequence in sequences],
                             dtype=torch.long)  # one tensor from lists: a tensor per row costs more than the rest
    positions = torch.arange(width)
    real = positions < torch.tensor([len(sequence) for sequence in sequences])[:, None]
    response_mask = real & (positions >= torch.tensor(prompt_lengths)[:, None])
    return {"input_ids": input_ids, "attention_mask": real.long(), "response_mask": response_mask}


def pack_width(lengths: list[int], row_length: int | None) -> int:
    """Tokens per packed row: `row_length`, at least the longest sequence
    (None: the longest; 0: one row holding them all)."""
    return sum(lengths) if row_length == 0 else max(max(lengths), row_length or 0)


def pack_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Sequence indices per row of `width` tokens, first-fit decreasing."""
    rows: list[list[int]] = []
    room: list[int] = []
    open_rows: list[int] = []  # rows that can still take the shortest sequence, in order
    shortest = min(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r in open_rows if room[r] >= lengths[i]), None)
        if row is None:
            rows.append([]), room.append(width)
            row = len(rows) - 1
            open_rows.append(row)
        rows[row].append(i)
        room[row] -= lengths[i]
        if room[row] < shortest:  # full: never scanned again (keeps packing linear when rows fill up)
            open_rows.remove(row)
    return rows


def pack_sequences(sequences: list[list[int]], prompt_lengths: list[int], pad_token_id: int,
                   row_length: int | None = None, rows: list[list[int]] | None = None) -> dict:
    """Padding-free layout: sequences placed end to end in rows of
    `row_length` tokens (None: the longest sequence; 0: one row holding them
    all, what flash-attention's varlen path needs), first-fit decreasing
    (or as `rows` says). `position_ids` restart at 0 for every sequence,
    which is how transformers tells packed sequences apart (block-causal
    masks under sdpa/eager, varlen kernels under flash attention);
    `sequence_ids` maps each token to its sequence (-1: the padding that ends
    a row, a block of its own). Rows as wide as the longest sequence keep the
    attention cost that of a padded batch while the other layers see (almost)
    no padding."""
    lengths = np.array([len(s) for s in sequences])
    width = pack_width(lengths.tolist(), row_length)
    rows = rows if rows is not None else pack_rows(lengths.tolist(), width)
    # One flat pass instead of a tensor per sequence: where each sequence starts in the [rows x width] grid.
    order = np.array([i for members in rows for i in members])
    row_of = np.repeat(np.arange(len(rows)), [len(members) for members in rows])
    offset_in_row = np.concatenate([np.cumsum([0] + [lengths[i] for i in members[:-1]]) for members in rows])
    starts = row_of * width + offset_in_row
    n = lengths[order]
    token_sequence = np.repeat(order, n)  # the sequence of every real token, in grid order
    position = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    where = np.repeat(starts, n) + position
    size = len(rows) * width
    input_ids = np.full(size, pad_token_id, dtype=np.int64)
    input_ids[where] = np.fromiter((t for i in order for t in sequences[i]), dtype=np.int64, count=int(n.sum()))
    sequence_ids = np.full(size, -1, dtype=np.int64)
    sequence_ids[where] = token_sequence
    response_mask = np.zeros(size, dtype=bool)
    response_mask[where] = position >= np.asarray(prompt_lengths)[token_sequence]
    position_ids = np.zeros(size, dtype=np.int64)
    position_ids[where] = position
    pad = np.ones(size, dtype=bool)
    pad[where] = False
    if pad.any():  # the padding that ends a row counts from 0: a block of its own, attending to nothing real
        used = np.bincount(row_of, weights=n, minlength=len(rows)).astype(np.int64)  # tokens in each row
        position_ids[pad] = (np.arange(size) % width - np.repeat(used, width))[pad]
    shape = (len(rows), width)
    return {key: torch.from_numpy(value).view(shape) for key, value in (
        ("input_ids", input_ids), ("position_ids", position_ids), ("sequence_ids", sequence_ids),
        ("response_mask", response_mask))}


def real_tokens(batch: dict) -> int:
    """Non-padding tokens of a PairCollator batch, either layout."""
    if "sequence_ids" in batch:
        return int((batch["sequence_ids"] >= 0).sum())
    return int(batch["attention_mask"].sum())


class PairCollator:
    """Batches pairs as ONE set of 2B sequences (chosen rows, then rejected
    rows) so the policy sees chosen and rejected in a single forward: padded
    to the longest (`attention_mask`), or with `packing` placed end to end
    without padding (`position_ids`, `sequence_ids`; see pack_sequences).
    Per-pair numbers ride along: response lengths, `pair_id` (the row's index
    over all splits, which cached reference log-probs are looked up by) and
    any numeric column of the data (gold rewards)."""

    def __init__(self, pad_token_id: int, packing: bool = False, pack_length: int | None = None):
        self.pad_token_id, self.packing, self.pack_length = pad_token_id, packing, pack_length

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        sequences = [row["chosen_input_ids"] for row in rows] + [row["rejected_input_ids"] for row in rows]
        prompt_lengths = [row["prompt_length"] for row in rows] * 2
        packed_rows = None
        if self.packing:
            lengths = [len(s) for s in sequences]
            packed_rows = pack_rows(lengths, pack_width(lengths, self.pack_length))
        if packed_rows is not None and len(packed_rows) < len(sequences):
            batch = pack_sequences(sequences, prompt_lengths, self.pad_token_id, self.pack_length, packed_rows)
        else:  # packing off, or no two sequences fit in one row: padding is the same work with a simpler mask
            batch = pad_sequences(sequences, prompt_lengths, self.pad_token_id)
        lengths = torch.tensor([len(s) - p for s, p in zip(sequences, prompt_lengths)], dtype=torch.float)
        batch["chosen_length"], batch["rejected_length"] = lengths.chunk(2)
        for key, value in rows[0].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "prompt_length":
                batch[key] = torch.tensor([row[key] for row in rows])
        return batch


DIGEST_ROWS = 100_000  # rows hashed at a time: bounded memory on large datasets


def token_digest(dataset: Dataset, columns: tuple[str, ...]) -> str:
    """sha256 of `columns` (token-id lists and integers) of every row, in
    order: part of cache keys, because a config does not pin the data (a file
    edited in place has the same path). Vectorised over Arrow buffers."""
    digest = hashlib.sha256()
    for table in dataset.select_columns(list(columns)).with_format("arrow").iter(batch_size=DIGEST_ROWS):
        for name in columns:
            column = table.column(name).combine_chunks()
            is_list = str(column.type).startswith(("list", "large_list"))
            parts = [pc.list_value_length(column), pc.list_flatten(column)] if is_list else [column]
            for part in parts:
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(part.to_numpy(zero_copy_only=False), dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]
