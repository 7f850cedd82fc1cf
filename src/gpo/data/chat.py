"""Conversational preference rows rendered to text with the tokenizer's chat template.

A conversational row has `prompt` as a list of {role, content} messages (or a
plain string, taken as one user message) and `chosen`/`rejected` as the
assistant message(s) that answer it (a plain string is one assistant message).
The prompt is rendered with the generation prompt (the template's opening of
the assistant turn); each response is what the template adds after that, so
its end-of-turn marker is part of the response the policy learns to produce.
Rendering is a `datasets` map fingerprinted on the tokenizer (hence on its
template), so it is cached per model like the tokenization that follows.
"""

from datasets import Dataset

from gpo.infra.errors import DataError, InputError

RESPONSE_COLUMNS = ("chosen", "rejected")


def conversation_problem(value) -> str | None:
    """Why `value` is not a usable list of messages (None if it is): a reason
    per kind of problem (it names no message index and no content, so rows
    with the same problem count under one reason)."""
    if not isinstance(value, list) or not value:
        return "is empty" if isinstance(value, list) else f"is not text (got {type(value).__name__})"
    for message in value:
        if not isinstance(message, dict):
            return f"has a message that is not a {{role, content}} mapping (got {type(message).__name__})"
        if not isinstance(message.get("role"), str):
            return "has a message without a 'role'"
        if not isinstance(message.get("content"), str):
            return "has a message without text 'content'"
        if not message["content"].strip():
            return f"has a message with empty content ({message['role']:.20})"
    return None


def is_conversational(dataset: Dataset) -> bool:
    """Whether the (checked) rows hold messages rather than text, by their values:
    a column's inferred type can be odd after unusable rows were dropped."""
    first = dataset[0] if len(dataset) else {}
    return any(isinstance(first.get(column), list) for column in ("prompt", *RESPONSE_COLUMNS))


def _messages(value, role: str) -> list[dict]:
    return [{"role": role, "content": value}] if isinstance(value, str) else [dict(m) for m in value]


def render_row(row: dict, index: int, tokenizer, where: str) -> dict:
    prompt = _messages(row["prompt"], "user")
    prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    out = {"prompt": prompt_text}
    for key in RESPONSE_COLUMNS:
        full = tokenizer.apply_chat_template(prompt + _messages(row[key], "assistant"), tokenize=False)
        if not full.startswith(prompt_text):
            raise DataError(
                f"{where}, row {index}: the chat template renders prompt+{key} with a different beginning than the "
                "prompt alone, so the response cannot be separated from it"
            )
        # Whitespace after the end-of-turn marker is layout, not something the policy should learn.
        out[key] = full[len(prompt_text) :].rstrip()
        if not out[key]:
            raise DataError(f"{where}, row {index}: '{key}' renders to nothing with the chat template")
    return out


def render_conversations(dataset: Dataset, tokenizer, where: str, num_proc: int | None = None) -> Dataset:
    """Text rows are returned as they are; conversational rows as rendered text."""
    if not is_conversational(dataset):
        return dataset
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            f"{where}: the data is conversational (lists of role/content messages) but the model's tokenizer has no "
            "chat template; use a chat model, or give one with model.policy.chat_template='<jinja template>'"
        )
    return dataset.map(
        render_row, with_indices=True, fn_kwargs=dict(tokenizer=tokenizer, where=where),
        num_proc=num_proc, desc="Rendering chat template",
    )
