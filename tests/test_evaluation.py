"""Sample evaluation's reference samples (drawn once, cached, never changing a
number) and the run's time split (summary.json `time_split`)."""

import json
import logging
import os
from contextlib import contextmanager

import pytest
import torch
from transformers import LlamaConfig

from conftest import FAST, SMALL_TASK, compose_train
from gpo.cache import DiskCache
from gpo.evaluation.reference_samples import KIND, reference_samples
from gpo.evaluation.sampling import prompt_token_ids, response_logps, sample
from gpo.models import tiny_causal_lm
from gpo.run import train


class TinyReference:
    """What reference_samples uses of a gpo.reference.Reference: its model and initial policy (key, cache)."""

    def __init__(self, cache_dir, key="initial"):
        self.lm, self.tokenizer = tiny_causal_lm(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                             num_attention_heads=2, num_key_value_heads=2))
        self.lm.eval()
        self.initial = type("Initial", (), {"key": key, "cache": DiskCache(cache_dir)})()
        self.built = 0

    @contextmanager
    def model(self, device):
        self.built += 1
        yield self.lm


def draw(reference, prompts, seed=3):
    ids = prompt_token_ids(reference.tokenizer, prompts, 16)
    tokenizer = reference.tokenizer
    return reference_samples(reference, ids, 6, tokenizer.pad_token_id, tokenizer.eos_token_id, batch_size=4,
                             seed=seed, device=torch.device("cpu"))


def test_reference_samples_are_drawn_once_in_their_own_stream(tmp_path, caplog):
    reference, prompts = TinyReference(tmp_path), [f"p{i}:" for i in range(10)]
    state = torch.get_rng_state()
    first = draw(reference, prompts)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's stream (training, the policy's samples) untouched
    assert len(first) == 10 and reference.built == 1
    torch.manual_seed(12345)  # whatever the global state, the same samples: from the cache ...
    assert draw(reference, prompts) == first and reference.built == 1
    assert draw(TinyReference(tmp_path / "elsewhere"), prompts) == first  # ... or drawn again in a fresh cache
    assert draw(reference, prompts, seed=4) != first  # another seed, another entry

    entry = next(p for p in (tmp_path / KIND).iterdir() if p.is_dir() and json.loads(
        (p / "meta.json").read_text())["seed"] == 3 and json.loads((p / "meta.json").read_text())["prompts"] == 10)
    (entry / "samples.json").write_text("[[1, 2")  # truncated by a crash
    with caplog.at_level(logging.WARNING):
        assert draw(reference, prompts) == first
    assert "cannot be read" in caplog.text


def test_an_unwritable_cache_draws_the_same_reference_samples(tmp_path, caplog):
    prompts = [f"q{i}:" for i in range(6)]
    expected = draw(TinyReference(tmp_path / "ok"), prompts)
    (tmp_path / "ro").write_text("a file where the cache directory should be")
    with caplog.at_level(logging.WARNING):
        assert draw(TinyReference(tmp_path / "ro"), prompts) == expected
    assert "not cached" in caplog.text


def test_batched_sampling_and_log_probs():
    reference = TinyReference("unused")
    tokenizer, model = reference.tokenizer, reference.lm
    ids = prompt_token_ids(tokenizer, ["ab:", "abcdefgh:", "x:"], max_prompt_length=4)
    assert ids[1] == tokenizer("abcdefgh:")["input_ids"][-4:]  # the prompt's end is kept
    torch.manual_seed(0)
    responses, none = sample(model, ids, 5, tokenizer.pad_token_id, tokenizer.eos_token_id, batch_size=2)
    assert none is None and len(responses) == 3 and all(0 < len(r) <= 5 for r in responses)
    assert all(tokenizer.eos_token_id not in r[:-1] for r in responses)  # nothing after EOS
    one_by_one = torch.cat([response_logps(model, [p], [r], tokenizer.pad_token_id) for p, r in zip(ids, responses)])
    torch.testing.assert_close(response_logps(model, ids, responses, tokenizer.pad_token_id, batch_size=2),
                               one_by_one, rtol=1e-5, atol=1e-5)


def test_the_policy_log_probs_come_from_the_logits_its_samples_were_drawn_from(monkeypatch):
    reference = TinyReference("unused")
    tokenizer, model = reference.tokenizer, reference.lm
    ids = prompt_token_ids(tokenizer, ["ab:", "abcdefgh:", "x:", "hello:"] * 6, max_prompt_length=16)  # left padding
    special = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    responses, logps = sample(model, ids, 12, batch_size=8, with_logps=True, **special)
    torch.manual_seed(0)
    assert sample(model, ids, 12, batch_size=8, **special) == (responses, None)  # the same samples without logits
    assert any(len(r) < 12 for r in responses)  # some ended at EOS: the tokens after it do not count
    torch.testing.assert_close(logps, response_logps(model, ids, responses, tokenizer.pad_token_id),
                               rtol=1e-5, atol=1e-4)  # a forward pass gives the same, to float rounding
    monkeypatch.setattr("gpo.evaluation.sampling.LOGITS_BUDGET_MB", 0)  # logits too large to keep
    torch.manual_seed(0)
    assert sample(model, ids, 12, batch_size=8, with_logps=True, **special) == (responses, None)


@pytest.fixture
def cache_dir(tmp_path, shared_cache):
    """A fresh cache sharing the session's SFT weights."""
    os.makedirs(f"{shared_cache}/sft", exist_ok=True)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "sft").symlink_to(f"{shared_cache}/sft", target_is_directory=True)
    return tmp_path / "cache"


def test_a_run_splits_its_time_and_a_cache_hit_changes_no_number(tmp_path, cache_dir):
    overrides = ["logger=csv", *FAST, *SMALL_TASK, f"cache_dir={cache_dir}",
                 "+callbacks.sample_evaluation.every_n_steps=2"]
    first = train(compose_train(overrides, output_dir=tmp_path / "first"))
    second = train(compose_train(overrides, output_dir=tmp_path / "second"))  # the reference samples from the cache
    assert len(list((cache_dir / KIND).glob("*/samples.json"))) == 1
    timing = ("per_sec", "time")
    assert {k: v for k, v in first.metrics.items() if not any(t in k for t in timing)} == \
        {k: v for k, v in second.metrics.items() if not any(t in k for t in timing)}
    assert first.trajectory == second.trajectory and "eval/win_rate" in first.metrics
    # The reference samples are the same at every step: so is their gold reward.
    assert len({point["eval/gold_reward_reference"] for point in first.trajectory}) == 1

    split = second.time_split
    stages = {"setup", "data", "sft", "reference", "trainer", "logger", "training_steps", "validation",
              "sample_evaluation", "fit_other", "export", "teardown"}
    assert stages <= set(split) and ({"process_start", "job_start"} & set(split))
    assert all(seconds >= 0 for seconds in split.values())
    assert split["training_steps"] > 0 and split["sample_evaluation"] > 0 and split["validation"] > 0
    assert split["total"] == pytest.approx(sum(v for k, v in split.items() if k != "total"))
    assert split["total"] >= second.wall_time_s - 0.01  # the run's own wall time, plus how it started
    training = second.stages["training"]
    assert len(training["step_seconds"]) == len(training["step_real_tokens"]) == 4
    assert sum(training["step_real_tokens"]) == training["real_tokens"] <= training["batch_tokens"]
