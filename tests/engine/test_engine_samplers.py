"""Samplers and loaders: sharding, determinism, per-sample seeds, grouping and exact skipping."""

from __future__ import annotations

import itertools
import os
import signal
import time

import cv2
import numpy as np
import pytest
import torch
from engine_toys import ToyImages
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from resdet.data.loader import TrainLoader, build_eval_loader, init_worker
from resdet.data.samplers import (
    GroupedBatchSampler,
    ResumableSampler,
    aspect_ratio_groups,
)


def test_unshuffled_shards_match_distributed_sampler() -> None:
    # torch's DistributedSampler is the reference for sharding and wrap-around padding.
    for rank in range(3):
        ours = ResumableSampler(10, shuffle=False, rank=rank, world_size=3)
        theirs = DistributedSampler(range(10), num_replicas=3, rank=rank, shuffle=False)
        assert [index for index, _ in ours] == list(theirs)
        assert len(ours) == len(theirs) == 4


def test_shuffled_shards_cover_the_dataset_with_equal_counts() -> None:
    shards = []
    for rank in range(3):
        sampler = ResumableSampler(10, seed=3, rank=rank, world_size=3)
        sampler.set_epoch(2)
        shards.append([index for index, _ in sampler])
    assert [len(shard) for shard in shards] == [4, 4, 4]
    flat = [index for shard in shards for index in shard]
    assert sorted(set(flat)) == list(range(10))
    # 12 slots for 10 samples: exactly two samples are repeated by the wrap-around.
    assert len(flat) - len(set(flat)) == 2


def test_drop_last_truncates_instead_of_padding() -> None:
    shards = [ResumableSampler(10, seed=3, rank=r, world_size=3, drop_last=True) for r in range(3)]
    flat = [index for shard in shards for index, _ in shard]
    assert len(flat) == len(set(flat)) == 9


def test_order_and_seeds_depend_on_seed_and_epoch_only() -> None:
    def run(seed: int, epoch: int, world_size: int = 1) -> dict[int, int]:
        pairs = {}
        for rank in range(world_size):
            sampler = ResumableSampler(20, seed=seed, rank=rank, world_size=world_size)
            sampler.set_epoch(epoch)
            pairs.update(dict(sampler))
        return pairs

    first = run(seed=7, epoch=1)
    assert first == run(seed=7, epoch=1)
    # A sample's seed is the same however the data is sharded.
    assert first == run(seed=7, epoch=1, world_size=2)
    assert set(first.values()).isdisjoint(run(seed=7, epoch=2).values())
    assert set(first.values()).isdisjoint(run(seed=8, epoch=1).values())
    assert all(0 <= seed < 2**63 for seed in first.values())
    sampler = ResumableSampler(20, seed=7)
    orders = set()
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders.add(tuple(index for index, _ in sampler))
    assert len(orders) == 3


def test_grouped_batches_share_a_group_and_are_deterministic() -> None:
    ratios = [0.75 if i % 3 == 0 else 1.5 for i in range(50)]
    groups = aspect_ratio_groups(ratios)
    sampler = ResumableSampler(50, seed=1)
    sampler.set_epoch(4)
    batch_sampler = GroupedBatchSampler(sampler, groups, batch_size=4)
    batches = list(batch_sampler)
    # torchvision's GroupedBatchSampler yields len(sampler) // batch_size batches per epoch.
    assert len(batches) == len(batch_sampler) == 12
    for batch in batches:
        assert len(batch) == 4
        assert len({groups[index] for index, _ in batch}) == 1
    assert batches == list(batch_sampler)


def test_aspect_ratio_groups_put_squares_with_portraits() -> None:
    assert aspect_ratio_groups([0.5, 1.0, 1.01, 2.0]) == [0, 0, 1, 1]


def test_train_loader_resumes_at_any_batch_without_loading_skipped_ones() -> None:
    dataset = ToyImages(40)
    loader = TrainLoader(dataset, batch_size=8, seed=5)
    assert loader.batches_per_epoch == 5
    full = list(itertools.islice(loader.batches(0), 13))
    for start in (3, 5, 7):
        dataset.loaded.clear()
        stream = loader.batches(start)
        first_images, first_labels = next(stream)
        # Only the batch actually delivered was read from the dataset.
        assert len(dataset.loaded) == 8
        assert torch.equal(first_images, full[start][0])
        assert torch.equal(first_labels, full[start][1])
        for expected in full[start + 1 :]:
            images, labels = next(stream)
            assert torch.equal(images, expected[0]) and torch.equal(labels, expected[1])
        stream.close()
    assert loader.epoch_of(4) == 0 and loader.epoch_of(5) == 1


def test_train_loader_batches_do_not_depend_on_workers() -> None:
    dataset = ToyImages(32)
    in_process = TrainLoader(dataset, batch_size=8, seed=2)
    with_workers = TrainLoader(dataset, batch_size=8, seed=2, num_workers=2)
    stream = with_workers.batches(2)
    for expected in itertools.islice(in_process.batches(2), 6):
        images, labels = next(stream)
        assert torch.equal(images, expected[0]) and torch.equal(labels, expected[1])
    stream.close()


class _WorkerPid(Dataset):
    """Each sample is the id of the process that loaded it."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, key: tuple[int, int]) -> int:
        return os.getpid()


def test_train_loader_workers_persist_across_epochs_and_stop_on_close() -> None:
    loader = TrainLoader(_WorkerPid(), batch_size=2, seed=0, num_workers=1)
    stream = loader.batches()
    pids = {int(pid) for batch in itertools.islice(stream, 6) for pid in batch}  # 3 epochs
    assert len(pids) == 1 and os.getpid() not in pids  # one worker served every epoch
    stream.close()
    (worker,) = pids
    with pytest.raises(ProcessLookupError):
        for _ in range(50):  # the worker exits shortly after the stream is closed
            os.kill(worker, 0)
            time.sleep(0.1)


def test_train_loader_rejects_a_dataset_smaller_than_a_batch() -> None:
    with pytest.raises(ValueError, match="less than one batch of 8"):
        TrainLoader(ToyImages(10), batch_size=8, seed=0, world_size=2)


def test_eval_loader_shards_without_duplicates() -> None:
    dataset = ToyImages(5)
    seen = []
    for rank in range(2):
        loader = build_eval_loader(dataset, batch_size=2, rank=rank, world_size=2)
        dataset.loaded.clear()
        batches = list(loader)
        seen.extend(dataset.loaded)
        assert sum(len(labels) for _, labels in batches) == len(range(rank, 5, 2))
    assert sorted(seen) == [0, 1, 2, 3, 4]


class _WorkerSettings(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> tuple[int, int, bool]:
        ignored = {signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        return torch.get_num_threads(), cv2.getNumThreads(), ignored == {signal.SIG_IGN}


def test_worker_init_limits_threads_and_ignores_stop_signals() -> None:
    loader = DataLoader(
        _WorkerSettings(), batch_size=None, num_workers=1, worker_init_fn=init_worker
    )
    # cv2.setNumThreads(0) (sequential) reads back as 1 thread.
    assert tuple(next(iter(loader))) == (1, 1, True)


def test_sample_seeds_are_distinct_within_an_epoch() -> None:
    sampler = ResumableSampler(5000, seed=11)
    seeds = np.array([seed for _, seed in sampler])
    assert len(np.unique(seeds)) == 5000


def test_workers_do_not_deadlock_after_the_parent_used_opencv_threads() -> None:
    # Resizing OpenCV's pool in a forked child after the parent used it hangs forever
    # (opencv 5.0); init_worker must avoid that. The timeout turns a hang into a failure.
    image = np.zeros((1500, 1500, 3), np.uint8)
    for _ in range(3):
        cv2.resize(image, (700, 700))
    loader = DataLoader(
        _WorkerSettings(), batch_size=None, num_workers=2, worker_init_fn=init_worker, timeout=60
    )
    assert len(list(loader)) == 1


def test_repeated_augmentation_deals_each_sample_to_consecutive_ranks_with_its_own_seeds():
    size, repeats, world = 10, 3, 2
    samplers = [
        ResumableSampler(size, seed=1, rank=r, world_size=world, repeats=repeats) for r in range(2)
    ]
    per_rank = [list(s) for s in samplers]
    assert [len(items) for items in per_rank] == [5, 5]  # ceil(size / world) each, as without
    # interleaved back, the stream is the permutation with each index three times in a row
    stream = [item for pair in zip(*per_rank, strict=True) for item in pair]
    indices = [index for index, _ in stream]
    assert indices[0:3] == [indices[0]] * 3 and indices[3:6] == [indices[3]] * 3
    # the repeats of one image get different augmentation seeds
    assert len({seed for _, seed in stream[0:3]}) == 3
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        ResumableSampler(size, repeats=0)
