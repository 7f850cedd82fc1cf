"""Length-grouped batches: every pair once per epoch, batches of similar
length, a new order every epoch, and under DDP each rank a share of the same
global batches."""

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
    assert torch_threads(None) is None and torch_threads(3) == 3
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    for mode, n_jobs, threads in [("RUN", 4, 8), ("MULTIRUN", 4, 2), ("MULTIRUN", 16, 1), ("MULTIRUN", None, 8)]:
        config = OmegaConf.create({"mode": mode, "launcher": {"n_jobs": n_jobs} if n_jobs else {}})
        from hydra.types import RunMode

        config.mode = RunMode[mode]
        monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda c=config: c))
        assert torch_threads("auto") == threads, (mode, n_jobs)
    with pytest.raises(Exception, match="num_threads"):
        torch_threads(0)
    assert torch.get_num_threads() >= 1
