"""src/evaluate.py: a run's checkpoint and an exported policy, measured as the
run measures its own policy (gpo/evaluate.py)."""

import json

import pytest
import yaml
from transformers import AutoTokenizer

from conftest import FAST, SMALL_TASK, compose_train
from gpo.evaluate import evaluate, policy_source, with_run_overrides
from gpo.infra.errors import InputError
from gpo.reference import InitialPolicy
from gpo.run import train

RUN = ["logger=csv", *FAST, *SMALL_TASK]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A short run, with the overrides file Hydra writes beside it."""
    run_dir = tmp_path_factory.mktemp("run")
    summary = train(compose_train(RUN, output_dir=run_dir))
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(RUN))
    return run_dir, summary


def evaluate_with(argv, output_dir):
    return evaluate(compose_train(with_run_overrides(argv), output_dir=output_dir, config_name="evaluate"))


def test_a_run_directory_is_evaluated_as_the_run_evaluated_itself(trained_run, tmp_path):
    run_dir, trained = trained_run
    summary = evaluate_with([f"policy={run_dir}"], tmp_path)
    assert summary.evaluated == str(run_dir / "checkpoints" / "last.ckpt") and summary.status == "finished"
    # The run's own overrides were carried: same data, same prompts, and the samples seeded by the checkpoint's
    # step: the sample evaluation the run did at its end, to the last digit; validation on the same weights.
    for key in ("eval/kl", "eval/gold_reward", "eval/gold_reward_reference", "eval/win_rate",
                "eval/offline_regulariser"):
        assert summary.metrics[key] == trained.metrics[key], key
    assert summary.metrics["val/loss"] == pytest.approx(trained.metrics["val/loss"], rel=1e-5)
    assert [point["step"] for point in summary.trajectory] == [4]
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["evaluated"] == summary.evaluated and written["loss"] == "dpo" and written["beta"] == 0.1
    assert not (tmp_path / "policy").exists()  # nothing exported


def test_an_exported_policy_is_evaluated_with_its_weights(trained_run, tmp_path):
    run_dir, trained = trained_run
    summary = evaluate_with([f"policy={run_dir / 'policy'}", *RUN], tmp_path)
    assert summary.evaluated == str(run_dir / "policy")
    assert {"eval/kl", "eval/gold_reward", "eval/win_rate"} <= set(summary.metrics)
    # The exported weights are the trained ones: the same validation loss (not the initial policy's, log 2).
    assert summary.metrics["val/loss"] == pytest.approx(trained.metrics["val/loss"], rel=1e-4)
    assert summary.metrics["val/loss"] != pytest.approx(0.6931, abs=1e-4)
    # Its tokenizer says the model's real limit (128 positions), not transformers' "no limit" (1e30).
    assert AutoTokenizer.from_pretrained(run_dir / "policy").model_max_length == 128


def test_the_run_overrides_come_first_and_the_command_line_wins(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        ["experiment=overoptimisation", "loss=ipo", "beta=0.5", "hydra.run.dir=x", "resume=auto",
         "hydra/launcher=joblib", "seed=2"]))
    assert with_run_overrides([f"policy={tmp_path}", "beta=1", "callbacks.sample_evaluation.num_prompts=8"]) == [
        "experiment=overoptimisation", "loss=ipo", "seed=2",
        f"policy={tmp_path}", "beta=1", "callbacks.sample_evaluation.num_prompts=8"]
    assert with_run_overrides(["policy=EleutherAI/pythia-160m", "beta=1"]) == ["policy=EleutherAI/pythia-160m",
                                                                               "beta=1"]


def test_a_missing_policy_is_one_line_before_any_compute(tmp_path, monkeypatch):
    monkeypatch.setattr(InitialPolicy, "prepare", lambda *a: pytest.fail("the SFT stage ran"))
    for policy in (tmp_path / "nothing", tmp_path / "nothing.ckpt", "outputs/runs/no-such-run"):
        with pytest.raises(InputError, match=f"policy={policy}: "):
            evaluate_with([f"policy={policy}", *RUN], tmp_path / "eval")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(InputError, match="is a LoRA adapter"):
        policy_source(str(tmp_path / "adapter"))


def test_a_checkpoint_of_another_model_is_named(trained_run, tmp_path):
    run_dir, _ = trained_run
    with pytest.raises(InputError, match="its weights do not fit the configured model"):
        evaluate_with([f"policy={run_dir}", "model.policy.config.hidden_size=32", "model.sft.steps=0"], tmp_path)
