"""Published preference datasets, each a data *source* (see gpo/data.py).

Each is read by `datasets.load_dataset` from the hub by name, or from a local
directory / files in the same format (`path: json` with `data_files`), and has
its own extraction of prompt / chosen / rejected:
  - `HHRLHF`: Anthropic HH-RLHF full transcripts;
  - `UltraFeedbackBinarized`: conversations whose last turn is the response;
  - `TLDRComparisons`: summarize-from-feedback post + two summaries + choice;
  - `Preferences`: any dataset with prompt/chosen/rejected columns (mapped by
    name), plain text or conversational.
Conversational rows stay lists of messages here; the data module renders them
with the model's chat template (gpo/chat.py). Rows a format cannot split are
dropped and counted by reason (`dropped`); every kept row is then checked by
`check_rows`, which fails on anything still unusable.
"""

import logging
import os
from collections import Counter
from collections.abc import Mapping

from datasets import Dataset, load_dataset

from gpo.data import FILE_BUILDERS, TEXT_COLUMNS, check_rows
from gpo.errors import DataError, InputError

log = logging.getLogger(__name__)


class HubPreferences:
    """Loading, split selection and row dropping shared by the formats.

    `splits` maps train/validation to the dataset's own split names; without a
    validation split the data module holds out `val_fraction` of train.
    `max_pairs` keeps the first rows of each split (quick runs on big data)."""

    default_path: str | None = None
    default_splits: Mapping[str, str] = {"train": "train", "validation": "test"}

    def __init__(
        self,
        path: str | None = None,
        name: str | None = None,
        data_dir: str | None = None,
        data_files=None,
        revision: str | None = None,
        splits: Mapping[str, str | None] | None = None,
        max_pairs: int | None = None,
        num_proc: int | None = None,
    ):
        path = path or self.default_path
        if not path:
            raise InputError(f"{type(self).__name__}: data.source.path is required "
                             "(a hub name, a local directory or file, or a builder such as json)")
        builder = FILE_BUILDERS.get(os.path.splitext(path)[1].lower())
        if builder and data_files is None:  # one local file: the only split, validation held out
            path, data_files, splits = builder, {"train": path}, {"train": "train"}
        self.path = path
        load_kwargs = dict(name=name, data_dir=data_dir, data_files=data_files, revision=revision)
        self.load_kwargs = {k: v for k, v in load_kwargs.items() if v}
        splits = dict(self.default_splits if splits is None else splits)
        if not splits.get("train"):
            raise InputError(f"{self.path}: data.source.splits needs a 'train' entry, got {splits}")
        self.splits = {role: split for role, split in splits.items() if split}
        self.max_pairs, self.num_proc = max_pairs, num_proc
        self.description = self.path + "".join(f" {k}={v}" for k, v in self.load_kwargs.items())
        self.dropped: dict[str, Counter] = {}

    def preferences(self) -> Dataset | dict[str, Dataset]:
        data = {role: self._prepare(role, split) for role, split in self.splits.items()}
        return data if "validation" in data else data["train"]

    def extract(self, row: dict) -> dict:
        """prompt/chosen/rejected of one row, plus `problem`: why the row is
        unusable ("" if it is)."""
        raise NotImplementedError

    def _load(self, split: str) -> Dataset:
        try:
            dataset = load_dataset(self.path, split=split, **self.load_kwargs)
        except Exception as error:  # datasets raises many types (missing files, unknown split, no network)
            message = f"{self.description}: cannot load split '{split}': {type(error).__name__}: {error}"
            raise DataError(message) from error
        return dataset.select(range(min(self.max_pairs, len(dataset)))) if self.max_pairs else dataset

    def _prepare(self, role: str, split: str) -> Dataset:
        where = f"{self.description} [{split}]"
        dataset = self._load(split)
        self.check_columns(dataset, where)
        dataset = dataset.map(
            self.extract, remove_columns=dataset.column_names, num_proc=self.num_proc, desc=f"Extracting {where}"
        )
        problems = Counter(p for p in dataset["problem"] if p)
        if problems:
            log.warning("%s: dropped %d of %d rows: %s", where, sum(problems.values()), len(dataset), dict(problems))
            dataset = dataset.filter(lambda p: not p, input_columns="problem", num_proc=self.num_proc)
        self.dropped[role] = problems
        if len(dataset) == 0:
            raise DataError(f"{where}: no usable rows (dropped: {dict(problems)})")
        dataset = dataset.remove_columns("problem")
        check_rows(dataset, where)
        return dataset

    required_columns: tuple[str, ...] = ()

    def check_columns(self, dataset: Dataset, where: str) -> None:
        missing = [c for c in self.required_columns if c not in dataset.column_names]
        if missing:
            raise DataError(f"{where}: missing column(s) {missing}; the data has {dataset.column_names}")


class HHRLHF(HubPreferences):
    """Anthropic/hh-rlhf: `chosen`/`rejected` are whole transcripts
    "\\n\\nHuman: ...\\n\\nAssistant: ...". The prompt is the chosen transcript
    through its last "\\n\\nAssistant:" (earlier turns included), which the
    rejected one must share; the responses are what follows it."""

    default_path = "Anthropic/hh-rlhf"
    required_columns = ("chosen", "rejected")
    marker = "\n\nAssistant:"

    def extract(self, row: dict) -> dict:
        chosen, rejected = row["chosen"], row["rejected"]
        cut = chosen.rfind(self.marker)
        prompt = chosen[: cut + len(self.marker)] if cut >= 0 else ""
        out = {"prompt": prompt, "chosen": chosen[len(prompt) :], "rejected": rejected[len(prompt) :], "problem": ""}
        if cut < 0:
            out["problem"] = "no '\\n\\nAssistant:' turn in chosen"
        elif not rejected.startswith(prompt):
            out["problem"] = "chosen and rejected differ before the last Assistant turn"
        elif not out["chosen"].strip() or not out["rejected"].strip():
            out["problem"] = "empty response"
        return out


def split_conversations(chosen: list, rejected: list) -> dict:
    """Implicit prompt: chosen and rejected are whole conversations; the prompt
    is every message before the last, which both must share."""
    out = {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:], "problem": ""}
    if not chosen or not rejected:
        out["problem"] = "empty conversation"
    elif chosen[:-1] != rejected[:-1]:
        out["problem"] = "chosen and rejected differ before their last message"
    elif not chosen[:-1]:
        out["problem"] = "no prompt messages before the response"
    elif chosen[-1].get("role") != "assistant" or rejected[-1].get("role") != "assistant":
        out["problem"] = "last message is not an assistant turn"
    return out


class Preferences(HubPreferences):
    """Any dataset with prompt/chosen/rejected columns (named by the
    *_column arguments), in one of the forms:
      - plain text: three strings;
      - conversational: prompt a list of {role, content} messages (or a
        string, one user message), chosen/rejected the assistant message(s);
      - conversational with implicit prompt (`prompt_column: null`):
        chosen/rejected whole conversations sharing all but the last message."""

    def __init__(self, prompt_column: str | None = "prompt", chosen_column: str = "chosen",
                 rejected_column: str = "rejected", **load_kwargs):
        super().__init__(**load_kwargs)
        self.columns = {"prompt": prompt_column, "chosen": chosen_column, "rejected": rejected_column}
        self.required_columns = tuple(c for c in self.columns.values() if c)

    def extract(self, row: dict) -> dict:
        chosen, rejected = row[self.columns["chosen"]], row[self.columns["rejected"]]
        if self.columns["prompt"] is None:
            if not isinstance(chosen, list) or not isinstance(rejected, list):
                return {"prompt": [], "chosen": [], "rejected": [], "problem": "implicit prompt needs conversations"}
            return split_conversations(chosen, rejected)
        return {"prompt": row[self.columns["prompt"]], "chosen": chosen, "rejected": rejected, "problem": ""}


class UltraFeedbackBinarized(Preferences):
    """HuggingFaceH4/ultrafeedback_binarized: `chosen`/`rejected` are
    conversations ending with the assistant's answer; the messages before it
    (the user prompt) are the prompt, rendered with the chat template."""

    default_path = "HuggingFaceH4/ultrafeedback_binarized"
    default_splits = {"train": "train_prefs", "validation": "test_prefs"}

    def __init__(self, **load_kwargs):
        super().__init__(prompt_column=None, **load_kwargs)


class TLDRComparisons(HubPreferences):
    """openai/summarize_from_feedback, config `comparisons`: a Reddit post (`info`:
    subreddit, title, post; CNN/DM rows have `article` instead), two
    `summaries` ({text, ...}) and `choice`, the index of the preferred one.
    The prompt is `prompt_template` filled from `info`; the responses are the
    summaries with one leading space (after "TL;DR:")."""

    default_path = "openai/summarize_from_feedback"
    default_splits = {"train": "train", "validation": "validation"}
    required_columns = ("info", "summaries", "choice")

    def __init__(self, prompt_template: str = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:",
                 **load_kwargs):
        super().__init__(**load_kwargs)
        self.prompt_template = prompt_template

    def extract(self, row: dict) -> dict:
        info, summaries, choice = row["info"] or {}, row["summaries"] or [], row["choice"]
        fields = {k: (info.get(k) or "").strip() for k in ("subreddit", "title", "post", "article")}
        fields["post"] = fields["post"] or fields["article"]
        out = {"prompt": self.prompt_template.format(**fields), "chosen": "", "rejected": "", "problem": ""}
        if len(summaries) != 2 or choice not in (0, 1):
            out["problem"] = "not two summaries with choice 0 or 1"
        elif not fields["post"]:
            out["problem"] = "no post or article text"
        else:
            out["chosen"] = " " + (summaries[choice]["text"] or "").strip()
            out["rejected"] = " " + (summaries[1 - choice]["text"] or "").strip()
            if not out["chosen"].strip() or not out["rejected"].strip():
                out["problem"] = "empty summary"
        return out


__all__ = ["HHRLHF", "Preferences", "TLDRComparisons", "UltraFeedbackBinarized", "TEXT_COLUMNS"]
