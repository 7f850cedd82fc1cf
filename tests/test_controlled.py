"""The controlled (Gao-style) experiment: configs, held-out evaluation prompts,
gold rewards, and the sampling evaluation on an untrained and a trained policy."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForSequenceClassification

from conftest import CONF, compose_train
from gpo.data.gold import RewardModelGold, relabel
from gpo.data.sources import CappedCount, CopiedCharacters, PreferredCharacters, SyntheticPreferences
from gpo.model import char_tokenizer
from gpo.run import train

EXPERIMENTS = ["overoptimisation", "paper_controlled", "paper_controlled_tldr", "proxy_overoptimisation"]
# The losses an experiment can meet: a loss option in the `loss` package writes the loss node only, so
# one of them (dpo) shows whether an experiment writes there (its node would differ from the option);
# an option in the global package (kto: data.unpaired) also writes elsewhere, so each of those meets
# each experiment. (Composing all 28 x 4 pairs cost 13 s of the inner loop and could catch nothing more.)
GLOBAL_LOSSES = sorted(p.stem for p in Path(CONF, "loss").glob("*.yaml")
                       if p.read_text().startswith("# @package _global_"))
LOSSES = ["dpo", *GLOBAL_LOSSES]
# The controlled run, made cheap: fewer pairs and evaluation samples (the session's SFT reference is shared).
SMALL = ["experiment=paper_controlled", "data.source.num_pairs=600", "callbacks.sample_evaluation.num_prompts=256",
         "trainer.max_steps=20", "trainer.val_check_interval=20", "+trainer.limit_val_batches=2"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("loss", LOSSES)
def test_experiment_configs_compose_with_every_kind_of_loss_option(experiment, loss, tmp_path):
    cfg = compose_train([f"experiment={experiment}", f"loss={loss}", "beta=0.3", "seed=2"], output_dir=tmp_path)
    assert cfg.experiment_name == experiment
    option = OmegaConf.load(Path(CONF, "loss", f"{loss}.yaml"))
    assert cfg.loss == option.get("loss", option)  # the experiment leaves the family as is (kto: a global option)
    for key in set(option) - {"loss"} if loss in GLOBAL_LOSSES else ():  # and a global option's other settings
        assert OmegaConf.merge(cfg[key], option[key]) == cfg[key], key
    assert cfg.beta == 0.3 and cfg.seed == 2
    assert cfg.trainer.val_check_interval == cfg.trainer.max_steps  # the trade-off point is measured at the end
    assert cfg.callbacks.sample_evaluation.num_prompts >= 256


def test_the_loss_options_outside_the_loss_package_are_found():
    assert "kto" in GLOBAL_LOSSES  # the header test above still sees the one known today


def test_tldr_experiment_names_paper_scale_substitutes(tmp_path):
    cfg = compose_train(["experiment=paper_controlled_tldr"], output_dir=tmp_path)
    assert "/" in cfg.model.policy.name_or_path  # a hub name, loaded through transformers
    assert cfg.data.source._target_ == compose_train(["data=tldr"]).data.source._target_
    assert cfg.data.gold_reward._target_ == "gpo.data.gold.RewardModelGold" and "/" in cfg.data.gold_reward.name_or_path
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
    assert (sorted(map(sorted, zip(flat["chosen"], flat["rejected"])))
            == sorted(map(sorted, zip(pairs["chosen"], pairs["rejected"]))))


def test_relabel_from_the_command_line(tmp_path):
    cfg = compose_train(SMALL + ["+data.relabel_temperature=0.001",
                                 "+data.gold_reward._target_=gpo.data.sources.CopiedCharacters"],
                        output_dir=tmp_path)
    _, tokenizer = instantiate(cfg.model.policy)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    datamodule.setup()
    train_rows = datamodule.text["train"]
    copied = CopiedCharacters()
    assert all(copied(p, c) >= copied(p, r)
               for p, c, r in zip(train_rows["prompt"], train_rows["chosen"], train_rows["rejected"]))


@pytest.fixture
def tiny_reward_model(tmp_path):
    tokenizer = char_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
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
    from gpo.infra.errors import InputError

    with pytest.raises(InputError, match="label=1"):
        RewardModelGold(str(tiny_reward_model), label=1)


def test_untrained_policy_has_zero_kl_and_even_win_rate_then_training_moves_it(tmp_path):
    # lr = 0: the policy stays the reference, through the whole real pipeline.
    still = train(compose_train(SMALL + ["optimizer.lr=0", "allow_zero_lr=true", "trainer.max_steps=2"],
                                output_dir=tmp_path / "still")).metrics
    assert still["eval/kl"] == pytest.approx(0.0, abs=1e-4)
    assert abs(still["eval/win_rate"] - 0.5) < 3 * still["eval/win_rate_stderr"]
    assert 0 < still["eval/win_rate_stderr"] < 0.05
    gap = still["eval/gold_reward"] - still["eval/gold_reward_reference"]
    assert abs(gap) < 4 * still["eval/gold_reward_stderr"]

    trained = train(compose_train(SMALL + ["optimizer.lr=1e-3", "beta=0.1"], output_dir=tmp_path / "trained")).metrics
    assert trained["eval/kl"] > max(0.1, 5 * trained["eval/kl_stderr"])
    assert trained["eval/win_rate"] > 0.5 + 3 * trained["eval/win_rate_stderr"]


def test_capped_count_agrees_with_the_count_up_to_the_cap_then_falls():
    gold, count = CappedCount(cap=6, penalty=2.0), PreferredCharacters()
    for n in range(9):
        response = "a" * n + "p" * (8 - n)
        assert count("ab:", response) == n
        assert gold("ab:", response) == (n if n <= 6 else 6 - 2.0 * (n - 6))


def test_labels_and_gold_agree_on_the_data_and_part_off_its_support():
    """The over-optimisation mechanism, cheaply: the proxy the labels come from
    and the gold reward agree on nearly every response the behaviour policy
    (the reference) writes, and disagree where the policy goes when it
    maximises the proxy (every letter preferred)."""
    plain = SyntheticPreferences(num_pairs=1000, seed=4)
    task = SyntheticPreferences(gold_reward=CappedCount(), label_reward=PreferredCharacters(), num_pairs=1000, seed=4)
    pairs = task.preferences()
    assert pairs["chosen"] == plain.preferences()["chosen"]  # the labels are today's: only the judge differs
    responses = [(p, r) for p, c, rj in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"]) for r in (c, rj)]
    agree = sum(task.gold_reward(p, r) == task.label_reward(p, r) for p, r in responses) / len(responses)
    assert agree > 0.9
    # Off the support: the proxy's best response is the gold reward's worst.
    assert task.label_reward("ab:", "abcdefgh") == 8 and task.gold_reward("ab:", "abcdefgh") == 2.0
    assert task.gold_reward("ab:", "abcdefij") == 6 > task.gold_reward("ab:", "abcdefgh")
    # Chosen responses beat rejected ones on the proxy, by the labels' construction...
    p_chosen = pairs["preference_probability"]
    assert sum(p_chosen) / len(p_chosen) > 0.6 and all(0 < p < 1 for p in p_chosen)


def test_pairs_seed_redraws_only_the_pairs():
    base = SyntheticPreferences(num_pairs=100, num_demonstrations=50, seed=0)
    same = SyntheticPreferences(num_pairs=100, seed=0, pairs_seed=0)
    assert same.preferences().to_list() == base.preferences().to_list()
    other = SyntheticPreferences(num_pairs=100, num_demonstrations=50, seed=0, pairs_seed=1)
    assert other.preferences()["prompt"] != base.preferences()["prompt"]
    assert other.demonstrations().to_list() == base.demonstrations().to_list()
    assert other.evaluation_prompts(50) == base.evaluation_prompts(50)


def test_overoptimisation_seeds_vary_the_pairs_and_share_the_sft_reference(tmp_path):
    from gpo.data import PreferenceDataModule
    from gpo.model import char_tokenizer
    from gpo.reference import InitialPolicy

    cfgs = [compose_train(["experiment=overoptimisation", f"seed={seed}"], output_dir=tmp_path) for seed in (1, 2)]
    assert [cfg.data.source.pairs_seed for cfg in cfgs] == [1, 2]
    assert cfgs[0].callbacks.sample_evaluation.every_n_steps > 0  # trajectories
    keys, pairs = [], []
    for cfg in cfgs:
        dm = PreferenceDataModule(instantiate(cfg.data.source), char_tokenizer(), max_length=32, max_prompt_length=16)
        dm.setup()
        keys.append(InitialPolicy(None, cfg.model.policy, cfg.model.sft, dm, cache=None).key)
        pairs.append(dm.text["train"]["chosen"])
    assert keys[0] == keys[1] and pairs[0] != pairs[1]
