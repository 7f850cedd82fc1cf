"""Published preference formats, read from local files written in those formats
through the same loaders (datasets.load_dataset) that read them from the hub."""

import json
import logging
import os

import datasets
import pytest

from gpo.data import PairCollator, PreferenceDataModule
from gpo.data.sources import HHRLHF, Preferences, TLDRComparisons, UltraFeedbackBinarized
from gpo.infra.errors import DataError, InputError
from gpo.model import char_tokenizer


@pytest.fixture(autouse=True, scope="module")
def datasets_cache(tmp_path_factory):
    """Keep the datasets caches these tests make out of the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-datasets"))
        yield


CHATML = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def chat_tokenizer(eos_token=None):
    """The char tokenizer plus ChatML special tokens and template (BOS written by the template)."""
    tokenizer = char_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    if eos_token:
        tokenizer.eos_token = eos_token
    return tokenizer


def datamodule(source, tokenizer, **kwargs):
    dm = PreferenceDataModule(source, tokenizer, **{"max_length": 256, "max_prompt_length": 128, **kwargs})
    dm.setup("fit")
    return dm


def response_tokens(dm, split="train", row=0):
    """(prompt ids, chosen response ids, rejected response ids) of one row, via the collator's masks."""
    batch = PairCollator(dm.tokenizer.pad_token_id)([dm.tokenized[split][row]])
    ids, mask = batch["input_ids"], batch["response_mask"]
    prompt = ids[0][: int(dm.tokenized[split][row]["prompt_length"])].tolist()
    return prompt, ids[0][mask[0]].tolist(), ids[1][mask[1]].tolist()


HH = [
    {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?",
     "rejected": "\n\nHuman: Hi there\n\nAssistant: Go away."},
    {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: 6.",
     "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: Seven, I think."},
    {"chosen": "\n\nHuman: no reply turn", "rejected": "\n\nHuman: no reply turn"},
    {"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"},
    {"chosen": "\n\nHuman: Q\n\nAssistant:", "rejected": "\n\nHuman: Q\n\nAssistant: z"},
]


def test_hh_rlhf_splits_multi_turn_transcripts_at_the_last_assistant_turn(tmp_path):
    write_jsonl(tmp_path / "hh" / "train.jsonl", HH)
    write_jsonl(tmp_path / "hh" / "test.jsonl", HH[:2])
    source = HHRLHF(path=str(tmp_path / "hh"))
    tokenizer = char_tokenizer()
    dm = datamodule(source, tokenizer)
    rows = dm.text["train"].to_list()
    assert [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows] == [
        {"prompt": "\n\nHuman: Hi there\n\nAssistant:", "chosen": " Hello! How can I help?", "rejected": " Go away."},
        {"prompt": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant:",
         "chosen": " 6.", "rejected": " Seven, I think."},
    ]
    assert dm.report["train"]["dropped"] == {
        "no '\\n\\nAssistant:' turn in chosen": 1,
        "chosen and rejected differ before the last Assistant turn": 1,
        "empty response": 1,
    }
    assert len(dm.text["validation"]) == 2 and not dm.report["validation"]["dropped"]
    prompt, chosen, rejected = response_tokens(dm, row=1)
    assert prompt == [tokenizer.bos_token_id] + tokenizer(rows[1]["prompt"], add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(chosen) == " 6.</s>" and tokenizer.decode(rejected) == " Seven, I think.</s>"


ULTRA = [
    {"prompt": "Hi", "chosen": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": "Hello!"}],
     "rejected": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Greetings, dear user, how are you?"}],
     "score_chosen": 8.0, "score_rejected": 3.0},
    {"prompt": "2+2?", "chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
     "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}],
     "score_chosen": 9.0, "score_rejected": 1.0},
    {"prompt": "x", "chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}],
     "rejected": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "b"}],
     "score_chosen": 1.0, "score_rejected": 0.0},
]


@pytest.mark.parametrize("eos_token", [None, "<|im_end|>"])
def test_ultrafeedback_renders_the_chat_template_and_masks_only_the_answer(tmp_path, eos_token):
    files = {"train_prefs": str(write_jsonl(tmp_path / "uf" / "train_prefs.jsonl", ULTRA)),
             "test_prefs": str(write_jsonl(tmp_path / "uf" / "test_prefs.jsonl", ULTRA[:2]))}
    source = UltraFeedbackBinarized(path="json", data_files=files)  # the hub's split names
    tokenizer = chat_tokenizer(eos_token)
    dm = datamodule(source, tokenizer)
    assert dm.report["train"]["dropped"] == {"chosen and rejected differ before their last message": 1}
    assert {k: dm.text["train"][0][k] for k in ("prompt", "chosen", "rejected")} == {
        "prompt": "<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "chosen": "Hello!<|im_end|>",
        "rejected": "Greetings, dear user, how are you?<|im_end|>",
    }
    prompt, chosen, _ = response_tokens(dm)
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    # One BOS (the template's; the tokenizer adds none), special tokens as single ids.
    assert prompt.count(tokenizer.bos_token_id) == 1 and prompt[0] == tokenizer.bos_token_id
    assert prompt.count(start) == 3 and prompt.count(end) == 2
    assistant = tokenizer("assistant\n", add_special_tokens=False)["input_ids"]
    assert prompt[-len("assistant\n") - 1 :] == [start] + assistant
    # The answer, its end-of-turn marker, then EOS unless EOS is that marker.
    expected = tokenizer("Hello!", add_special_tokens=False)["input_ids"] + [end]
    assert chosen == (expected if eos_token else expected + [tokenizer.eos_token_id])


def test_conversational_data_needs_a_chat_template(tmp_path):
    source = UltraFeedbackBinarized(path=str(write_jsonl(tmp_path / "uf.jsonl", ULTRA[:2])))
    with pytest.raises(InputError, match="conversational .* no chat template"):
        datamodule(source, char_tokenizer())


def tldr_row(post, summaries, choice, subreddit="relationships", title="A title"):
    return {"info": {"id": "t3_x", "post": post, "title": title, "subreddit": subreddit, "site": None, "article": None},
            "summaries": [{"text": s, "policy": "sup2", "note": None} for s in summaries],
            "choice": choice, "worker": "w", "batch": "b", "split": "train", "extra": {"confidence": 5}}


def test_tldr_comparisons_take_the_chosen_summary_by_choice(tmp_path):
    rows = [tldr_row("My post text.", [" first summary", "second summary "], 1),
            tldr_row("Other post.", ["good one", "bad one"], 0),
            tldr_row("", ["a", "b"], 0)]
    write_jsonl(tmp_path / "tldr" / "train.jsonl", rows)
    write_jsonl(tmp_path / "tldr" / "validation.jsonl", rows[:2])
    source = TLDRComparisons(path=str(tmp_path / "tldr"))
    train = source.preferences()["train"].to_list()
    assert train[0] == {"prompt": "SUBREDDIT: r/relationships\n\nTITLE: A title\n\nPOST: My post text.\n\nTL;DR:",
                        "chosen": " second summary", "rejected": " first summary", "problem": ""}
    assert train[1]["chosen"] == " good one" and train[1]["rejected"] == " bad one"
    assert [row["problem"] for row in train] == ["", "", "no post or article text"]  # the data module drops it


def test_generic_preferences_map_columns_in_text_and_conversational_forms(tmp_path):
    text = write_jsonl(tmp_path / "text.jsonl",
                       [{"question": f"Q{i}?", "good": f" yes {i}", "bad": " no"} for i in range(10)])
    source = Preferences(path=str(text), prompt_column="question", chosen_column="good", rejected_column="bad")
    data = source.preferences()  # one file: a single split, validation held out by the data module
    assert data[3] == {"prompt": "Q3?", "chosen": " yes 3", "rejected": " no", "problem": ""}

    conv = [{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}],
             "rejected": [{"role": "assistant", "content": "Bye"}]}]
    write_jsonl(tmp_path / "conv" / "train.jsonl", conv * 4)
    write_jsonl(tmp_path / "conv" / "test.jsonl", conv)
    dm = datamodule(Preferences(path=str(tmp_path / "conv")), chat_tokenizer())
    assert dm.text["validation"][0]["prompt"].endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert dm.text["validation"][0]["chosen"] == "Hello<|im_end|>"

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": [{"role": "assistant", "content": " "}],
                                                "rejected": [{"role": "assistant", "content": "r"}]}])
    with pytest.raises(DataError, match=r"bad\.jsonl.*row 0: 'chosen' has a message with empty content \(assistant\)"):
        datamodule(Preferences(path=str(bad)), chat_tokenizer(), strict=True)
    with pytest.raises(DataError, match=r"missing column\(s\) \['question'\]"):
        Preferences(path=str(bad), prompt_column="question").preferences()


def test_truncation_is_counted_and_pairs_identical_after_it_dropped(tmp_path, caplog):
    rows = [{"prompt": "p" * 30, "chosen": "same start, then A",
             "rejected": "same start, then B"},  # identical once cut
            {"prompt": "short", "chosen": "ok", "rejected": "no"},
            {"prompt": "q" * 30, "chosen": "a" * 40, "rejected": "b"}]
    write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    write_jsonl(tmp_path / "d" / "test.jsonl", rows[1:2])
    with caplog.at_level(logging.INFO, logger="gpo.data"):
        dm = datamodule(Preferences(path=str(tmp_path / "d")), char_tokenizer(), max_length=24, max_prompt_length=12)
    assert dm.report["train"] == {"read": 3, "dropped": {}, "pairs": 3, "prompt_truncated": 2,
                                  "response_truncated": 2, "dropped_identical_after_truncation": 1, "kept": 2}
    assert "dropped 1 pairs whose chosen and rejected are the same tokens" in caplog.text
    prompt, chosen, rejected = response_tokens(dm, row=1)
    assert len(prompt) == 12 and len(prompt) + len(chosen) == 24 and len(rejected) == 2  # "b" + EOS


def test_tokenization_is_cached_by_datasets_and_parallel(tmp_path):
    rows = [{"prompt": f"prompt {i}:", "chosen": f" good {i}", "rejected": f" bad {i * 7}"} for i in range(40)]
    write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    write_jsonl(tmp_path / "d" / "test.jsonl", rows[:8])
    first = datamodule(Preferences(path=str(tmp_path / "d")), char_tokenizer())
    files = [f["filename"] for f in first.tokenized["train"].cache_files]
    mtimes = [os.path.getmtime(f) for f in files]
    again = datamodule(Preferences(path=str(tmp_path / "d")), char_tokenizer())  # a fresh tokenizer object
    assert [f["filename"] for f in again.tokenized["train"].cache_files] == files
    assert [os.path.getmtime(f) for f in files] == mtimes
    parallel = datamodule(Preferences(path=str(tmp_path / "d")), char_tokenizer(), num_proc=2, max_length=200)
    assert parallel.tokenized["train"]["chosen_input_ids"] == first.tokenized["train"]["chosen_input_ids"]
