"""The method's axes through the real configs: every option of every axis (and
KTO, TR-DPO, the unpaired data format) trains a few steps on the tiny model; the
per-token reference log-probs are cached once and serve every token-level axis
and hyperparameter; the README's 8-job sweep over loss x rho x weighting runs
through the CLI and its report keeps the 8 methods apart."""

import json
import random

import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from test_axes import AXIS_OPTIONS

from conftest import FAST, SMALL_TASK, compose_train
from gpo.infra.cache import DiskCache
from gpo.infra.errors import InputError
from gpo.infra.summary import RunSummary
from gpo.reference import CachedReference, FrozenReference, InitialPolicy
from gpo.run import train

BASE = ["logger=csv", *FAST, "~callbacks.sample_evaluation", "export.policy=false"]
QUIET = [*BASE, *SMALL_TASK]
# What an option needs besides its name to run on the synthetic task.
NEEDS = {("labels", "soft"): ["labels.column=preference_probability"]}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def letters(rng, n):
    return "".join(rng.choice("abcdefghijklmnop") for _ in range(n))


def scored_pairs(path, n=96):
    """Pairs with ODPO's score columns (the chosen response scored higher)."""
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        low = rng.uniform(0, 5)
        rows.append({"prompt": letters(rng, 4) + ":", "chosen": letters(rng, rng.randint(3, 8)),
                     "rejected": letters(rng, rng.randint(3, 8)), "score_chosen": low + rng.uniform(0.5, 3),
                     "score_rejected": low})
    return write_jsonl(path, rows)


def initial_policy(cfg):
    """(the run's InitialPolicy, a fresh policy, the data module set up), as gpo.run builds them."""
    build = instantiate(cfg.model.policy, _partial_=True)
    policy, tokenizer = build()
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    datamodule.setup()
    initial = InitialPolicy(build, cfg.model.policy, cfg.model.sft, datamodule, DiskCache(cfg.cache_dir))
    return initial, policy, datamodule


FILE_DATA = ["data=jsonl", "model.sft.steps=0", "trainer.max_steps=3", "trainer.val_check_interval=3"]


@pytest.mark.parametrize("group,option", AXIS_OPTIONS, ids=lambda v: v)
def test_every_axis_option_trains_through_the_config(group, option, tmp_path):
    overrides = [*QUIET, f"{group}={option}", *NEEDS.get((group, option), [])]
    if (group, option) == ("margin", "score"):  # the synthetic task has no scores: a file that has them
        overrides = [*BASE, f"{group}={option}", *FILE_DATA,
                     f"data.source.train_files={scored_pairs(tmp_path / 'scored.jsonl')}"]
    summary = train(compose_train(overrides, output_dir=tmp_path / "run"))
    assert summary.status == "finished" and torch.isfinite(torch.tensor(summary.metrics["train/loss"]))
    neutral = summary.method == ""
    assert neutral == (f"{group}={option}" not in summary.method)
    assert summary.method in ("", f"{group}={option}")


def test_kto_trains_on_pairs_seen_as_examples_and_on_an_unpaired_file(tmp_path):
    summary = train(compose_train([*QUIET, "loss=kto"], output_dir=tmp_path / "view"))
    assert summary.status == "finished" and summary.loss == "kto"
    train_split = summary.data["splits"]["train"]
    assert train_split["examples"] == 720 and train_split["desirable"] == 360  # 360 training pairs, 2 examples each
    assert {"train/kl", "val/rewards/accuracies"} <= set(summary.metrics)

    rng = random.Random(1)
    rows = [{"prompt": letters(rng, 4) + ":", "completion": letters(rng, 6), "label": rng.random() < 0.7}
            for _ in range(80)]
    rows[3]["label"] = "maybe"  # unusable: dropped and counted
    files = write_jsonl(tmp_path / "examples.jsonl", rows)
    summary = train(compose_train([*BASE, *FILE_DATA, "data=unpaired", "loss=kto", f"data.source.train_files={files}"],
                                  output_dir=tmp_path / "file"))
    assert summary.status == "finished"
    assert summary.data["splits"]["train"]["dropped"] == {"'label' is not true/false or 1/0 (got 'maybe')": 1}

    with pytest.raises(InputError, match="loss=kto trains on unpaired examples .* set data.unpaired=true"):
        train(compose_train([*QUIET, "loss=kto", "data.unpaired=false"], output_dir=tmp_path / "refused"))
    with pytest.raises(InputError, match="loss=dpo trains on preference pairs; the data are unpaired"):
        train(compose_train([*BASE, *FILE_DATA, "data=unpaired", f"data.source.train_files={files}"],
                            output_dir=tmp_path / "refused2"))


def test_tr_dpo_moves_the_reference_and_checkpoints_it(tmp_path):
    summary = train(compose_train([*QUIET, "reference=sync", "reference.sync.every_n_steps=2",
                                   "reference.sync.alpha=1.0"], output_dir=tmp_path))
    assert summary.method == "reference=sync"
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    policy = {k.removeprefix("policy."): v for k, v in checkpoint["state_dict"].items() if k.startswith("policy.")}
    synced = checkpoint["reference_state"]
    # The hard update after step 2 is made before step 3; the one after step 4 would be made before step 5
    # (a resumed run makes it then), so the step-4 checkpoint holds the policy of step 2.
    assert synced["synced_at"] == 2
    initial = initial_policy(compose_train(QUIET, output_dir=tmp_path / "initial"))[0].model().state_dict()
    for name, value in synced["weights"].items():  # neither the initial policy nor the last step's
        assert not torch.equal(value, initial[name]) and not torch.equal(value, policy[name]), name
    with pytest.raises(InputError, match="reference=cached cannot follow it"):
        train(compose_train([*QUIET, "+reference.sync={_target_: gpo.reference.Sync}"], output_dir=tmp_path / "x"))


def test_per_token_reference_log_probs_are_cached_once_for_every_token_axis(tmp_path):
    fresh = [*QUIET, f"cache_dir={tmp_path / 'cache'}", "model.sft.steps=0"]  # a cache of its own, no SFT stage
    runs = [["rho=ld"], ["rho=ld", "rho.alpha=0.1"], ["rho=sampo"]]
    outcomes = [train(compose_train([*fresh, *run], output_dir=tmp_path / str(i))).stages["reference"]["status"]
                for i, run in enumerate(runs)]
    assert outcomes == ["built", "loaded", "loaded"]
    cache = tmp_path / "cache"
    assert len(list((cache / "reference_token_logps").glob("[!.]*"))) == 1
    assert not (cache / "reference_logps").exists()  # the token-level runs never needed the summed entry
    # The cached values are the frozen reference's per-token log-probs, and their sums its summed ones.
    initial, policy, datamodule = initial_policy(compose_train(fresh, output_dir=tmp_path))
    cached, frozen = CachedReference(initial), FrozenReference(initial)
    cached.setup(policy, datamodule, torch.device("cpu"), tokens=True)
    frozen.setup(policy, datamodule, torch.device("cpu"))
    batch = next(iter(datamodule.val_dataloader()))
    sums, values = cached.token_logps(batch)
    frozen_sums, frozen_values = frozen.token_logps(batch)
    torch.testing.assert_close(values, frozen_values, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sums, torch.cat(frozen.logps(batch)), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_the_readme_sweep_over_loss_rho_and_weighting_runs_eight_methods_the_report_keeps_apart(
        tmp_path, run_in_process):
    args = ["-m", "loss=dpo,ipo", "rho=sum,mean", "weighting=none,wpo", "trainer.max_steps=4", "num_threads=1",
            "logger=csv", "trainer.val_check_interval=4", "+trainer.limit_val_batches=2",
            "callbacks.sample_evaluation.num_prompts=16", "callbacks.sample_evaluation.max_new_tokens=9",
            "~callbacks.progress_bar", *SMALL_TASK, f"hydra.sweep.dir={tmp_path}"]
    done = run_in_process("src/train.py", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [RunSummary.read(path) for path in tmp_path.glob("*/summary.json")]
    assert sorted((s.loss, s.method) for s in summaries) == sorted(
        (loss, method) for loss in ("dpo", "ipo")
        for method in ("", "rho=mean", "weighting=wpo", "rho=mean weighting=wpo"))
    for s in summaries:  # the diagnostics are in every run's summary
        assert s.status == "finished"
        for key in ("eval/length", "eval/lc_win_rate", "eval/logratio_chosen", "eval/chosen_below_initial"):
            assert key in s.metrics, (s.loss, s.method, key)
    report = pd.read_csv(tmp_path / "report.csv")
    assert sorted(report["loss"]) == sorted(
        f"{loss}{label}" for loss in ("dpo", "ipo")
        for label in ("", " [rho=mean]", " [weighting=wpo]", " [rho=mean weighting=wpo]"))
    assert (report["n_finished"] == 1).all()
    assert (tmp_path / "diagnostics_vs_kl.png").exists()


def test_diagnostics_start_at_the_initial_policy_and_are_in_the_summary(tmp_path):
    """At step 0 the policy is the initial policy: no displacement, exactly; later the metrics move."""
    summary = train(compose_train(["logger=csv", *FAST, *SMALL_TASK, "export.policy=false",
                                   "callbacks.sample_evaluation.every_n_steps=2", "optimizer.lr=3e-3"],
                                  output_dir=tmp_path))
    start, end = summary.trajectory[0], summary.trajectory[-1]
    assert start["step"] == 0 and end["step"] == 4
    assert start["eval/logratio_chosen"] == 0.0 and start["eval/logratio_rejected"] == 0.0
    assert start["eval/chosen_below_initial"] == 0.0
    assert end["eval/logratio_chosen"] != 0.0 and 0.0 <= end["eval/chosen_below_initial"] <= 1.0
    for key in ("eval/length", "eval/length_reference", "eval/lc_win_rate", "eval/logps_chosen"):
        assert key in summary.metrics and key in end
    assert 1 <= summary.metrics["eval/length"] <= 9 and 0.0 <= summary.metrics["eval/lc_win_rate"] <= 1.0


def test_the_length_sensitive_task():
    from gpo.data.sources import PreferredCharacters, PreferredFraction, SyntheticPreferences

    task = SyntheticPreferences(label_reward=PreferredCharacters(), gold_reward=PreferredFraction(),
                                min_response_length=2, response_length=12, num_pairs=400)
    rows = task.preferences().to_list()
    lengths = [len(r[side]) for r in rows for side in ("chosen", "rejected")]
    assert min(lengths) == 2 and max(lengths) == 12
    longer_wins = sum(len(r["chosen"]) > len(r["rejected"]) for r in rows)
    shorter_wins = sum(len(r["chosen"]) < len(r["rejected"]) for r in rows)
    assert longer_wins > 2 * shorter_wins  # the count labels favour length ...
    assert all(0.0 <= r["gold_chosen"] <= 1.0 for r in rows)  # ... the gold fraction does not reward it
    assert PreferredFraction()("x:", "abxy") == 0.5 and PreferredFraction()("x:", "") == 0.0
    with pytest.raises(InputError, match="min_response_length"):
        SyntheticPreferences(min_response_length=9, response_length=8)
