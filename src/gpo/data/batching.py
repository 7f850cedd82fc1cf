"""Which pairs go into a batch: length-grouped shuffling.

Padding costs compute in proportion to how unequal the lengths in a batch
are. `LengthGroupedSampler` shuffles the pairs, cuts the shuffled order into
groups of `group_batches` global batches, sorts each group by length, cuts it
into batches and shuffles the batches: every batch holds pairs of similar
length, while which pairs meet and in what order still changes every epoch
(training stays stochastic). It is a DistributedSampler (a resumable one,
gpo.data.resumable), so under DDP Lightning keeps it (rather than wrapping it in
its own shuffling sampler) and each rank takes its share of every global batch.
"""

import numpy as np
import pyarrow.compute as pc
import torch
from datasets import Dataset

from gpo.data.resumable import ResumableSampler


def pair_lengths(dataset: Dataset) -> np.ndarray:
    """The longer of chosen and rejected, in tokens, per pair: the width a
    padded batch holding the pair has at least."""
    table = dataset.select_columns(["chosen_input_ids", "rejected_input_ids"]).with_format("arrow")[:]
    chosen, rejected = (pc.list_value_length(table.column(c)).to_numpy(zero_copy_only=False).astype(np.int64)
                        for c in ("chosen_input_ids", "rejected_input_ids"))
    return np.maximum(chosen, rejected)


class LengthGroupedSampler(ResumableSampler):
    def __init__(self, lengths, batch_size: int, group_batches: int = 64, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0):
        """`lengths`: per pair; `batch_size`: pairs per rank and step;
        `group_batches`: global batches sorted together (larger: less padding,
        less randomness in which pairs share a batch)."""
        self.lengths = torch.as_tensor(np.asarray(lengths), dtype=torch.long)
        super().__init__(range(len(self.lengths)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size, self.group_batches = batch_size, group_batches

    def global_batches(self) -> list[torch.Tensor]:
        """This epoch's global batches (indices), the same on every rank."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator)
        # As DistributedSampler: repeat a few pairs so every rank gets as many.
        order = torch.cat([order, order[: self.total_size - len(order)]])
        global_batch = self.batch_size * self.num_replicas
        batches = []  # full ones, then at most one short one (the end of the last group)
        for group in order.split(global_batch * self.group_batches):
            group = group[torch.argsort(self.lengths[group], descending=True, stable=True)]
            batches.extend(group.split(global_batch))
        # A short last batch stays last: the DataLoader cuts this order into batches of batch_size.
        full = [b for b in batches if len(b) == global_batch]
        return [full[i] for i in torch.randperm(len(full), generator=generator)] + batches[len(full):]

    def epoch_indices(self) -> list[int]:
        # Every num_replicas-th pair of each sorted global batch: ranks get equally long shares.
        return [i for batch in self.global_batches() for i in batch[self.rank :: self.num_replicas].tolist()]

    def __len__(self) -> int:
        return self.num_samples

