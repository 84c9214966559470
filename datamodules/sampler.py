"""Aspect-ratio grouped training batches: every batch holds images of one orientation.

A model pads the images of a batch to the largest height and the largest width among them, so a landscape and a
portrait image in one batch pad to up to ~1.8x their pixels at COCO's 4:3 (compute and memory spent on zeros).
torchvision's detection references (GroupedBatchSampler) and detectron2 (AspectRatioGroupedDataset, two groups:
width > height or not) batch within groups for this reason. Neither keeps the epoch exact under DDP: torchvision's
DistributedSampler pads the index list with repeats and fills the last batches of each rank from repeated
indices; detectron2 samples an endless stream. This sampler keeps it exact, which is why it is written here:

  * one plan per epoch, identical on every rank: the indices in one seeded order (seed + epoch, as
    DistributedSampler), cut into batches group by group in that order, each group's last batch partial;
  * so that every rank takes the same number of steps (DDP needs it), the number of batches is raised to a
    multiple of the world size by splitting the largest batches in two (orientation stays pure);
  * rank r takes batches r, r + W, r + 2W, ...: every index once per epoch over the ranks, ranks disjoint.

Lightning injects a DistributedSampler into the `sampler` argument of a BatchSampler it finds in a training
DataLoader under DDP (`use_distributed_sampler`, the default); this sampler takes the world size, rank, seed,
shuffle and epoch from that DistributedSampler and plans over the whole dataset itself. Outside DDP the order is the
given sampler's (RandomSampler: shuffled; SequentialSampler: in order).
"""
from __future__ import annotations

from collections import Counter
from typing import Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, DistributedSampler, Sampler


def orientation_groups(sizes: Sequence[tuple[int, int]]) -> list[int]:
    """Group id per image from its (height, width): 0 landscape or square, 1 portrait (detectron2's two groups)."""
    return [int(height > width) for height, width in sizes]


class GroupedBatchSampler(BatchSampler):
    """Batches of `batch_size` indices that share a group id (see the module docstring).

    Args:
        sampler: the order of the indices, each dataset index once (RandomSampler / SequentialSampler), or a
            DistributedSampler, whose
            num_replicas, rank, shuffle, seed and epoch then decide the plan (its own padded shard is not used).
        group_ids: group id per dataset index (e.g. `orientation_groups`), len == len(dataset).
        batch_size: indices per batch (partial batches: each group's last one, and the halves of a split).
        drop_last: drop each group's partial batch, and then as many batches as keep the count a multiple of the
            world size (indices left out; no batch is split).
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int, drop_last: bool = False):
        super().__init__(sampler, batch_size, drop_last)
        self.group_ids = [int(group) for group in group_ids]
        dataset = getattr(sampler, "dataset", None)
        if isinstance(sampler, DistributedSampler) and len(dataset) != len(self.group_ids):
            raise ValueError(
                f"GroupedBatchSampler: {len(self.group_ids)} group ids for a dataset of {len(dataset)} samples"
            )
        if not isinstance(sampler, DistributedSampler) and len(sampler) != len(self.group_ids):
            raise ValueError(
                f"GroupedBatchSampler: {len(self.group_ids)} group ids for a sampler of {len(sampler)} indices"
            )
        if not drop_last and self._batch_count() > len(self.group_ids):
            raise ValueError(
                f"GroupedBatchSampler: {len(self.group_ids)} samples cannot make the same number of batches for each "
                f"of {self.num_replicas} ranks without repeating one (batch_size {batch_size}); use drop_last=True"
            )

    @property
    def num_replicas(self) -> int:
        return self.sampler.num_replicas if isinstance(self.sampler, DistributedSampler) else 1

    @property
    def rank(self) -> int:
        return self.sampler.rank if isinstance(self.sampler, DistributedSampler) else 0

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to a DistributedSampler (Lightning calls it on both; plain DDP loops call one of them)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _order(self) -> list[int]:
        """This epoch's order of all the dataset's indices, the same on every rank."""
        if not isinstance(self.sampler, DistributedSampler):
            return list(self.sampler)
        count = len(self.group_ids)
        if not self.sampler.shuffle:
            return list(range(count))
        generator = torch.Generator()
        generator.manual_seed(self.sampler.seed + self.sampler.epoch)
        return torch.randperm(count, generator=generator).tolist()

    def _batch_count(self) -> int:
        """Batches per epoch over all ranks, a multiple of the world size (the plan's count, without planning)."""
        world, group_sizes = self.num_replicas, Counter(self.group_ids).values()
        if self.drop_last:
            full = sum(size // self.batch_size for size in group_sizes)
            return full - full % world
        batches = sum(-(-size // self.batch_size) for size in group_sizes)
        return -(-batches // world) * world

    def plan(self) -> list[list[int]]:
        """All ranks' batches of this epoch, in order; rank r takes every W-th from position r."""
        buffers: dict[int, list[int]] = {}
        batches: list[list[int]] = []
        for index in self._order():
            buffer = buffers.setdefault(self.group_ids[index], [])
            buffer.append(index)
            if len(buffer) == self.batch_size:
                batches.append(buffer.copy())
                buffer.clear()
        if not self.drop_last:
            batches += [buffer for buffer in buffers.values() if buffer]
        wanted = self._batch_count()
        del batches[wanted:]  # drop_last: the surplus over a multiple of the world size
        while len(batches) < wanted:
            # Split the largest batch (the earliest of equals): its halves keep the orientation; one holds 2 or
            # more indices while there are fewer batches than indices (checked at construction).
            largest = max(range(len(batches)), key=lambda position: len(batches[position]))
            batch = batches[largest]
            half = len(batch) // 2
            batches[largest:largest + 1] = [batch[:half], batch[half:]]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.plan()[self.rank::self.num_replicas]

    def __len__(self) -> int:
        return self._batch_count() // self.num_replicas
