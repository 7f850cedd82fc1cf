"""What the data module checks in the pairs a source gives, before anything is
tokenized: each column in one form, every row usable (or dropped, counted by
reason), enough pairs to hold out validation, no validation pair that is
also a training pair.

Messages name the data and the rows (a few row numbers, counts by reason),
never a row's content: a data set's rows may be private, and a reason per row
would make one line per row."""

import json
import logging
import math
from collections import Counter, defaultdict

from datasets import Dataset

from gpo.data.chat import conversation_problem
from gpo.data.tokenization import TEXT_COLUMNS
from gpo.infra.errors import DataError

log = logging.getLogger(__name__)

SHOWN_ROWS = 5  # row numbers a message names per reason


def rows_text(rows: list[int]) -> str:
    shown = ", ".join(map(str, rows[:SHOWN_ROWS]))
    return f"row{'s' if len(rows) > 1 else ''} {shown}{', ...' if len(rows) > SHOWN_ROWS else ''}"


def check_forms(dataset: Dataset, where: str) -> None:
    """A text column holds text in every row, or lists of messages in every row, not both. (datasets reads
    such a column as JSON values: its text rows may come back as numbers, " 4" as 4, so any value that is
    not a list counts as text here.)"""
    for column in (name for name in TEXT_COLUMNS if name in dataset.column_names):
        forms = defaultdict(list)
        for i, value in enumerate(dataset[column]):
            if value is not None:
                forms["lists of messages" if isinstance(value, list) else "text"].append(i)
        if len(forms) > 1:
            raise DataError(f"{where}: column '{column}' mixes text ({rows_text(forms['text'])}) and lists of messages "
                            f"({rows_text(forms['lists of messages'])}): give every row in one form")


def row_problem(row: dict) -> str:
    """Why a prompt/chosen/rejected row cannot be trained on ("" if it can): one reason per kind, not per row."""
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


def drop_unusable(dataset: Dataset, where: str, strict: bool, problem=row_problem) -> tuple[Dataset, dict[str, int]]:
    """The usable rows and, by reason, how many were dropped (`problem`: row_problem for pairs,
    gpo.data.unpaired.example_problem for unpaired examples)."""
    check_forms(dataset, where)
    problems = [problem(row) for row in dataset]
    rows = defaultdict(list)
    for i, reason in enumerate(problems):
        if reason:
            rows[reason].append(i)
    dropped = {reason: len(found) for reason, found in rows.items()}
    if strict and dropped:
        row = next(i for i, p in enumerate(problems) if p)
        raise DataError(f"{where}, row {row}: {problems[row]} (data.strict=true; false drops such rows)")
    reasons = "; ".join(f"{reason}: {len(found)} ({rows_text(found)})" for reason, found in rows.items())
    if dropped and sum(dropped.values()) == len(dataset):
        raise DataError(f"{where}: all {len(dataset)} pairs are unusable: {reasons}")
    if dropped:
        log.warning("%s: dropped %d of %d pairs (%s); data.strict=true stops on them instead",
                    where, sum(dropped.values()), len(dataset), reasons)
        dataset = dataset.select([i for i, p in enumerate(problems) if not p])
    if "problem" in dataset.column_names:
        dataset = dataset.remove_columns("problem")
    return dataset, dropped


def check_split_sizes(pairs: int, val_fraction: float, where: str) -> None:
    """Enough pairs to hold out `val_fraction` for validation (counted as
    datasets' train_test_split does) and to train on the rest."""
    validation = math.ceil(val_fraction * pairs)
    if pairs - validation < 1 or validation < 1:
        raise DataError(f"{where}: {pairs} usable pair{'s' if pairs != 1 else ''}: too few to hold out "
                        f"data.val_fraction={val_fraction} for validation and train on the rest; add data, "
                        "or give validation data of its own (data.source.validation_files)")


KEY_COLUMNS = (*TEXT_COLUMNS, "completion", "label")  # a pair, or an unpaired example (gpo.data.unpaired)


def _key(row: dict) -> str:
    return json.dumps(list(row.values()), sort_keys=True, default=str)


def drop_leaks(train: Dataset, validation: Dataset, where: str, held_out: bool) -> tuple[Dataset, dict[str, int]]:
    """How many pairs repeat ({"repeated_in_train": ..., "also_in_train": ...})
    and the validation split, without the pairs that are also training pairs
    when it was `held_out` from the same data here (copies of a training pair
    in it would score what the policy was trained on: a validation accuracy
    near 1 that says nothing). A validation split the data gives is the data's
    own: kept whole, the overlap warned about. Repeats within training are kept
    (a data set's own weighting), and warned about."""
    columns = [column for column in KEY_COLUMNS if column in train.column_names]
    seen = Counter(_key(row) for row in train.select_columns(columns))
    repeated = sum(count - 1 for count in seen.values())
    leaks = [i for i, row in enumerate(validation.select_columns(columns)) if _key(row) in seen]
    if repeated or leaks:
        log.warning("%s: %d training pairs repeat an earlier one (kept); %d validation pairs are also training "
                    "pairs (%s): %s", where, repeated, len(leaks), rows_text(leaks) if leaks else "none",
                    "dropped from validation" if held_out else "kept (the data's own validation split)")
    if leaks and held_out:
        if len(leaks) == len(validation):
            raise DataError(f"{where} [validation]: all {len(validation)} held-out pairs are also training pairs (the "
                            "data repeats its pairs): nothing is left to validate on; remove the repeats, or give "
                            "validation data of its own (data.source.validation_files)")
        leaked = set(leaks)
        validation = validation.select([i for i in range(len(validation)) if i not in leaked])
    return validation, {"repeated_in_train": repeated, "also_in_train": len(leaks)}
