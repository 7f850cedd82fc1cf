"""The controlled (Gao-style) experiment: configs, held-out evaluation prompts,
gold rewards, and the sampling evaluation on an untrained and a trained policy."""

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForSequenceClassification

from conftest import CONF, compose_train
from gpo.gold import RewardModelGold, relabel
from gpo.models import char_tokenizer
from gpo.synthetic import CopiedCharacters, SyntheticPreferences
from train import train

LOSSES = sorted(p.stem for p in Path(CONF, "loss").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in Path(CONF, "experiment").glob("paper_controlled*.yaml"))
# The controlled run, made cheap: fewer pairs and evaluation samples.
SMALL = ["experiment=paper_controlled", "data.source.num_pairs=600", "data.source.num_demonstrations=1000",
         "model.sft.steps=100", "callbacks.sample_evaluation.num_prompts=256", "trainer.max_steps=60",
         "trainer.val_check_interval=60", "+trainer.limit_val_batches=2"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("loss", LOSSES)
def test_experiment_configs_compose_for_every_loss(experiment, loss, tmp_path):
    cfg = compose_train([f"experiment={experiment}", f"loss={loss}", "beta=0.3", "seed=2"], output_dir=tmp_path)
    assert cfg.experiment_name == experiment
    assert cfg.loss == OmegaConf.load(Path(CONF, "loss", f"{loss}.yaml"))  # the experiment leaves the family as is
    assert cfg.beta == 0.3 and cfg.seed == 2
    assert cfg.trainer.val_check_interval == cfg.trainer.max_steps  # the trade-off point is measured at the end
    assert cfg.callbacks.sample_evaluation.num_prompts >= 256


def test_tldr_experiment_names_paper_scale_substitutes(tmp_path):
    cfg = compose_train(["experiment=paper_controlled_tldr"], output_dir=tmp_path)
    assert "/" in cfg.model.policy.name_or_path  # a hub name, loaded through transformers
    assert cfg.data.source._target_ == compose_train(["data=tldr"]).data.source._target_
    assert cfg.data.gold_reward._target_ == "gpo.gold.RewardModelGold" and "/" in cfg.data.gold_reward.name_or_path
    assert cfg.data.relabel_temperature > 0
    assert cfg.trainer.accelerator == "gpu"


def test_evaluation_prompts_are_fresh_and_fixed():
    source = SyntheticPreferences(num_pairs=200)
    prompts = source.evaluation_prompts(300)
    assert prompts == source.evaluation_prompts(300)  # every run of a sweep sees the same prompts
    assert len(set(prompts)) > 250 and all(p.endswith(":") and len(p) == source.prompt_length + 1 for p in prompts)
    pairs = source.preferences()
    # A different random stream than the training pairs: not their prompts in order.
    assert prompts[:200] != pairs["prompt"]


def test_datamodule_falls_back_to_validation_prompts_and_takes_a_gold_override():
    class NoEvalPrompts:  # a source that cannot draw fresh prompts (e.g. a fixed dataset)
        description = "test pairs"

        def preferences(self):
            return SyntheticPreferences(num_pairs=100).preferences()

    from gpo.data import PreferenceDataModule

    tokenizer = char_tokenizer()
    datamodule = PreferenceDataModule(NoEvalPrompts(), tokenizer, max_length=32, max_prompt_length=16,
                                      gold_reward=CopiedCharacters())
    datamodule.setup()
    assert datamodule.evaluation_prompts(5) == datamodule.text["validation"]["prompt"][:5]
    assert datamodule.gold_reward("ab:", "aax") == 2.0


def test_relabel_uses_gold_reward_with_bradley_terry_noise():
    pairs = SyntheticPreferences(num_pairs=400, seed=3).preferences().remove_columns(["gold_chosen", "gold_rejected"])
    gold = CopiedCharacters()
    sharp = relabel(pairs, gold, temperature=1e-3, seed=0)
    # Near-deterministic labels: the gold-better response is always chosen.
    assert all(c >= r for c, r in zip(sharp["gold_chosen"], sharp["gold_rejected"]))
    assert all(gold(p, c) == g for p, c, g in zip(sharp["prompt"], sharp["chosen"], sharp["gold_chosen"]))
    flat = relabel(pairs, gold, temperature=1e3, seed=0)
    worse = sum(c < r for c, r in zip(flat["gold_chosen"], flat["gold_rejected"]))
    decided = sum(c != r for c, r in zip(flat["gold_chosen"], flat["gold_rejected"]))
    assert 0.35 * decided < worse < 0.65 * decided  # labels close to coin flips
    assert sorted(map(sorted, zip(flat["chosen"], flat["rejected"]))) == sorted(map(sorted, zip(pairs["chosen"], pairs["rejected"])))


def test_relabel_from_the_command_line(tmp_path):
    cfg = compose_train(SMALL + ["+data.relabel_temperature=0.001", "+data.gold_reward._target_=gpo.synthetic.CopiedCharacters"],
                        output_dir=tmp_path)
    _, tokenizer = instantiate(cfg.model.policy)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    datamodule.setup()
    train_rows = datamodule.text["train"]
    copied = CopiedCharacters()
    assert all(copied(p, c) >= copied(p, r) for p, c, r in zip(train_rows["prompt"], train_rows["chosen"], train_rows["rejected"]))


@pytest.fixture
def tiny_reward_model(tmp_path):
    tokenizer = char_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return tmp_path


def test_reward_model_gold_scores_by_name(tiny_reward_model):
    gold = RewardModelGold(str(tiny_reward_model), pair_input=False, batch_size=2)
    prompts, responses = ["ab:", "cdef:", "g:"], ["xyz", "q", "hello there"]
    batch = gold.score_batch(prompts, responses)
    singles = [gold(p, r) for p, r in zip(prompts, responses)]
    assert all(isinstance(s, float) for s in singles)
    assert batch == pytest.approx(singles, abs=1e-5)  # padding inside a batch does not change a score
    assert len(set(round(s, 4) for s in singles)) == 3  # the score depends on the text
    model = LlamaForSequenceClassification.from_pretrained(tiny_reward_model)
    ids = gold.tokenizer("ab:xyz", return_tensors="pt")
    assert singles[0] == pytest.approx(model(**ids).logits[0, 0].item(), abs=1e-5)


def test_reward_model_gold_rejects_bad_label(tiny_reward_model):
    from gpo.errors import InputError

    with pytest.raises(InputError, match="label=1"):
        RewardModelGold(str(tiny_reward_model), label=1)


def test_untrained_policy_has_zero_kl_and_even_win_rate_then_training_moves_it(tmp_path):
    # lr = 0: the policy stays the reference, through the whole real pipeline.
    still = train(compose_train(SMALL + ["optimizer.lr=0", "trainer.max_steps=2"], output_dir=tmp_path / "still"))["metrics"]
    assert still["eval/kl"] == pytest.approx(0.0, abs=1e-4)
    assert abs(still["eval/win_rate"] - 0.5) < 3 * still["eval/win_rate_stderr"]
    assert 0 < still["eval/win_rate_stderr"] < 0.05
    gap = still["eval/gold_reward"] - still["eval/gold_reward_reference"]
    assert abs(gap) < 4 * still["eval/gold_reward_stderr"]

    trained = train(compose_train(SMALL + ["optimizer.lr=1e-3", "beta=0.1"], output_dir=tmp_path / "trained"))["metrics"]
    assert trained["eval/kl"] > max(0.1, 5 * trained["eval/kl_stderr"])
    assert trained["eval/win_rate"] > 0.5 + 3 * trained["eval/win_rate_stderr"]


def test_matched_kl_recovers_a_known_beta_shift():
    import numpy as np
    import pandas as pd

    from gpo.matched_kl import matched_kl

    betas = np.array([0.05, 0.1, 0.2, 0.5, 1.0, 2.0])
    rows = []
    # KL = 1/beta for ipo; dpo needs twice the beta for the same KL (what the Taylor argument predicts);
    # savage needs three times, and reaches a lower win rate at every KL.
    for loss, scale, shift, drop in [("ipo", 1.0, 1.0, 0.0), ("dpo", 0.5, 2.0, 0.0), ("savage", 0.5, 3.0, 0.1)]:
        for beta in betas * shift:
            kl = shift / beta
            rows.append({"loss": loss, "beta": beta, "regularisation_scale": scale, "eval/kl": kl,
                         "eval/win_rate": 1 - 0.5 * np.exp(-kl) - drop, "eval/win_rate_stderr": 0.01})
    result = matched_kl(pd.DataFrame(rows), kls=[1.0, 4.0, 100.0]).set_index(["loss", "kl"])
    assert result.loc[("dpo", 1.0), "beta_ratio"] == pytest.approx(2.0)
    assert result.loc[("dpo", 4.0), "predicted_ratio"] == pytest.approx(2.0)
    assert result.loc[("savage", 4.0), "beta_ratio"] == pytest.approx(3.0)
    assert result.loc[("ipo", 1.0), "beta"] == pytest.approx(1.0)
    # The win rate at matched KL: equal for dpo and ipo, 0.1 lower for savage (up to linear interpolation).
    gap = result.loc[("ipo", 4.0), "eval/win_rate"] - result.loc[("savage", 4.0), "eval/win_rate"]
    assert gap == pytest.approx(0.1)
    assert result.loc[("dpo", 4.0), "eval/win_rate"] == pytest.approx(result.loc[("ipo", 4.0), "eval/win_rate"])
    assert np.isnan(result.loc[("ipo", 100.0), "eval/win_rate"])  # outside every curve: no extrapolation


def test_matched_kl_on_a_narrow_common_range():
    import pandas as pd

    from gpo.matched_kl import default_kls, matched_kl

    table = pd.DataFrame({"loss": ["dpo", "dpo", "ipo", "ipo"], "beta": [0.1, 1.0, 0.1, 1.0],
                          "regularisation_scale": [0.5, 0.5, 1.0, 1.0], "eval/kl": [1.001, 1.009, 1.0, 1.01],
                          "eval/win_rate": [0.6, 0.7, 0.6, 0.7]})
    assert default_kls(table) == [1.0]  # three log-spaced points rounded to the same value: kept once
    assert len(matched_kl(table)) == 2
