"""End-to-end training through the real configs (every loss: tests/test_multirun.py)."""

import torch
from hydra.utils import instantiate
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import FAST, SMALL_TASK, compose_train
from gpo.model import LogProbs
from gpo.reference import InitialPolicy
from gpo.run import train

LOGPROBS = LogProbs()  # the default settings
pair_logps = LOGPROBS.pair_logps

# Every loss in conf/loss trains a few steps: tests/test_multirun.py (the README's sweep, one job per loss).


def test_reference_is_frozen_and_not_in_checkpoint(tmp_path):
    cfg = compose_train(["logger=csv", "reference=frozen", *FAST, *SMALL_TASK], output_dir=tmp_path)
    train(cfg)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert state and all(key.startswith(("policy.", "loss_fn.")) for key in state)


def test_reference_free_loss_builds_no_reference_and_caches_nothing(tmp_path, monkeypatch):
    built = []
    original = InitialPolicy.model
    monkeypatch.setattr(InitialPolicy, "model", lambda self: built.append(1) or original(self))
    cfg = compose_train(["loss=simpo", "logger=csv", f"cache_dir={tmp_path / 'cache'}", "model.sft.steps=0",
                         *FAST, *SMALL_TASK, "~callbacks.sample_evaluation"], output_dir=tmp_path / "run")
    summary = train(cfg)
    assert summary.status == "finished" and "reference" not in summary.stages
    assert built == [] and not (tmp_path / "cache" / "reference_logps").exists()
    # The same run with DPO builds one (the cached reference computes its log-probs with it).
    train(compose_train(["loss=dpo", "logger=csv", f"cache_dir={tmp_path / 'cache'}", "model.sft.steps=0",
                         *FAST, *SMALL_TASK, "~callbacks.sample_evaluation"], output_dir=tmp_path / "dpo"))
    assert built == [1] and (tmp_path / "cache" / "reference_logps").exists()


def test_dpo_raises_validation_accuracy_and_gold_reward(tmp_path):
    cfg = compose_train(
        ["logger=csv", "trainer.max_steps=30", "trainer.val_check_interval=30", "optimizer.lr=1e-3",
         "callbacks.sample_evaluation.num_prompts=64", "~callbacks.progress_bar"],
        output_dir=tmp_path,
    )
    metrics = train(cfg).metrics  # measured: accuracy 0.73, gold +3.0 over the reference, win rate 0.96
    assert metrics["val/rewards/accuracies"] > 0.6
    assert metrics["eval/gold_reward"] > metrics["eval/gold_reward_reference"] + 0.5
    assert metrics["eval/win_rate"] > 0.6


def test_the_trained_policy_is_saved_in_hugging_face_format(tmp_path):
    """<run dir>/policy loads with transformers' Auto classes and gives the trained policy's log-probs."""
    cfg = compose_train(["logger=csv", *FAST, *SMALL_TASK, "~callbacks.sample_evaluation"], output_dir=tmp_path)
    summary = train(cfg)
    assert summary.stages["export"]["path"] == str(tmp_path / "policy")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "policy").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "policy")

    trained, _ = instantiate(cfg.model.policy)  # the weights of the last step (the final checkpoint)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    trained.load_state_dict({k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")})
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)  # the saved tokenizer encodes the data as training did
    datamodule.setup()
    batch = next(iter(datamodule.val_dataloader()))
    with torch.no_grad():
        torch.testing.assert_close(torch.stack(pair_logps(exported, batch)),
                                   torch.stack(pair_logps(trained.eval(), batch)))

    off = train(compose_train(["logger=csv", *FAST, *SMALL_TASK, "~callbacks.sample_evaluation", "export.policy=false",
                               "trainer.max_steps=1"], output_dir=tmp_path / "off"))
    assert "export" not in off.stages and not (tmp_path / "off" / "policy").exists()
