"""Preference data read by `datasets`: local files, hub datasets, published formats.

Each source is read by `datasets.load_dataset` (so it is cached, and
compressed files such as .jsonl.gz are read as they are) from the hub by name,
from a local directory, or from files, and has its own extraction of
prompt / chosen / rejected:
  - `Preferences`: any data with prompt/chosen/rejected columns (mapped by
    name), plain text or conversational; local files by `train_files`;
  - `HHRLHF`: Anthropic HH-RLHF full transcripts;
  - `UltraFeedbackBinarized`: conversations whose last turn is the response;
  - `TLDRComparisons`: summarize-from-feedback post + two summaries + choice.
Conversational rows stay lists of messages here; the data module renders them
with the model's chat template (gpo/data/chat.py). A row a format cannot
split gets a `problem` (why); the data module drops such rows, counted by
reason, or stops on the first with `data.strict=true`.
"""

import codecs
import importlib
import logging
import os
from collections.abc import Mapping, Sequence

from datasets import Dataset, load_dataset
from omegaconf import OmegaConf

from gpo.infra.errors import DataError, InputError

log = logging.getLogger(__name__)

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".zip")


def file_builder(path: str) -> str | None:
    """The `datasets` builder for a data file by its extension (compression suffixes ignored)."""
    stem = str(path).lower()
    for suffix in COMPRESSIONS:
        stem = stem.removesuffix(suffix)
    return FILE_BUILDERS.get(os.path.splitext(stem)[1])


OPENERS = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}  # compressions the standard library reads


def check_text(path: str, chunk: int = 1 << 20) -> None:
    """A JSON/CSV file (compressed or not) must be non-empty UTF-8 text:
    checked in one streaming pass, so a bad byte is named with its offset
    instead of surfacing later as a decoding error deep inside a reader."""
    suffix = os.path.splitext(str(path).lower())[1]
    if suffix in (".zst", ".zip"):  # read by datasets only; their errors are reported as they come
        return
    opener = importlib.import_module(OPENERS[suffix]).open if suffix in OPENERS else open
    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    try:
        with opener(path, "rb") as handle:
            while block := handle.read(chunk):
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as error:
                    raise DataError(f"{path}: not UTF-8 text (byte 0x{block[error.start]:02x} at offset "
                                    f"{offset + error.start}); convert it, e.g. iconv -f latin1 -t utf-8") from None
                offset += len(block)
            decoder.decode(b"", final=True)
    except (OSError, EOFError) as error:  # e.g. a truncated or mislabelled .gz
        raise DataError(f"{path}: cannot read ({type(error).__name__}: {error})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text (truncated character at the end)") from None
    if offset == 0:
        raise DataError(f"{path}: the file is empty (after decompression)")


def check_data_files(data_config) -> None:
    """Every local data file a data config names (a value with a data file's
    extension: .jsonl, .csv.gz, ...; not a URL) exists: checked before
    anything is fetched (a model from a hub), so a typo in a path costs no
    download and no retries, and the message names the file."""
    def strings(node):
        if isinstance(node, dict):
            return [s for value in node.values() for s in strings(value)]
        if isinstance(node, list):
            return [s for value in node for s in strings(value)]
        return [node] if isinstance(node, str) else []

    plain = OmegaConf.to_container(data_config, resolve=True) if OmegaConf.is_config(data_config) else data_config
    for value in strings(plain):
        if "://" not in value and file_builder(value) is not None and not os.path.isfile(value):
            raise DataError(f"{value}: data file not found")


def _as_list(files: str | Sequence[str]) -> list[str]:
    return [files] if isinstance(files, str) else list(files)


class Preferences:
    """Any preference data with prompt/chosen/rejected columns (named by the
    *_column arguments), in one of the forms:
      - plain text: three strings;
      - conversational: prompt a list of {role, content} messages (or a
        string, one user message), chosen/rejected the assistant message(s);
      - conversational with implicit prompt (`prompt_column: null`):
        chosen/rejected whole conversations sharing all but the last message.

    Where: `path` (a hub name, a local directory, one local file, or a
    builder such as json with `data_files`), or `train_files` (and
    `validation_files`): local JSON/JSONL/Parquet/CSV files, compressed or not.
    `splits` maps train/validation to the dataset's split names; without a
    validation split the data module holds out `val_fraction` of train.
    `max_pairs` keeps the first rows of each split (quick runs on big data)."""

    default_path: str | None = None
    default_splits: Mapping[str, str] = {"train": "train", "validation": "test"}

    def __init__(
        self,
        path: str | None = None,
        train_files: str | Sequence[str] | None = None,
        validation_files: str | Sequence[str] | None = None,
        name: str | None = None,
        data_dir: str | None = None,
        data_files=None,
        revision: str | None = None,
        splits: Mapping[str, str | None] | None = None,
        prompt_column: str | None = "prompt",
        chosen_column: str = "chosen",
        rejected_column: str = "rejected",
        max_pairs: int | None = None,
        num_proc: int | None = None,
    ):
        if train_files:
            data_files = {"train": _as_list(train_files)}
            if validation_files:
                data_files["validation"] = _as_list(validation_files)
            path, splits = self._builder_of(data_files), {split: split for split in data_files}
        path = path or self.default_path
        if not path:
            raise InputError(f"{type(self).__name__}: data.source.path (a hub name, a local directory or file, or a "
                             "builder such as json) or data.source.train_files is required")
        if file_builder(path) and data_files is None:  # one local file: the only split, validation held out
            path, data_files, splits = self._builder_of({"train": [path]}), {"train": path}, {"train": "train"}
        self.path = path
        load_kwargs = dict(name=name, data_dir=data_dir, data_files=data_files, revision=revision)
        self.load_kwargs = {k: v for k, v in load_kwargs.items() if v}
        splits = dict(self.default_splits if splits is None else splits)
        if not splits.get("train"):
            raise InputError(f"{self.path}: data.source.splits needs a 'train' entry, got {splits}")
        self.splits = {role: split for role, split in splits.items() if split}
        self.columns = {"prompt": prompt_column, "chosen": chosen_column, "rejected": rejected_column}
        self.max_pairs, self.num_proc = max_pairs, num_proc
        files = [f for fs in (data_files or {}).values() for f in _as_list(fs)] if isinstance(data_files, dict) else []
        self.description = ", ".join(files) if train_files else (
            self.path + "".join(f" {k}={v}" for k, v in self.load_kwargs.items()))

    @staticmethod
    def _builder_of(data_files: dict) -> str:
        for path in (f for files in data_files.values() for f in _as_list(files)):
            if file_builder(path) is None:
                raise DataError(f"{path}: unsupported file type (expected one of "
                                f"{', '.join(FILE_BUILDERS)}, optionally compressed: {', '.join(COMPRESSIONS)})")
            if not os.path.isfile(path):
                raise DataError(f"{path}: data file not found")
            if os.path.getsize(path) == 0:
                raise DataError(f"{path}: the file is empty")
            if file_builder(path) in ("json", "csv"):
                check_text(path)
        return file_builder(next(f for files in data_files.values() for f in _as_list(files)))

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(c for c in self.columns.values() if c)

    def preferences(self) -> Dataset | dict[str, Dataset]:
        """Rows with prompt/chosen/rejected and `problem` ("" for a usable row)."""
        data = {role: self._prepare(split) for role, split in self.splits.items()}
        return data if "validation" in data else data["train"]

    def extract(self, row: dict) -> dict:
        """prompt/chosen/rejected of one row, plus `problem`: why the row is
        unusable ("" if it is)."""
        chosen, rejected = row[self.columns["chosen"]], row[self.columns["rejected"]]
        if self.columns["prompt"] is None:
            if not isinstance(chosen, list) or not isinstance(rejected, list):
                return {"prompt": [], "chosen": [], "rejected": [], "problem": "implicit prompt needs conversations"}
            return split_conversations(chosen, rejected)
        return {"prompt": row[self.columns["prompt"]], "chosen": chosen, "rejected": rejected, "problem": ""}

    def _load(self, split: str) -> Dataset:
        try:
            dataset = load_dataset(self.path, split=split, **self.load_kwargs)
        except Exception as error:  # datasets raises many types (missing files, unknown split, no network)
            cause = error
            while cause.__cause__ is not None or cause.__context__ is not None:  # the parser's own words
                cause = cause.__cause__ or cause.__context__
            detail = f"{type(cause).__name__}: {cause}" if str(cause) else f"{type(cause).__name__} (malformed file?)"
            where = f"split '{split}' " if split != "train" or len(self.splits) > 1 else ""
            raise DataError(f"{self.description}: cannot read {where}as {self.path}: {detail}") from error
        return dataset.select(range(min(self.max_pairs, len(dataset)))) if self.max_pairs else dataset

    def _prepare(self, split: str) -> Dataset:
        where = f"{self.description} [{split}]"
        dataset = self._load(split)
        missing = [c for c in self.required_columns if c not in dataset.column_names]
        if missing:
            raise DataError(f"{where}: missing column(s) {missing}; the data has {dataset.column_names}")
        # Numeric columns ride along (scores for margin=score, soft labels for labels=soft, gold rewards).
        numeric = [name for name, feature in dataset.features.items() if name not in self.required_columns
                   and str(getattr(feature, "dtype", "")).startswith(("int", "uint", "float"))]
        return dataset.map(self.extract, remove_columns=[c for c in dataset.column_names if c not in numeric],
                           num_proc=self.num_proc, desc=f"Extracting {where}")


class HHRLHF(Preferences):
    """Anthropic/hh-rlhf: `chosen`/`rejected` are whole transcripts
    "\\n\\nHuman: ...\\n\\nAssistant: ...". The prompt is the chosen transcript
    through its last "\\n\\nAssistant:" (earlier turns included), which the
    rejected one must share; the responses are what follows it."""

    default_path = "Anthropic/hh-rlhf"
    marker = "\n\nAssistant:"

    def __init__(self, **load_kwargs):
        super().__init__(prompt_column=None, **load_kwargs)

    def extract(self, row: dict) -> dict:
        chosen, rejected = row["chosen"], row["rejected"]
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            return {"prompt": "", "chosen": "", "rejected": "", "problem": "chosen or rejected is not text"}
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


class UltraFeedbackBinarized(Preferences):
    """HuggingFaceH4/ultrafeedback_binarized: `chosen`/`rejected` are
    conversations ending with the assistant's answer; the messages before it
    (the user prompt) are the prompt, rendered with the chat template."""

    default_path = "HuggingFaceH4/ultrafeedback_binarized"
    default_splits = {"train": "train_prefs", "validation": "test_prefs"}

    def __init__(self, **load_kwargs):
        super().__init__(prompt_column=None, **load_kwargs)


class TLDRComparisons(Preferences):
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


class UnpairedExamples(Preferences):
    """Unpaired examples for KTO (gpo.data.unpaired): a prompt, one completion
    and a desirable/undesirable label per row (true/false, 1/0, or
    desirable/undesirable), columns named by the *_column arguments, as TRL's
    unpaired preference format (prompt, completion, label). Plain text only."""

    def __init__(self, prompt_column: str = "prompt", completion_column: str = "completion",
                 label_column: str = "label", **load_kwargs):
        super().__init__(**load_kwargs)
        self.columns = {"prompt": prompt_column, "completion": completion_column, "label": label_column}

    def extract(self, row: dict) -> dict:
        return {key: row[column] for key, column in self.columns.items()} | {"problem": ""}


__all__ = ["HHRLHF", "Preferences", "TLDRComparisons", "UltraFeedbackBinarized", "UnpairedExamples",
           "check_data_files"]
