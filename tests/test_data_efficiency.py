"""Less work per run: length-grouped batches (every pair once per epoch,
batches of similar length, a new order every epoch, under DDP each rank a
share of the same global batches), data prepared once per process for the
jobs of a multirun, torch threads fitted to the parallel jobs."""

import numpy as np
import pytest
import torch

from gpo.config import torch_threads
from gpo.data.batching import LengthGroupedSampler


def padded_fraction(lengths, batches):
    """Real tokens / tokens of the batches padded to their longest pair."""
    return sum(lengths[b].sum() for b in batches) / sum(len(b) * lengths[b].max() for b in batches)


def test_length_grouped_batches_cover_every_pair_with_less_padding_and_change_every_epoch():
    lengths = np.random.default_rng(0).integers(10, 400, size=1000)
    sampler = LengthGroupedSampler(lengths, batch_size=8, group_batches=16, seed=3)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(1000)) and len(sampler) == 1000
        epochs.append(order)
    assert epochs[0] != epochs[1]
    batches = [np.array(epochs[0][i : i + 8]) for i in range(0, 1000, 8)]
    shuffled = np.random.default_rng(1).permutation(1000)
    random_batches = [shuffled[i : i + 8] for i in range(0, 1000, 8)]
    assert padded_fraction(lengths, batches) > 0.9 > 0.7 > padded_fraction(lengths, random_batches)


@pytest.mark.parametrize("world", [2, 3])
def test_under_ddp_ranks_share_each_global_batch(world):
    lengths = np.random.default_rng(0).integers(10, 400, size=300)  # divisible by world: no pairs repeated
    single = LengthGroupedSampler(lengths, batch_size=4 * world, group_batches=4, seed=5)
    ranks = [LengthGroupedSampler(lengths, batch_size=4, group_batches=4, num_replicas=world, rank=r, seed=5)
             for r in range(world)]
    shares = [list(r) for r in ranks]
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == len(ranks[0])
    global_batches = single.global_batches()
    for step, batch in enumerate(global_batches[:-1]):  # every full global batch, split across ranks
        assert sorted(sum((s[4 * step : 4 * step + 4] for s in shares), [])) == sorted(batch.tolist())
    assert sorted(sum(shares, [])) == list(range(300))


def test_num_threads_auto_divides_the_cores_among_parallel_jobs(monkeypatch):
    import os

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert torch_threads(None) is None and torch_threads(3) == 3
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    for mode, n_jobs, threads in [("RUN", 4, 8), ("MULTIRUN", 4, 2), ("MULTIRUN", 16, 1), ("MULTIRUN", None, 8)]:
        config = OmegaConf.create({"mode": mode, "launcher": {"n_jobs": n_jobs} if n_jobs else {}})
        from hydra.types import RunMode

        config.mode = RunMode[mode]
        monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda c=config: c))
        assert torch_threads("auto") == threads, (mode, n_jobs)
    assert torch_threads("auto", cpu_processes=2) == 4  # DDP on 2 CPU processes, one job
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a launcher's choice is kept
    assert torch_threads("auto") == 3
    with pytest.raises(Exception, match="num_threads"):
        torch_threads(0)
    assert torch.get_num_threads() >= 1


def test_jobs_in_one_process_reuse_prepared_data_unless_config_or_file_changes(tmp_path, caplog):
    import json
    import logging

    from hydra.utils import instantiate

    from conftest import compose_train
    from gpo.cache import digest
    from gpo.data.module import file_stamps
    from gpo.models import char_tokenizer

    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"q{i}:", "chosen": "yes" * (i % 5 + 1), "rejected": "no"})
                              for i in range(40)))
    tokenizer = char_tokenizer()

    def prepare(*overrides):
        cfg = compose_train(["data=jsonl", f"data.source.train_files={path}", *overrides])
        datamodule = instantiate(cfg.data, tokenizer=tokenizer)
        datamodule.reuse_key = digest(cfg.data, cfg.model.policy, file_stamps(cfg.data))
        with caplog.at_level(logging.INFO, logger="gpo.data.module"):
            caplog.clear()
            datamodule.setup()
        return datamodule, "prepared by an earlier job" in caplog.text

    first, reused = prepare()
    assert not reused
    demonstrations = first.demonstrations()
    second, reused = prepare("beta=0.5")  # another job of the sweep: same data
    assert reused and second.tokenized["train"]["chosen_input_ids"] == first.tokenized["train"]["chosen_input_ids"]
    assert second.report == first.report and second.demonstrations() is demonstrations
    _, reused = prepare("data.max_length=600")
    assert not reused
    _, reused = prepare("beta=0.1")  # jobs that alternate between data configs (a sweep's seeds) keep both
    assert reused
    path.write_text(path.read_text() + "\n" + json.dumps({"prompt": "new:", "chosen": "a", "rejected": "b"}))
    third, reused = prepare("data.max_length=600")  # the file changed: read again
    assert not reused and third.report["train"]["read"] == 41
