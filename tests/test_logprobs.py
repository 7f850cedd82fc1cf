"""Log-probs without padding waste or full-vocabulary logits: packed batches and
chunked output heads give the padded, full-logits values (and gradients)."""

import logging
import sys

import pytest
import torch
from hydra.utils import instantiate
from transformers import Gemma2Config, LlamaConfig

from conftest import compose_train
from gpo.data.tokenization import PairCollator, real_tokens
from gpo.model import packing_support, tiny_causal_lm
from gpo.model.logprobs import LogProbs, chunked_token_logps
from gpo.reference import CachedReference

FULL = LogProbs(chunk_mb=None)  # the plain path: the model's own logits over the whole vocabulary


def tiny_llama(attention="sdpa", seed=0):
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, attn_implementation=attention)
    return tiny_causal_lm(config, seed=seed)


def random_pairs(n=6, seed=0):
    """Pairs of unequal prompt and response lengths (token ids of the char vocabulary)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 12, (n, 3), generator=generator).tolist()
    ids = lambda k: torch.randint(4, 90, (k,), generator=generator).tolist()  # noqa: E731
    return [{"prompt_length": p, "chosen_input_ids": (prompt := ids(p)) + ids(c), "rejected_input_ids": prompt + ids(r),
             "pair_id": i} for i, (p, c, r) in enumerate(lengths)]


def logps_and_grads(logprobs, model, batch):
    model.zero_grad()
    values = logprobs.batch_logps(model, batch)
    (values * torch.linspace(-1, 2, len(values))).sum().backward()  # unequal weights: a per-sequence mix-up shows
    return values.detach(), [p.grad.clone() for p in model.parameters()]


def assert_same(a, b):
    (values_a, grads_a), (values_b, grads_b) = a, b
    torch.testing.assert_close(values_a, values_b, rtol=1e-5, atol=1e-5)
    for grad_a, grad_b in zip(grads_a, grads_b):
        torch.testing.assert_close(grad_a, grad_b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_and_chunked_log_probs_and_gradients_equal_the_padded_full_logits_path(attention):
    model, tokenizer = tiny_llama(attention)
    rows = random_pairs()
    padded = PairCollator(tokenizer.pad_token_id)(rows)
    expected = logps_and_grads(FULL, model, padded)
    tiny_chunks = LogProbs(chunk_mb=8 * len(tokenizer) * 4 / 2**20)  # 8 tokens a chunk: many chunks
    assert tiny_chunks.chunk_tokens(len(tokenizer)) == 8
    for pack_length in (None, 0, 40):  # rows as wide as the longest sequence, one row, wider rows
        packed = PairCollator(tokenizer.pad_token_id, packing=True, pack_length=pack_length)(rows)
        assert packed["input_ids"].numel() < padded["input_ids"].numel()
        assert real_tokens(packed) == real_tokens(padded)
        for logprobs in (FULL, tiny_chunks, LogProbs()):
            assert_same(logps_and_grads(logprobs, model, packed), expected)
    assert_same(logps_and_grads(tiny_chunks, model, padded), expected)


def test_packed_rows_restart_positions_and_keep_per_pair_fields():
    rows = random_pairs(4)
    batch = PairCollator(0, packing=True)(rows)
    sequences = [r["chosen_input_ids"] for r in rows] + [r["rejected_input_ids"] for r in rows]
    assert batch["input_ids"].shape[1] == max(map(len, sequences))
    for i, sequence in enumerate(sequences):
        where = batch["sequence_ids"] == i
        assert batch["input_ids"][where].tolist() == sequence
        assert batch["position_ids"][where].tolist() == list(range(len(sequence)))
        assert int((where & batch["response_mask"]).sum()) == len(sequence) - rows[i % 4]["prompt_length"]
    assert batch["pair_id"].tolist() == [0, 1, 2, 3]
    padded = PairCollator(0)(rows)
    assert torch.equal(batch["chosen_length"], padded["chosen_length"])
    assert torch.equal(batch["rejected_length"], padded["rejected_length"])
    # No two sequences fit in a row (equal lengths): packing would save nothing, so the batch is padded.
    same = [{**row, "rejected_input_ids": row["chosen_input_ids"][:1] * len(row["chosen_input_ids"])} for row in rows]
    same = [{**row, "chosen_input_ids": row["chosen_input_ids"] + [5] * (30 - len(row["chosen_input_ids"])),
             "rejected_input_ids": [7] * 30} for row in same]
    assert "attention_mask" in PairCollator(0, packing=True)(same)


def test_chunked_head_matches_full_logits_in_value_and_gradient():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 1000, bias=True)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 1000, (37,))
    weights = torch.randn(37)
    full = torch.log_softmax(head(hidden).float(), -1).gather(-1, targets[:, None])[:, 0]
    expected = torch.autograd.grad((full * weights).sum(), [hidden, head.weight, head.bias])
    chunked = chunked_token_logps(head, hidden, targets, chunk_tokens=5)
    torch.testing.assert_close(chunked, full)
    for got, want in zip(torch.autograd.grad((chunked * weights).sum(), [hidden, head.weight, head.bias]), expected):
        torch.testing.assert_close(got, want)


def test_a_model_with_soft_capped_logits_gets_the_full_path(caplog):
    config = Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=2, head_dim=16, final_logit_softcapping=2.0)
    model, tokenizer = tiny_causal_lm(config)
    batch = PairCollator(tokenizer.pad_token_id)(random_pairs())
    logprobs = LogProbs()
    with caplog.at_level(logging.INFO, logger="gpo.model.logprobs"):
        assert not logprobs.uses_chunks(model)
    assert "full-vocabulary logits" in caplog.text
    torch.testing.assert_close(logprobs.batch_logps(model, batch), FULL.batch_logps(model, batch))
    assert LogProbs().uses_chunks(tiny_llama()[0])  # a plain head keeps the chunks


class IgnoresPositions(torch.nn.Module):
    """A model that cannot keep packed sequences apart (it drops position_ids)."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def forward(self, input_ids, position_ids=None, **kwargs):
        return self.inner(input_ids=input_ids, **kwargs)

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()


def test_packing_falls_back_to_padding_for_a_model_that_cannot_isolate_sequences(caplog):
    model, tokenizer = tiny_llama()
    assert packing_support(model) == "rows" and packing_support(tiny_llama("eager")[0]) == "rows"
    assert packing_support(IgnoresPositions(model)) is None
    cfg = compose_train(["data.source.num_pairs=64"])
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    with caplog.at_level(logging.INFO, logger="gpo.data.module"):
        datamodule.configure_packing(IgnoresPositions(model))
    assert not datamodule.packing and "padding batches instead" in caplog.text
    assert "attention_mask" in datamodule.collator()(random_pairs())
    model.config._attn_implementation = "flash_attention_2"  # varlen kernels want all sequences in one row
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    datamodule.configure_packing(model)
    assert datamodule.packing and datamodule.pack_length == 0


def test_cached_reference_gets_the_same_values_packed_or_padded(tmp_path):
    import json
    import random

    rng = random.Random(0)
    words = lambda n: " ".join(rng.choice(["yes", "no", "maybe", "a", "longer one"]) for _ in range(n))  # noqa: E731
    lines = [{"prompt": words(rng.randint(1, 8)), "chosen": words(rng.randint(1, 12)),
              "rejected": words(rng.randint(1, 12))} for _ in range(120)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    model, tokenizer = tiny_llama()
    values = {}
    for packing in (False, True):
        cfg = compose_train(["data=jsonl", f"data.source.train_files={tmp_path / 'pairs.jsonl'}", "data.max_length=64",
                             "data.max_prompt_length=32", f"data.packing={packing}"])
        datamodule = instantiate(cfg.data, tokenizer=tokenizer)
        datamodule.setup()
        assert ("position_ids" in datamodule.collator()(random_pairs())) == packing
        reference = CachedReference(initial=None, batch_size=16)
        values[packing] = reference._compute(model.eval(), datamodule.tokenized["train"], datamodule,
                                             torch.device("cpu"))
    assert len(values[True]) > 90
    torch.testing.assert_close(values[True], values[False], rtol=1e-5, atol=1e-5)


class RecordingLogProbs(LogProbs):
    """LogProbs that records who asked it for log-probs (the calling function's name)."""

    callers: list[str] = []

    def sequence_logps(self, *args, **kwargs):
        RecordingLogProbs.callers.append(sys._getframe(1).f_code.co_name)
        return super().sequence_logps(*args, **kwargs)


def test_the_runs_logprobs_settings_reach_the_sft_stage_training_and_the_sample_evaluation(tmp_path):
    """No process-wide default: `logprobs` (conf/train.yaml) is the one object
    the SFT stage, the training step, the reference and the sample evaluation use."""
    from conftest import FAST, SMALL_TASK
    from gpo.run import train

    RecordingLogProbs.callers.clear()
    train(compose_train([*FAST, *SMALL_TASK, "model.sft.steps=2", f"cache_dir={tmp_path / 'cache'}",
                         "logprobs._target_=test_logprobs.RecordingLogProbs", "logger=csv"],
                        output_dir=tmp_path / "run"))
    callers = set(RecordingLogProbs.callers)
    assert {"training_step", "batch_logps", "response_logps"} <= callers, callers  # SFT; pairs; samples
