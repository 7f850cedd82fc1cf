"""The preference data module: a source's text pairs, checked, tokenized and batched.

A *source* (gpo/data/sources) is any object with
  - `preferences()` -> a `datasets.Dataset` (split here into train/validation)
    or a dict {"train": ..., "validation": ...}, with columns prompt, chosen,
    rejected, optionally `problem` (why a row is unusable, "" if it is not)
    and numeric columns such as gold_chosen or preference_probability;
  - `description`: where the data comes from, for messages;
and optionally `demonstrations()` (prompt/response rows for an SFT stage),
`evaluation_prompts(n)` and `gold_reward(prompt, response)` when the task has
a known reward.

Unusable rows (empty or non-text fields, chosen identical to rejected, a
format that cannot be split) are dropped and counted by reason, or, with
`strict=True`, stop the run at the first one with its file and row.
"""

import copy
import logging
import os
from collections import Counter, OrderedDict

import pytorch_lightning as pl
import torch
from datasets import Dataset
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader

from gpo.checkpoints import ResumableLoader, ResumableSampler
from gpo.data.batching import LengthGroupedSampler, pair_lengths
from gpo.data.chat import conversation_problem, render_conversations
from gpo.data.gold import relabel
from gpo.data.tokenization import TEXT_COLUMNS, PairCollator, tokenize_demonstrations, tokenize_split
from gpo.errors import DataError, InputError
from gpo.models import packing_support

log = logging.getLogger(__name__)

# The last prepared data of this process, by `reuse_key`: the jobs of a multirun
# that runs in one process (sequential, or a joblib worker's successive jobs)
# mostly differ in loss and beta, not in data, and preparing it is most of a
# short job's set-up (generating, checking, tokenizing thousands of pairs).
# A few entries, least recently used dropped first: a sweep's seeds redraw the
# pairs, and its jobs cycle through them (seed varies fastest in Hydra's grid).
_PREPARED: OrderedDict[str, dict] = OrderedDict()
PREPARED_ENTRIES = 4


def file_stamps(node) -> list:
    """(path, size, mtime) of every existing file a config names: part of
    `reuse_key`, so a data file edited between two jobs is read again."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        return [stamp for value in node.values() for stamp in file_stamps(value)]
    if isinstance(node, list):
        return [stamp for value in node for stamp in file_stamps(value)]
    if isinstance(node, str) and os.path.isfile(node):
        info = os.stat(node)
        return [(node, info.st_size, info.st_mtime_ns)]
    return []


def row_problem(row: dict) -> str:
    """Why a prompt/chosen/rejected row cannot be trained on ("" if it can)."""
    if row.get("problem"):
        return row["problem"]
    for column in TEXT_COLUMNS:
        value = row[column]
        if isinstance(value, list):
            problem = conversation_problem(value)
            if problem:
                return f"'{column}' {problem}"
        elif not isinstance(value, str):
            return f"'{column}' is not text (got {type(value).__name__})"
        elif not value.strip():
            return f"'{column}' is empty"
    if row["chosen"] == row["rejected"]:
        return "chosen is identical to rejected"
    return ""


def drop_unusable(dataset: Dataset, where: str, strict: bool) -> tuple[Dataset, dict[str, int]]:
    """The usable rows and, by reason, how many were dropped."""
    problems = [row_problem(row) for row in dataset]
    dropped = Counter(p for p in problems if p)
    if strict and dropped:
        row = next(i for i, p in enumerate(problems) if p)
        raise DataError(f"{where}, row {row}: {problems[row]} (data.strict=true; false drops such rows)")
    if len(dropped) and sum(dropped.values()) == len(dataset):
        raise DataError(f"{where}: all {len(dataset)} pairs are unusable: {dict(dropped)}")
    if dropped:
        first = next(i for i, p in enumerate(problems) if p)
        log.warning("%s: dropped %d of %d pairs (%s), e.g. row %d; data.strict=true stops on them instead",
                    where, sum(dropped.values()), len(dataset), dict(dropped), first)
        dataset = dataset.select([i for i, p in enumerate(problems) if not p])
    if "problem" in dataset.column_names:
        dataset = dataset.remove_columns("problem")
    return dataset, dict(dropped)


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
        shuffle_seed: int | None = None,
        strict: bool = False,
        gold_reward=None,
        relabel_temperature: float | None = None,
        group_by_length: bool = True,
        group_batches: int = 64,
        packing: bool = True,
        pack_length: int | None = None,
    ):
        """`gold_reward` (prompt, response) -> float replaces the source's own for
        evaluation (e.g. gpo.data.gold.RewardModelGold); with `relabel_temperature`
        the pairs' labels are redrawn by Bradley-Terry on it (gpo.data.gold.relabel).
        `group_by_length`: shuffled training batches of similar length
        (gpo.data.batching; only with `shuffle`); `packing`: sequences end to
        end without padding, in rows of `pack_length` tokens (null: the
        batch's longest sequence; see gpo.data.tokenization.pack_sequences),
        where the model can isolate packed sequences (`configure_packing`)."""
        super().__init__()
        if max_prompt_length >= max_length:
            raise InputError(
                f"data.max_length={max_length} is too small to keep any response token after a prompt of "
                f"data.max_prompt_length={max_prompt_length} tokens: need max_length > max_prompt_length"
            )
        if not 0.0 < val_fraction < 1.0:
            raise InputError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if batch_size < 1:
            raise InputError(f"data.batch_size must be >= 1, got {batch_size}")
        self.source, self.tokenizer = source, tokenizer
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.val_fraction, self.num_workers, self.num_proc, self.seed = val_fraction, num_workers, num_proc, seed
        self.shuffle = shuffle  # False: fixed order (e.g. to compare runs across numbers of processes)
        self.shuffle_seed = seed if shuffle_seed is None else shuffle_seed  # the run's seed (gpo.run passes it)
        self.strict = strict
        self.group_by_length, self.group_batches = group_by_length, group_batches
        self.packing, self.pack_length = packing, pack_length
        self._gold_reward, self.relabel_temperature = gold_reward, relabel_temperature
        if relabel_temperature is not None and self.gold_reward is None:
            raise InputError("data.relabel_temperature is set but there is no gold reward: set data.gold_reward")
        self.text: dict[str, Dataset] = {}
        self.tokenized: dict[str, Dataset] = {}  # train then validation; `pair_id` runs over both in that order
        self.report: dict[str, dict] = {}  # per split: pairs read, dropped by reason, truncated, kept
        # Set (gpo.run: a digest of the data and model configs) to reuse this process's last prepared data.
        self.reuse_key: str | None = None
        self._demonstrations: Dataset | None = None

    @property
    def gold_reward(self):
        return self._gold_reward if self._gold_reward is not None else getattr(self.source, "gold_reward", None)

    def setup(self, stage: str | None = None) -> None:
        if self.tokenized:
            return
        prepared = _PREPARED.get(self.reuse_key) if self.reuse_key else None
        if prepared is not None:
            _PREPARED.move_to_end(self.reuse_key)
            self.text, self.tokenized = dict(prepared["text"]), dict(prepared["tokenized"])
            self.report, self._demonstrations = copy.deepcopy(prepared["report"]), prepared["demonstrations"]
            log.info("Data: %s: %d train / %d validation pairs (prepared by an earlier job of this process)",
                     self.source.description, len(self.tokenized["train"]), len(self.tokenized["validation"]))
            return
        self._prepare()
        if self.reuse_key:
            while len(_PREPARED) >= PREPARED_ENTRIES:
                _PREPARED.popitem(last=False)
            _PREPARED[self.reuse_key] = {"text": dict(self.text), "tokenized": dict(self.tokenized),
                                         "report": copy.deepcopy(self.report), "demonstrations": None}

    def _prepare(self) -> None:
        data = self.source.preferences()
        if isinstance(data, Dataset):  # checked whole, then a validation share held out
            data = self._validate({"train": data})["train"]
            split = data.train_test_split(test_size=self.val_fraction, seed=self.seed)
            data = {"train": split["train"], "validation": split["test"]}
        else:
            data = self._validate(data)
        where = {name: f"{self.source.description} [{name}]" for name in data}
        self.text = {name: render_conversations(split, self.tokenizer, where[name], self.num_proc)
                     for name, split in data.items()}
        if self.relabel_temperature is not None:
            self.text = {name: relabel(split, self.gold_reward, self.relabel_temperature, self.seed)
                         for name, split in self.text.items()}
        offset = 0
        for name in ("train", "validation"):
            tokenized, counts = tokenize_split(self.text[name], self.tokenizer, self.max_length,
                                               self.max_prompt_length, self.num_proc, where[name])
            if not len(tokenized):
                raise DataError(f"{where[name]}: no usable pairs left ({counts})")
            self.tokenized[name] = tokenized.add_column("pair_id", list(range(offset, offset + len(tokenized))))
            self.report.setdefault(name, {}).update(counts)
            offset += len(tokenized)
        train, validation = self.report["train"], self.report["validation"]
        log.info("Data: %s: %d train / %d validation pairs (truncated %d, dropped %d)", self.source.description,
                 train["kept"], validation["kept"],
                 sum(r["prompt_truncated"] + r["response_truncated"] for r in self.report.values()),
                 sum(sum(r.get("dropped", {}).values()) + r["dropped_identical_after_truncation"]
                     for r in self.report.values()))

    def check_trainable(self) -> None:
        """For training (gpo.run), not for inspecting data: at least one whole batch of training pairs.
        With fewer, every step would see the whole data set: full-batch training, not the experiment asked for."""
        pairs = len(self.tokenized["train"])
        if pairs < self.batch_size:
            raise DataError(f"{self.source.description} [train]: {pairs} training pairs, fewer than one batch "
                            f"(data.batch_size={self.batch_size}): lower data.batch_size or add data")

    def _validate(self, data: dict[str, Dataset]) -> dict[str, Dataset]:
        out = {}
        for name, split in data.items():
            out[name], dropped = drop_unusable(split, f"{self.source.description} [{name}]", self.strict)
            self.report[name] = {"read": len(split), "dropped": dropped}
        return out

    def summary(self) -> dict:
        """What the run summary records about the data."""
        out = {"splits": self.report}
        train = self.text.get("train")
        if train is not None and "preference_probability" in train.column_names:
            counts = Counter(round(p, 4) for p in train["preference_probability"])
            out["preference_probabilities"] = sorted([p, n] for p, n in counts.items())
        return out

    def evaluation_prompts(self, n: int) -> list[str]:
        """Prompts for sampling-based evaluation: fresh ones, never trained on,
        when the source can draw them; else the first n validation prompts."""
        if hasattr(self.source, "evaluation_prompts"):
            return self.source.evaluation_prompts(n)
        return self.text["validation"]["prompt"][:n]

    def demonstrations(self) -> Dataset:
        """SFT data, tokenized as the pairs are: the task's own demonstrations,
        else the preferred responses. Made once (kept with the prepared data)."""
        if self._demonstrations is None:
            if hasattr(self.source, "demonstrations"):
                text = self.source.demonstrations()
            else:
                text = self.text["train"].select_columns(["prompt", "chosen"]).rename_column("chosen", "response")
            self._demonstrations = text.map(
                tokenize_demonstrations, batched=True, remove_columns=text.column_names,
                desc="Tokenizing demonstrations",
                fn_kwargs=dict(tokenizer=self.tokenizer, max_length=self.max_length,
                               max_prompt_length=self.max_prompt_length))
            if self.reuse_key in _PREPARED:
                _PREPARED[self.reuse_key]["demonstrations"] = self._demonstrations
        return self._demonstrations

    def configure_packing(self, model) -> None:
        """Keep `packing` only if `model` can isolate packed sequences (else
        pad, said in a log line); one row per batch for flash attention."""
        if not self.packing:
            return
        layout = packing_support(model)
        if layout is None:
            self.packing = False
            log.info("Packing: %s cannot keep sequences packed in one row apart (attention %s): padding batches "
                     "instead", type(model).__name__, getattr(model.config, "_attn_implementation", "?"))
        elif layout == "one_row" and self.pack_length is None:
            self.pack_length = 0

    def collator(self) -> PairCollator:
        return PairCollator(self.tokenizer.pad_token_id, self.packing, self.pack_length)

    def _loader(self, split: str, batch_size: int, sampler=None) -> DataLoader:
        # Loaders draw their workers' base seed from their own generator, not the global RNG, so
        # iterating one does not shift the RNG stream a resumed run restores (gpo.checkpoints).
        loader = ResumableLoader if sampler is not None else DataLoader
        return loader(
            self.tokenized[split],
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self.collator(),
            generator=torch.Generator().manual_seed(self.shuffle_seed),
        )

    def train_dataloader(self) -> DataLoader:
        # Epoch e's order is seeded by (shuffle_seed, e), this rank's share under DDP (Lightning keeps a
        # DistributedSampler as it is), resumable mid-epoch; by default batches of pairs of similar length.
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if self.shuffle and self.group_by_length:
            sampler = LengthGroupedSampler(pair_lengths(self.tokenized["train"]), self.batch_size,
                                           self.group_batches, world, rank, seed=self.shuffle_seed)
        else:
            sampler = ResumableSampler(self.tokenized["train"], num_replicas=world, rank=rank, shuffle=self.shuffle,
                                       seed=self.shuffle_seed)
        return self._loader("train", self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.eval_batch_size)
