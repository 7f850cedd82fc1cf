"""Preference data: sources of (prompt, chosen, rejected) text, tokenization, batching.

A *source* is any object with
  - `preferences()` -> a `datasets.Dataset` (split here into train/validation)
    or a dict {"train": ..., "validation": ...}, with text columns prompt,
    chosen, rejected and optionally float columns such as gold_chosen;
  - `description`: where the data comes from, for error messages;
and optionally `demonstrations()` (prompt/response rows for an SFT stage) and
`gold_reward(prompt, response)` when the task has a known reward.
"""

import logging
import os
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from datasets import Dataset, concatenate_datasets, load_dataset
from torch.utils.data import DataLoader, DistributedSampler

from gpo.chat import conversation_problem, render_conversations
from gpo.errors import DataError, InputError
from gpo.gold import relabel

TEXT_COLUMNS = ("prompt", "chosen", "rejected")
TRUNCATION_FLAGS = ("truncated_prompt", "truncated_response")

log = logging.getLogger(__name__)
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def check_rows(dataset: Dataset, where: str) -> None:
    """Fail before training on a row whose prompt/chosen/rejected is empty or
    not text (or, in conversational data, not a list of {role, content} messages)."""
    for column in TEXT_COLUMNS:
        for row, value in enumerate(dataset[column]):
            if isinstance(value, list) and (problem := conversation_problem(value)):
                raise DataError(f"{where}, row {row}: '{column}' {problem}")
            if isinstance(value, list):
                continue
            if not isinstance(value, str):
                raise DataError(f"{where}, row {row}: '{column}' is not text (got {type(value).__name__})")
            if not value.strip():
                raise DataError(f"{where}, row {row}: '{column}' is empty")


class PreferenceFiles:
    """Local JSON / JSONL / Parquet / CSV preference files, read (and cached) by `datasets`."""

    def __init__(
        self,
        train_files: str | Sequence[str],
        validation_files: str | Sequence[str] | None = None,
        prompt_column: str = "prompt",
        chosen_column: str = "chosen",
        rejected_column: str = "rejected",
    ):
        self.files = {"train": _as_list(train_files)}
        if validation_files:
            self.files["validation"] = _as_list(validation_files)
        self.columns = {prompt_column: "prompt", chosen_column: "chosen", rejected_column: "rejected"}
        self.description = ", ".join(sum(self.files.values(), []))

    def preferences(self) -> Dataset | dict[str, Dataset]:
        splits = {split: _concatenate([self._read(path) for path in paths]) for split, paths in self.files.items()}
        return splits if "validation" in splits else splits["train"]

    def _read(self, path: str) -> Dataset:
        builder = FILE_BUILDERS.get(os.path.splitext(path)[1].lower())
        if builder is None:
            raise DataError(f"{path}: unsupported file type (expected one of {', '.join(FILE_BUILDERS)})")
        if not os.path.isfile(path):
            raise DataError(f"{path}: data file not found")
        try:
            dataset = load_dataset(builder, data_files=path, split="train")
        except Exception as error:  # datasets raises several types for malformed files
            raise DataError(f"{path}: cannot read as {builder}: {error}") from error
        missing = [column for column in self.columns if column not in dataset.column_names]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; the file has {dataset.column_names}")
        dataset = dataset.select_columns(list(self.columns)).rename_columns(
            {old: new for old, new in self.columns.items() if old != new}
        )
        check_rows(dataset, path)
        return dataset


def _as_list(files: str | Sequence[str]) -> list[str]:
    return [files] if isinstance(files, str) else list(files)


def _concatenate(datasets: list[Dataset]) -> Dataset:
    return datasets[0] if len(datasets) == 1 else concatenate_datasets(datasets)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Prompt token ids with the tokenizer's special tokens (BOS), unless the
    text already starts with BOS (a chat template that writes it itself)."""
    bos = tokenizer.bos_token
    return tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]


def encode_response(tokenizer, text: str) -> list[int]:
    """Response ids ending in EOS (added unless the text, e.g. a chat turn, already ends with it)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids if ids[-1:] == [tokenizer.eos_token_id] else ids + [tokenizer.eos_token_id]


def tokenize_pair(row: dict, tokenizer, max_length: int, max_prompt_length: int) -> dict:
    """Tokenize prompt and responses separately (no token merges across the
    boundary), then truncate: the prompt keeps its end, responses their start.
    As max_length > max_prompt_length, every response keeps at least one token."""
    full_prompt = encode_prompt(tokenizer, row["prompt"])
    responses = {key: encode_response(tokenizer, row[key]) for key in ("chosen", "rejected")}
    prompt = full_prompt
    if len(prompt) + max(map(len, responses.values())) > max_length:
        prompt = prompt[-max_prompt_length:]
    out = {"prompt_length": len(prompt), "truncated_prompt": len(prompt) < len(full_prompt)}
    out["truncated_response"] = len(prompt) + max(map(len, responses.values())) > max_length
    for key, response in responses.items():
        out[f"{key}_input_ids"] = prompt + response[: max_length - len(prompt)]
    return out


def tokenize_split(split: Dataset, tokenizer, max_length: int, max_prompt_length: int, num_proc, where: str):
    """Tokenized pairs (a fingerprinted `datasets` map: cached for file-backed
    data) and counts of what truncation did. Pairs whose chosen and rejected are
    the same tokens after truncation are dropped: rho is 0 for them whatever the
    policy, so they carry no gradient and would only dilute the metrics."""
    fn_kwargs = dict(tokenizer=tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
    tokenized = split.map(tokenize_pair, fn_kwargs=fn_kwargs, remove_columns=list(TEXT_COLUMNS), num_proc=num_proc,
                          desc=f"Tokenizing {where}")
    report = {"pairs": len(tokenized), "prompt_truncated": sum(tokenized["truncated_prompt"]),
              "response_truncated": sum(tokenized["truncated_response"])}
    tokenized = tokenized.remove_columns(list(TRUNCATION_FLAGS)).filter(
        lambda chosen, rejected: [c != r for c, r in zip(chosen, rejected)],
        input_columns=["chosen_input_ids", "rejected_input_ids"], batched=True, num_proc=num_proc,
    )
    report["dropped_identical_after_truncation"] = report["pairs"] - len(tokenized)
    report["kept"] = len(tokenized)
    log.info("%s (max_length=%d, max_prompt_length=%d): %s", where, max_length, max_prompt_length, report)
    if report["dropped_identical_after_truncation"]:
        log.warning("%s: dropped %d pairs whose chosen and rejected are the same tokens after truncation",
                    where, report["dropped_identical_after_truncation"])
    return tokenized, report


def pad_sequences(sequences: list[list[int]], prompt_lengths: list[int], pad_token_id: int) -> dict:
    """Right-pad to the longest sequence; response_mask marks the response tokens."""
    width = max(map(len, sequences))
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    response_mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for i, (sequence, prompt_length) in enumerate(zip(sequences, prompt_lengths)):
        input_ids[i, : len(sequence)] = torch.tensor(sequence)
        attention_mask[i, : len(sequence)] = 1
        response_mask[i, prompt_length : len(sequence)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


class PairCollator:
    """Pads a batch of pairs into ONE tensor of 2B sequences (chosen rows, then
    rejected rows) so the policy sees chosen and rejected in a single forward."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        sequences = [row["chosen_input_ids"] for row in rows] + [row["rejected_input_ids"] for row in rows]
        batch = pad_sequences(sequences, [row["prompt_length"] for row in rows] * 2, self.pad_token_id)
        # Per-pair numeric extras (gold rewards, cached reference log-probs) ride along.
        for key, value in rows[0].items():
            if isinstance(value, (int, float)) and key != "prompt_length":
                batch[key] = torch.tensor([row[key] for row in rows], dtype=torch.float32)
        return batch


class PreferenceDataModule(pl.LightningDataModule):
    def __init__(
        self,
        source,
        tokenizer,
        max_length: int = 512,
        max_prompt_length: int = 256,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        num_proc: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        gold_reward=None,
        relabel_temperature: float | None = None,
    ):
        """`gold_reward` (prompt, response) -> float replaces the source's own for
        evaluation (e.g. gpo.gold.RewardModelGold); with `relabel_temperature`
        the pairs' labels are redrawn by Bradley-Terry on it (gpo.gold.relabel)."""
        super().__init__()
        if max_prompt_length >= max_length:
            raise InputError(
                f"data.max_length={max_length} is too small to keep any response token after a prompt of "
                f"data.max_prompt_length={max_prompt_length} tokens: need max_length > max_prompt_length"
            )
        if not 0.0 < val_fraction < 1.0:
            raise InputError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        self.source, self.tokenizer = source, tokenizer
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.val_fraction, self.num_workers, self.num_proc, self.seed = val_fraction, num_workers, num_proc, seed
        self.shuffle = shuffle  # False: fixed order (e.g. to compare runs across numbers of processes)
        self._gold_reward, self.relabel_temperature = gold_reward, relabel_temperature
        if relabel_temperature is not None and self.gold_reward is None:
            raise InputError("data.relabel_temperature is set but there is no gold reward: set data.gold_reward")
        self.text: dict[str, Dataset] = {}
        self.tokenized: dict[str, Dataset] = {}

    @property
    def gold_reward(self):
        return self._gold_reward if self._gold_reward is not None else getattr(self.source, "gold_reward", None)

    def setup(self, stage: str | None = None) -> None:
        if self.tokenized:
            return
        data = self.source.preferences()
        if isinstance(data, Dataset):
            split = data.train_test_split(test_size=self.val_fraction, seed=self.seed)
            data = {"train": split["train"], "validation": split["test"]}
        where = {name: f"{self.source.description} [{name}]" for name in data}
        self.text = {name: render_conversations(split, self.tokenizer, where[name], self.num_proc)
                     for name, split in data.items()}
        if self.relabel_temperature is not None:
            self.text = {name: relabel(split, self.gold_reward, self.relabel_temperature, self.seed) for name, split in self.text.items()}
        # Per split: how many pairs had their prompt / a response truncated, and how many were dropped.
        self.truncation: dict[str, dict[str, int]] = {}
        for name, split in self.text.items():
            self.tokenized[name], self.truncation[name] = tokenize_split(
                split, self.tokenizer, self.max_length, self.max_prompt_length, self.num_proc, where[name]
            )

    def evaluation_prompts(self, n: int) -> list[str]:
        """Prompts for sampling-based evaluation: fresh ones, never trained on,
        when the source can draw them; else the first n validation prompts."""
        if hasattr(self.source, "evaluation_prompts"):
            return self.source.evaluation_prompts(n)
        return self.text["validation"]["prompt"][:n]

    def demonstrations(self) -> Dataset:
        """SFT data: the task's own demonstrations, else the preferred responses."""
        if hasattr(self.source, "demonstrations"):
            return self.source.demonstrations()
        return self.text["train"].select_columns(["prompt", "chosen"]).rename_column("chosen", "response")

    def _loader(self, split: str, batch_size: int, shuffle: bool, sampler=None) -> DataLoader:
        return DataLoader(
            self.tokenized[split],
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=PairCollator(self.tokenizer.pad_token_id),
        )

    def train_dataloader(self) -> DataLoader:
        if not self.shuffle and self.trainer is not None and self.trainer.world_size > 1:
            # Lightning's automatic distributed sampler always shuffles training data; ours keeps the order.
            sampler = DistributedSampler(
                self.tokenized["train"], self.trainer.world_size, self.trainer.global_rank, shuffle=False
            )
            return self._loader("train", self.batch_size, shuffle=False, sampler=sampler)
        return self._loader("train", self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.eval_batch_size, shuffle=False)
