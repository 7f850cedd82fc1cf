"""The data -> log-prob -> loss pipeline on real batches."""

import copy

import pytest
import torch
from hydra.utils import instantiate

from conftest import compose_train
from gpo.data import PairCollator, tokenize_pair
from gpo.data.tokenization import tokenize_demonstration
from gpo.infra.config import group_options
from gpo.losses import GPOLoss
from gpo.model import LogProbs, char_tokenizer, tiny_causal_lm
from gpo.reference import FrozenReference
from gpo.training import GPOModule

LOGPROBS = LogProbs()  # the default settings
pair_logps = LOGPROBS.pair_logps
sequence_logps = LOGPROBS.sequence_logps

# Every GPO family in conf/loss (a loss that is a function of beta * rho alone).
GPO_FAMILIES = sorted(name for name, node in group_options("loss").items() if isinstance(instantiate(node), GPOLoss))


@pytest.fixture(scope="module")
def parts():
    cfg = compose_train()
    policy, tokenizer = instantiate(cfg.model.policy)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    datamodule.setup()
    return cfg, policy, tokenizer, datamodule


class Unchanged:
    """The initial policy: the same weights as the policy before training."""

    def __init__(self, policy):
        self.copy = copy.deepcopy(policy)

    def model(self):
        return copy.deepcopy(self.copy).eval().requires_grad_(False)


@pytest.mark.parametrize("name", GPO_FAMILIES)
def test_loss_at_step_zero_is_f_of_zero(parts, name):
    cfg, policy, tokenizer, datamodule = parts
    loss_fn = instantiate(compose_train([f"loss={name}"]).loss)
    reference = FrozenReference(Unchanged(policy))
    reference.setup(policy, datamodule, torch.device("cpu"))
    module = GPOModule(policy, reference, loss_fn, beta=0.37, optimizer=None)
    module.log_dict = lambda *a, **k: None  # no trainer attached
    batch = next(iter(datamodule.train_dataloader()))
    loss = module._step(batch, "train")
    assert loss.item() == pytest.approx(loss_fn.f0, rel=1e-6, abs=1e-7)


def test_chosen_and_rejected_go_through_one_forward_pass(parts):
    _, policy, _, datamodule = parts
    batch = next(iter(datamodule.train_dataloader()))
    calls = []
    handle = policy.register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    try:
        chosen, rejected = pair_logps(policy, batch)
    finally:
        handle.remove()
    assert len(calls) == 1 and chosen.shape == rejected.shape == (datamodule.batch_size,)


def _pair(tokenizer, prompt, chosen, rejected, max_length=64, max_prompt_length=32):
    row = tokenize_pair(dict(prompt=prompt, chosen=chosen, rejected=rejected), tokenizer, max_length, max_prompt_length)
    return row


def test_response_mask_covers_exactly_the_response_tokens():
    tokenizer = char_tokenizer()
    rows = [_pair(tokenizer, "abc:", "xy", "zzzz"), _pair(tokenizer, "a:", "long answer", "q")]
    batch = PairCollator(tokenizer.pad_token_id)(rows)
    # BOS + prompt chars, then response chars + EOS
    expected_response_lengths = [2 + 1, 11 + 1, 4 + 1, 1 + 1]
    assert batch["response_mask"].sum(1).tolist() == expected_response_lengths
    first = batch["input_ids"][0]
    assert first[batch["response_mask"][0]].tolist() == tokenizer("xy", add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    assert first[0].item() == tokenizer.bos_token_id


def test_logps_sum_response_tokens_only():
    torch.manual_seed(0)
    policy, tokenizer = tiny_causal_lm(__import__("transformers").LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    rows = [_pair(tokenizer, "hello:", "ab", "cde"), _pair(tokenizer, "hi:", "response", "x")]
    batch = PairCollator(tokenizer.pad_token_id)(rows)
    logps = sequence_logps(policy, batch["input_ids"], batch["attention_mask"], batch["response_mask"])

    # Reference computation, one unpadded sequence at a time.
    for i in range(4):
        n = int(batch["attention_mask"][i].sum())
        ids = batch["input_ids"][i, :n]
        token_logps = policy(ids[None]).logits[0, :-1].log_softmax(-1).gather(-1, ids[1:, None])[:, 0]
        expected = token_logps[batch["response_mask"][i, 1:n]].sum()
        assert logps[i].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)

    # Padding content is irrelevant: scribble over it.
    scribbled = batch["input_ids"].clone()
    scribbled[batch["attention_mask"] == 0] = 7
    again = sequence_logps(policy, scribbled, batch["attention_mask"], batch["response_mask"])
    assert torch.allclose(logps, again, atol=1e-6)

    # Changing the prompt's content changes the values but not which tokens count.
    other = [_pair(tokenizer, "world:", "ab", "cde"), _pair(tokenizer, "yo:", "response", "x")]
    other_batch = PairCollator(tokenizer.pad_token_id)(other)
    assert torch.equal(other_batch["response_mask"], batch["response_mask"])
    response_tokens = batch["input_ids"][batch["response_mask"]]
    assert torch.equal(other_batch["input_ids"][other_batch["response_mask"]], response_tokens)


def test_truncation_keeps_prompt_end_and_response_start():
    tokenizer = char_tokenizer()
    row = tokenize_pair(dict(prompt="0123456789:", chosen="abcdefghij", rejected="xy"), tokenizer, 10, 4)
    assert row["prompt_length"] == 4
    assert tokenizer.decode(row["chosen_input_ids"][:4]) == "789:"
    assert tokenizer.decode(row["chosen_input_ids"][4:]) == "abcdef"
    assert tokenizer.decode(row["rejected_input_ids"][4:], skip_special_tokens=True) == "xy"


def test_sft_stage_and_preference_pairs_tokenize_the_same_text_to_the_same_ids():
    tokenizer = char_tokenizer()
    pair = tokenize_pair(dict(prompt="abc:", chosen="hello", rejected="x"), tokenizer, 64, 32)
    demonstration = tokenize_demonstration(dict(prompt="abc:", response="hello"), tokenizer, 64, 32)
    assert demonstration["input_ids"] == pair["chosen_input_ids"]
    assert demonstration["prompt_length"] == pair["prompt_length"]
    assert (demonstration["input_ids"][0] == tokenizer.bos_token_id
            and demonstration["input_ids"][-1] == tokenizer.eos_token_id)
    # Truncated the same way too: the prompt keeps its end, the response its start.
    pair = tokenize_pair(dict(prompt="0123456789:", chosen="abcdefghij", rejected="x"), tokenizer, 10, 4)
    demonstration = tokenize_demonstration(dict(prompt="0123456789:", response="abcdefghij"), tokenizer, 10, 4)
    assert demonstration["input_ids"] == pair["chosen_input_ids"]


def test_eval_mode_restores_the_mode_however_the_block_ends(parts, monkeypatch):
    from gpo.evaluation import evaluate_samples
    from gpo.evaluation.sampling import prompt_token_ids
    from gpo.model import eval_mode

    _, policy, tokenizer, datamodule = parts
    policy.train()
    with pytest.raises(RuntimeError), eval_mode(policy):
        assert not policy.training
        raise RuntimeError
    assert policy.training
    with eval_mode(policy.eval()):
        pass
    assert not policy.training
    policy.train()

    def broken_logps(*args, **kwargs):
        raise RuntimeError("reference log-probs failed")

    reference = FrozenReference(Unchanged(policy))
    reference.setup(policy, datamodule, torch.device("cpu"))
    monkeypatch.setattr("gpo.evaluation.sampling.response_logps", broken_logps)  # after the policy has sampled
    ids = prompt_token_ids(tokenizer, ["abc"], 8)
    with pytest.raises(RuntimeError, match="reference log-probs failed"):  # the evaluation fails midway
        evaluate_samples(policy, reference, tokenizer, ["abc"], ids, [[]], max_new_tokens=2)
    assert policy.training  # the policy goes on training with dropout
