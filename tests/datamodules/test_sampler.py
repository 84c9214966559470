"""Aspect-ratio grouped batches: one orientation per batch, every index once per epoch over the ranks, ranks
disjoint with equal step counts, as Lightning wires it under DDP; and the padding they save."""
import random

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from benchmarks.dataloader_speed import padding_ratio
from datamodules.coco import CocoDataModule
from datamodules.sampler import GroupedBatchSampler, orientation_groups


def mixed_groups(count: int, seed: int = 0, portrait_share: float = 0.3) -> list[int]:
    rng = random.Random(seed)
    return [int(rng.random() < portrait_share) for _ in range(count)]


def rank_batches(groups, batch_size, world, epoch=0, seed=0, drop_last=False):
    dataset = list(range(len(groups)))
    out = []
    for rank in range(world):
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        batch_sampler = GroupedBatchSampler(sampler, groups, batch_size, drop_last=drop_last)
        batch_sampler.set_epoch(epoch)
        batches = list(batch_sampler)
        assert len(batches) == len(batch_sampler)
        out.append(batches)
    return out


def test_orientation_groups():
    assert orientation_groups([(480, 640), (640, 480), (500, 500)]) == [0, 1, 0]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 8])
def test_single_process_batches_are_pure_and_cover_every_index_once(batch_size):
    groups = mixed_groups(101)
    batch_sampler = GroupedBatchSampler(RandomSampler(range(101)), groups, batch_size)
    batches = list(batch_sampler)
    assert len(batches) == len(batch_sampler)
    assert all(len({groups[i] for i in batch}) == 1 for batch in batches)
    assert all(1 <= len(batch) <= batch_size for batch in batches)
    assert sorted(i for batch in batches for i in batch) == list(range(101))
    # only each group's last batch is partial
    assert sum(len(batch) < batch_size for batch in batches) <= 2


@pytest.mark.parametrize("world, batch_size", [(2, 2), (3, 2), (4, 8), (8, 3)])
def test_ranks_split_each_epoch_exactly_with_equal_step_counts(world, batch_size):
    groups = mixed_groups(203, seed=world)
    for epoch in (0, 1):
        per_rank = rank_batches(groups, batch_size, world, epoch=epoch)
        assert len({len(batches) for batches in per_rank}) == 1  # every rank takes the same number of steps
        indices = [[i for batch in batches for i in batch] for batches in per_rank]
        every = [i for rank in indices for i in rank]
        assert sorted(every) == list(range(203))  # every index once over the ranks: disjoint and complete
        assert all(len({groups[i] for i in batch}) == 1 for batches in per_rank for batch in batches)
        assert all(1 <= len(batch) <= batch_size for batches in per_rank for batch in batches)
    # a new epoch, a new order; the same epoch, the same plan
    assert rank_batches(groups, batch_size, world, epoch=0) != rank_batches(groups, batch_size, world, epoch=1)
    assert rank_batches(groups, batch_size, world, epoch=1) == rank_batches(groups, batch_size, world, epoch=1)


def test_drop_last_keeps_full_batches_and_equal_counts():
    groups = mixed_groups(50)
    per_rank = rank_batches(groups, 4, 3, drop_last=True)
    assert len({len(batches) for batches in per_rank}) == 1
    every = [i for batches in per_rank for batch in batches for i in batch]
    assert len(every) == len(set(every)) and all(len(b) == 4 for batches in per_rank for b in batches)


def test_an_impossible_exact_split_is_a_clear_error():
    sampler = DistributedSampler(list(range(5)), num_replicas=4, rank=0)
    with pytest.raises(ValueError, match="5 samples cannot make the same number of batches for each of 4 ranks"):
        GroupedBatchSampler(sampler, [0] * 5, 1)
    with pytest.raises(ValueError, match="3 group ids for a sampler of 4"):
        GroupedBatchSampler(SequentialSampler(range(4)), [0, 1, 0], 2)


def test_the_datamodule_groups_by_default_and_lightning_injects_its_distributed_sampler(small_synthetic_root):
    """What Lightning does to a training DataLoader under DDP (use_distributed_sampler): capture the batch
    sampler's arguments while train_dataloader runs, then rebuild it with a DistributedSampler per rank."""
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _update_dataloader

    datamodule = CocoDataModule(root=str(small_synthetic_root), batch_size=2)
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = datamodule.train_dataloader()
    assert isinstance(loader.batch_sampler, GroupedBatchSampler)
    dataset = loader.dataset
    groups = loader.batch_sampler.group_ids
    assert groups == orientation_groups([image.shape[-2:] for image, _ in dataset])
    per_rank = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        injected = _update_dataloader(loader, sampler)
        assert isinstance(injected.batch_sampler, GroupedBatchSampler) and injected.batch_sampler.sampler is sampler
        per_rank.append([i for batch in injected.batch_sampler for i in batch])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(len(dataset)))

    plain = CocoDataModule(root=str(small_synthetic_root), batch_size=2, group_by_aspect_ratio=False)
    assert type(plain.train_dataloader().batch_sampler) is BatchSampler


def test_grouping_cuts_the_padding_of_mixed_orientation_batches():
    """Padded pixels / image pixels on a mixed set (COCO-like: 4:3 landscape and 3:4 portrait) at batch 2."""
    rng = random.Random(0)
    sizes = [(480, 640) if rng.random() < 0.7 else (640, 480) for _ in range(400)]
    torch.manual_seed(0)
    plain = list(BatchSampler(RandomSampler(range(400)), 2, drop_last=False))
    grouped = list(GroupedBatchSampler(RandomSampler(range(400)), orientation_groups(sizes), 2))
    before, after = padding_ratio(plain, sizes), padding_ratio(grouped, sizes)
    # a mixed pair pads 480x640 + 640x480 to 2 x 640x640: 1.33x; about 42 % of random pairs are mixed
    assert 1.1 < before < 1.2 and after == pytest.approx(1.0, abs=0.01)
