"""A data order that a resumed run continues exactly (Lightning's stateful
dataloader protocol).

  - `ResumableSampler`: the order of epoch e is a permutation seeded by
    (seed, e), not drawn from the global RNG, so it is the same in a resumed run;
  - `ResumableLoader`: remembers how many batches of the epoch it handed out,
    saved in the checkpoint, so a run resumed mid-epoch continues with the next batch.
"""

from torch.utils.data import DataLoader, DistributedSampler


class ResumableSampler(DistributedSampler):
    """DistributedSampler's order (a permutation seeded by seed + epoch; one
    replica outside DDP), which does not depend on the global RNG and so is the
    same in a resumed run; `skip` leaves out the first indices of one epoch.
    Subclasses with another order override `epoch_indices`."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.skip: tuple[int, int] | None = None  # (epoch, indices already trained on in it)

    def epoch_indices(self) -> list[int]:
        """This rank's indices for the current epoch, in order."""
        return list(super().__iter__())

    def __iter__(self):
        indices = self.epoch_indices()
        if self.skip is not None and self.skip[0] == self.epoch:
            indices = indices[self.skip[1]:]
        self.skip = None
        return iter(indices)


class ResumableLoader(DataLoader):
    """A DataLoader over a ResumableSampler that Lightning saves in the
    checkpoint (state_dict) and restores before iterating (load_state_dict).
    Lightning does not prefetch from a loader with a length, so the batches
    handed out when a checkpoint is written are the batches trained on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._handed_out = 0

    def __iter__(self):
        sampler = self.sampler
        self._handed_out = (sampler.skip[1] // self.batch_size
                            if sampler.skip and sampler.skip[0] == sampler.epoch else 0)
        for batch in super().__iter__():
            self._handed_out += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches": self._handed_out}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.set_epoch(state["epoch"])
        self.sampler.skip = (state["epoch"], state["batches"] * self.batch_size)
