"""End-to-end training through the real configs."""

import json

import pytest

from conftest import FAST, compose_train
from train import train

LOSS_NAMES = ["dpo", "ipo", "slic", "exponential", "truncated_quadratic", "savage"]


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_trains_a_few_steps(tmp_path, name):
    cfg = compose_train([f"loss={name}", "beta=0.5", "logger=csv", *FAST], output_dir=tmp_path)
    summary = train(cfg)
    assert summary["status"] == "finished" and summary["loss"] == name
    metrics = summary["metrics"]
    for key in ["train/loss", "val/loss", "val/rewards/accuracies", "val/rewards/margins", "val/logps/chosen",
                "train/grad_norm", "eval/kl", "eval/gold_reward", "eval/win_rate"]:
        assert key in metrics, key
    assert json.loads((tmp_path / "summary.json").read_text())["metrics"] == metrics
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_reference_is_frozen_and_not_in_checkpoint(tmp_path):
    import torch

    cfg = compose_train(["logger=csv", *FAST], output_dir=tmp_path)
    train(cfg)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert state and all(key.startswith("policy.") for key in state)


def test_dpo_raises_validation_accuracy_and_gold_reward(tmp_path):
    cfg = compose_train(
        ["logger=csv", "trainer.max_steps=120", "trainer.val_check_interval=120", "optimizer.lr=3e-4",
         "callbacks.sample_evaluation.num_prompts=64", "~callbacks.progress_bar"],
        output_dir=tmp_path,
    )
    metrics = train(cfg)["metrics"]
    assert metrics["val/rewards/accuracies"] > 0.6
    assert metrics["eval/gold_reward"] > metrics["eval/gold_reward_reference"] + 0.5
    assert metrics["eval/win_rate"] > 0.6
