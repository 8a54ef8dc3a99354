"""Samplers that make every training sample reproducible and every epoch resumable.

A sample's augmentation depends only on ``(run seed, epoch, index)``: the sampler yields
``(index, sample_seed)`` and datasets seed their random augmentation with ``sample_seed``
(docs/design.md#samples-seeds-and-resuming). So skipping the first batches of an epoch without
loading them, changing the number of workers or resuming from a checkpoint never changes what a
later sample looks like.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

# Stream ids keep the seeds derived from one run seed independent of each other.
ORDER_STREAM = 0
SAMPLE_STREAM = 1
LOADER_STREAM = 2

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def split_key(key: int | tuple[int, int], length: int) -> tuple[int, int | None]:
    """A dataset key as ``(index in [0, length), seed or None)``.

    Keys are described in docs/design.md#samples-seeds-and-resuming.

    ``key`` is an int index (negative counts from the end) or an ``(index, seed)`` pair, as
    ``ResumableSampler`` yields them.
    """
    if isinstance(key, tuple | list):
        if len(key) != 2:
            raise TypeError(f"a dataset key is an int or an (index, seed) pair, got {key!r}")
        index, seed = int(key[0]), int(key[1])
    else:
        index, seed = int(key), None
    if not -length <= index < length:
        raise IndexError(f"index {index} is out of range for a dataset of {length} samples")
    return index % length, seed


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``seed`` and the integer ``keys`` with ``np.random.SeedSequence``.

    Used for per-epoch streams (shuffle order, DataLoader worker seeds).
    """
    state = np.random.SeedSequence(seed, spawn_key=keys).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def _splitmix64(counter: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser applied elementwise to uint64 values (wrapping arithmetic).

    It is a bijection, so distinct indices get distinct seeds within an epoch, and it costs
    nanoseconds per sample where a SeedSequence per sample costs ~12 us (15 s per ImageNet epoch).
    """
    z = counter.astype(np.uint64)
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return z ^ (z >> np.uint64(31))


def sample_seeds(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """Per-sample seeds for dataset ``indices`` [N] in ``epoch``: int64 [N], each in [0, 2**63).

    The epoch key comes from ``np.random.SeedSequence(seed, spawn_key=(1, epoch))``; each index
    is mixed into it with splitmix64, so a seed depends on (run seed, epoch, index) only.
    """
    key = np.uint64(derive_seed(seed, SAMPLE_STREAM, epoch))
    with np.errstate(over="ignore"):
        counter = key + np.asarray(indices, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        mixed = _splitmix64(counter)
    return (mixed >> np.uint64(1)).astype(np.int64)


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, sample_seed)`` for this rank's share of a dataset of ``size`` samples.

    Sharding follows ``torch.utils.data.DistributedSampler``: one permutation per epoch shared by
    all ranks, padded by wrapping around to a multiple of ``world_size`` (or truncated when
    ``drop_last``), rank ``r`` taking positions ``r, r + world_size, ...``; so every rank yields
    ``len(self)`` samples. The order depends on ``(seed, epoch)``, never on the rank count.

    ``repeats`` > 1 is repeated augmentation (Hoffer et al. 2020; torchvision's ``RASampler``):
    each sample of the permutation appears ``repeats`` times in a row, so consecutive ranks get
    the same image, each repeat with its own seed (its augmentation differs), and each rank
    still yields ``ceil(size / world_size)`` samples per epoch. torchvision rounds that down to
    a multiple of 256 / world_size, which would leave nothing of a small set.
    """

    def __init__(
        self,
        size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        repeats: int = 1,
    ) -> None:
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1 (1: no repeated augmentation), got {repeats}")
        if size <= 0:
            raise ValueError(f"ResumableSampler needs a non-empty dataset, got size={size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        if drop_last and size < world_size:
            raise ValueError(
                f"drop_last with {size} samples on {world_size} ranks leaves nothing to sample"
            )
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.repeats = repeats
        self.epoch = 0
        if drop_last:
            self.num_samples = size // world_size
        else:
            self.num_samples = math.ceil(size / world_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the order and sample seeds of ``epoch`` (0-based)."""
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        """This rank's dataset indices for the current epoch: int64 [len(self)]."""
        return self._draws() % self.size

    def _draws(self) -> np.ndarray:
        """This rank's draws: dataset index + repeat number x size, int64 [len(self)] (a
        repeat's number keys its own sample seed)."""
        if self.shuffle:
            rng = np.random.default_rng(derive_seed(self.seed, ORDER_STREAM, self.epoch))
            order = rng.permutation(self.size)
        else:
            order = np.arange(self.size)
        if self.repeats > 1:
            repeat = np.tile(np.arange(self.repeats), self.size)
            order = np.repeat(order, self.repeats) + repeat * self.size
        total = math.ceil(len(order) / self.world_size) * self.world_size
        if self.drop_last and self.repeats == 1:
            total = self.num_samples * self.world_size
        if total > len(order):
            order = np.resize(order, total)  # repeats from the start, like DistributedSampler
        mine = order[self.rank : total : self.world_size]
        return mine[: self.num_samples].astype(np.int64)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        draws = self._draws()
        seeds = sample_seeds(self.seed, self.epoch, draws)
        return zip((draws % self.size).tolist(), seeds.tolist(), strict=True)

    def __len__(self) -> int:
        return self.num_samples


def aspect_ratio_groups(aspect_ratios: Sequence[float]) -> list[int]:
    """Group id per image from its width/height ratio: 0 when w/h <= 1 (portrait or square), else 1.

    The two groups of torchvision's detection reference (``group_by_aspect_ratio`` with k=0),
    except that square images join the portrait group as in detectron2's
    ``AspectRatioGroupedDataset``.
    """
    return [0 if ratio <= 1.0 else 1 for ratio in aspect_ratios]


class GroupedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, sample_seed)`` whose images all share one aspect-ratio group.

    Mirrors torchvision's reference ``GroupedBatchSampler``: samples are buffered per group in
    the sampler's order and a batch is emitted when its group's buffer is full; at the end of the
    epoch the fullest leftover buffers are completed with repeats of their group's samples, so
    every epoch has exactly ``len(sampler) // batch_size`` batches. Everything follows from the
    sampler's order, so an epoch's batches are deterministic.
    """

    def __init__(
        self, sampler: ResumableSampler, group_ids: Sequence[int], batch_size: int
    ) -> None:
        if len(group_ids) != sampler.size:
            raise ValueError(
                f"got {len(group_ids)} group ids for a dataset of {sampler.size} samples"
            )
        if len(sampler) < batch_size:
            raise ValueError(
                f"each rank sees {len(sampler)} samples per epoch, fewer than batch_size "
                f"{batch_size}: lower the batch size or use fewer ranks"
            )
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        buffers: dict[int, list[tuple[int, int]]] = {}
        seen: dict[int, list[tuple[int, int]]] = {}
        emitted = 0
        for item in self.sampler:
            group = self.group_ids[item[0]]
            buffers.setdefault(group, []).append(item)
            seen.setdefault(group, []).append(item)
            if len(buffers[group]) == self.batch_size:
                yield buffers.pop(group)
                emitted += 1
        missing = len(self) - emitted
        fullest_first = sorted(buffers.items(), key=lambda kv: len(kv[1]), reverse=True)
        for group, buffer in fullest_first[:missing]:
            repeats = math.ceil(self.batch_size / len(seen[group]))
            filler = (seen[group] * repeats)[: self.batch_size - len(buffer)]
            yield buffer + filler

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size
