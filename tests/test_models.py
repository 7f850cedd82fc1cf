"""Pretrained models through the `hf` option (a tiny model saved with
save_pretrained stands in for a hub checkpoint), LoRA, and the model presets."""

import functools
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from peft import LoraConfig, PeftModel
from test_formats import CHATML, ULTRA, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from conftest import FAST, compose_train
from gpo.data import PreferenceDataModule
from gpo.data.sources import Preferences
from gpo.losses import Logistic
from gpo.model import LogProbs, pretrained_causal_lm, tiny_causal_lm, with_lora
from gpo.reference import AdapterReference
from gpo.run import train
from gpo.training import GPOModule
from wandb_records import find_runs, read_run

LOGPROBS = LogProbs()  # the default settings
pair_logps = LOGPROBS.pair_logps


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny random Llama and its tokenizer (with a chat template), as a hub checkpoint would be on disk."""
    directory = tmp_path_factory.mktemp("tiny-hf")
    policy, tokenizer = tiny_causal_lm(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=256))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    policy.resize_token_embeddings(len(tokenizer))
    tokenizer.chat_template = CHATML
    policy.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    rows = [{"prompt": f"Q{i}: name a colour.", "chosen": " blue" if i % 2 else " red", "rejected": " 42"}
            for i in range(48)]
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", rows)


def hf_overrides(saved_model, *extra):
    return ["model=hf", f"model.policy.name_or_path={saved_model}", "data.max_length=64",
            "data.max_prompt_length=48", "data.batch_size=4", *FAST, *extra]


def samples_table(run_dir):
    """The eval/samples table W&B wrote into the offline run's files."""
    (run,) = find_runs(str(run_dir))
    summary = read_run(run)["summary"]  # nested keys come flattened: eval/samples/_type, eval/samples/path
    assert summary["eval/samples/_type"] == "table-file"
    return json.loads((Path(run) / "files" / summary["eval/samples/path"]).read_text())


def test_saved_model_trains_on_conversational_data_through_the_hf_option(tmp_path, saved_model):
    # 20 distinct pairs (copies of a pair would be dropped from the held-out validation share: they are training pairs)
    rows = [json.loads(json.dumps(ULTRA[i % 2]).replace('"Hi"', f'"Hi {i}"').replace("2+2?", f"2+{i}?"))
            for i in range(20)]
    data = write_jsonl(tmp_path / "uf.jsonl", rows)
    cfg = compose_train(hf_overrides(saved_model, "data=ultrafeedback_binarized", f"data.source.path={data}",
                                     "data.val_fraction=0.2", "data.num_proc=null"), output_dir=tmp_path)
    summary = train(cfg)
    assert summary.status == "finished"
    assert {"train/loss", "val/loss", "eval/kl"} <= set(summary.metrics)
    assert "eval/gold_reward" not in summary.metrics  # this data has no gold reward
    table = samples_table(tmp_path)
    assert table["columns"] == ["prompt", "policy", "reference"]
    assert len(table["data"]) == 4 and all(row[0].endswith("<|im_start|>assistant\n") for row in table["data"])
    assert summary.data["splits"]["train"]["pairs"] == 16


def test_lora_trains_through_the_cli_and_evaluates_against_the_adapter_free_base(tmp_path, saved_model, pairs):
    cfg = compose_train(hf_overrides(saved_model, "data=preference", f"data.source.path={pairs}", "model/lora=default",
                                     "model.lora.r=4", "optimizer.lr=3e-2", "logger=csv", "export.merged=true"),
                        output_dir=tmp_path)
    summary = train(cfg)
    assert summary.status == "finished"
    assert cfg.reference._target_.endswith("AdapterReference")  # model/lora selects it
    # The KL is exactly 0 if the "reference" still had its adapters on.
    assert abs(summary.metrics["eval/kl"]) > 1e-4
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert any("lora_A" in key for key in state) and all(key.startswith("policy.") for key in state)

    # Exported: the adapter on the base checkpoint, and the merged model; both are the trained policy.
    trained = with_lora(pretrained_causal_lm(str(saved_model))[0], instantiate(cfg.model.lora))
    trained.load_state_dict({k.removeprefix("policy."): v for k, v in state.items()}, strict=False)
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(saved_model), tmp_path / "policy")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "policy_merged")
    dm = PreferenceDataModule(Preferences(path=str(pairs)), AutoTokenizer.from_pretrained(tmp_path / "policy"),
                              max_length=64, max_prompt_length=48, batch_size=4)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        expected = torch.stack(pair_logps(trained.eval(), batch))
        torch.testing.assert_close(torch.stack(pair_logps(adapter.eval(), batch)), expected)
        torch.testing.assert_close(torch.stack(pair_logps(merged.eval(), batch)), expected, rtol=1e-4, atol=1e-4)


def test_lora_reference_logps_equal_the_frozen_base_model(tmp_path, saved_model, pairs):
    policy, tokenizer = pretrained_causal_lm(str(saved_model))
    base, _ = pretrained_causal_lm(str(saved_model))
    policy = with_lora(policy, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    dm = PreferenceDataModule(Preferences(path=str(pairs)), tokenizer, max_length=64, max_prompt_length=48,
                              batch_size=4)
    reference = AdapterReference(initial=None)  # no second copy of the weights: the initial policy is never built
    reference.setup(policy, dm, torch.device("cpu"))
    module = GPOModule(policy, reference, Logistic(), beta=0.1, optimizer=functools.partial(torch.optim.AdamW, lr=3e-2))
    pl.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0).fit(module, datamodule=dm)
    batch = next(iter(dm.val_dataloader()))
    module.train()

    expected = torch.stack(pair_logps(base.eval(), batch))
    reference = torch.stack(module.reference.logps(batch))
    torch.testing.assert_close(reference, expected, rtol=0, atol=1e-5)
    with torch.no_grad():
        trained = torch.stack(pair_logps(policy, batch))
    assert (trained - expected).abs().max() > 1e-3  # the adapters did move the policy
    assert policy.training  # the reference put the policy back in training mode, adapters on
    with torch.no_grad():
        torch.testing.assert_close(torch.stack(pair_logps(policy, batch)), trained)


@pytest.mark.parametrize("preset", ["pythia-410m", "pythia-1b", "qwen2.5-0.5b-instruct", "llama-3.2-1b-instruct"])
def test_model_presets_name_a_hub_model_with_dtype_attention_and_checkpointing(preset):
    policy = compose_train([f"model={preset}", "model/lora=default"]).model.policy
    assert "/" in policy.name_or_path and policy.dtype and policy.attn_implementation == "sdpa"
    assert isinstance(policy.gradient_checkpointing, bool)
    assert policy.trust_remote_code is False  # code shipped with a checkpoint runs only when asked for
