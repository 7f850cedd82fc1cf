"""Preference data: sources of (prompt, chosen, rejected) text, tokenization, batching.

A *source* is any object with
  - `preferences()` -> a `datasets.Dataset` (split here into train/validation)
    or a dict {"train": ..., "validation": ...}, with text columns prompt,
    chosen, rejected and optionally float columns such as gold_chosen;
  - `description`: where the data comes from, for error messages;
and optionally `demonstrations()` (prompt/response rows for an SFT stage) and
`gold_reward(prompt, response)` when the task has a known reward.
"""

import os
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from datasets import Dataset, concatenate_datasets, load_dataset
from torch.utils.data import DataLoader

from gpo.errors import DataError, InputError

TEXT_COLUMNS = ("prompt", "chosen", "rejected")
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def check_rows(dataset: Dataset, where: str) -> None:
    """Fail before training on a row whose prompt/chosen/rejected is empty or not text."""
    for column in TEXT_COLUMNS:
        for row, value in enumerate(dataset[column]):
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


def tokenize_pair(row: dict, tokenizer, max_length: int, max_prompt_length: int) -> dict:
    """Tokenize prompt and responses separately (no token merges across the
    boundary), then truncate: the prompt keeps its end, responses their start."""
    prompt = tokenizer(row["prompt"])["input_ids"]
    responses = {
        key: tokenizer(row[key], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for key in ("chosen", "rejected")
    }
    if len(prompt) + max(map(len, responses.values())) > max_length:
        prompt = prompt[-max_prompt_length:]
    out = {"prompt_length": len(prompt)}
    for key, response in responses.items():
        out[f"{key}_input_ids"] = prompt + response[: max_length - len(prompt)]
    return out


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
    ):
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
        self.text: dict[str, Dataset] = {}
        self.tokenized: dict[str, Dataset] = {}

    @property
    def gold_reward(self):
        return getattr(self.source, "gold_reward", None)

    def setup(self, stage: str | None = None) -> None:
        if self.tokenized:
            return
        data = self.source.preferences()
        if isinstance(data, Dataset):
            split = data.train_test_split(test_size=self.val_fraction, seed=self.seed)
            data = {"train": split["train"], "validation": split["test"]}
        self.text = data
        fn_kwargs = dict(tokenizer=self.tokenizer, max_length=self.max_length, max_prompt_length=self.max_prompt_length)
        self.tokenized = {
            name: split.map(tokenize_pair, fn_kwargs=fn_kwargs, remove_columns=list(TEXT_COLUMNS), num_proc=self.num_proc)
            for name, split in data.items()
        }

    def demonstrations(self) -> Dataset:
        """SFT data: the task's own demonstrations, else the preferred responses."""
        if hasattr(self.source, "demonstrations"):
            return self.source.demonstrations()
        return self.text["train"].select_columns(["prompt", "chosen"]).rename_column("chosen", "response")

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.tokenized[split],
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=PairCollator(self.tokenizer.pad_token_id),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.eval_batch_size, shuffle=False)
