"""Data loaders: an endless, exactly resumable training stream and a sharded evaluation loader.

The training stream is indexed by a global batch number ``b``: epoch ``b // batches_per_epoch``,
batch ``b % batches_per_epoch`` of that epoch. Starting at any ``b`` skips the earlier batches of
the epoch as lists of indices, without loading them; per-sample seeds (resdet.data.samplers) make
the skipped-to batches identical to those of an uninterrupted run.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import cv2
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

from resdet.data.device_input import to_model_input
from resdet.data.samplers import (
    LOADER_STREAM,
    GroupedBatchSampler,
    ResumableSampler,
    derive_seed,
)

T = TypeVar("T")


def init_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread, OpenCV sequential, stop signals ignored.

    Workers are parallel already; more threads per worker oversubscribe the cores. OpenCV gets
    0 ("run sequentially"), not 1: resizing its thread pool in a forked child whose parent had
    already used that pool deadlocks (seen with opencv 5.0), while 0 bypasses the pool.
    A terminal's Ctrl-C (and a scheduler's SIGTERM to the process group) reaches every process:
    workers ignore them so the trainer can finish its step and save a checkpoint while the
    workers still serve batches; they end with the trainer's DataLoader.
    """
    torch.set_num_threads(1)
    cv2.setNumThreads(0)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def to_device(batch: T, device: torch.device, non_blocking: bool = False) -> T:
    """``batch`` with every tensor inside (nested lists, tuples, dicts) moved to ``device``.

    Other values (ints such as ``image_id``, strings) are returned unchanged. ``non_blocking``
    overlaps host-to-device copies from pinned memory with compute.
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {key: to_device(value, device, non_blocking) for key, value in batch.items()}
    if isinstance(batch, list):
        return [to_device(value, device, non_blocking) for value in batch]
    if isinstance(batch, tuple):
        moved = (to_device(value, device, non_blocking) for value in batch)
        # A NamedTuple (RawImages) keeps its type, so its meaning survives the move.
        return type(batch)(*moved) if hasattr(batch, "_fields") else tuple(moved)
    return batch


def prepare_batch(
    batch: tuple[Any, Any], device: torch.device, *, channels_last: bool = False
) -> tuple[Any, Any]:
    """``(images, targets)`` moved to ``device`` (asynchronously to CUDA, from pinned memory),
    the images made the model's float input there (``device_input.to_model_input``).

    With ``channels_last`` a 4-D image batch [B,3,H,W] gets the NHWC memory layout; lists of
    detection images keep theirs.
    """
    images, targets = to_device(batch, device, non_blocking=device.type == "cuda")
    return to_model_input(images, device, channels_last), targets


def batch_size_of(images: torch.Tensor | Sequence[torch.Tensor]) -> int:
    """Number of images in a batch: ``images`` is a Tensor [B,3,H,W] or a list of B [3,H,W]."""
    return images.shape[0] if isinstance(images, torch.Tensor) else len(images)


class TrainLoader:
    """Endless stream of training batches ``(images, targets)`` that can start at any batch.

    Args:
        dataset: map-style dataset accepting ``(index, seed)`` keys
            (docs/design.md#samples-seeds-and-resuming).
        batch_size: images per batch on this rank; every batch is full.
        seed: the run seed; shuffle order, sample seeds and worker seeds derive from it.
        num_workers: DataLoader worker processes (0 loads in the main process).
        collate_fn: batch collation (``None``: torch's default collation, for classification;
            detection passes ``resdet.data.detection.collate``).
        group_ids: optional aspect-ratio group per dataset index (``aspect_ratio_groups``);
            batches then hold one group each (``GroupedBatchSampler``).
        rank, world_size: this process's shard (see ``ResumableSampler``).
        pin_memory: page-locked host batches for faster, asynchronous copies to CUDA.
        shuffle: shuffle each epoch (a fixed order is only useful for debugging).
        repeats: repeated augmentation, each sample this many times in a row (ResumableSampler).

    One DataLoader serves the whole stream, so its workers start once and keep prefetching
    across epoch boundaries and while the trainer evaluates; a new epoch only reshuffles the
    indices the main process hands them. Samples depend on their per-sample seeds alone, so a
    stream started at any batch yields the same batches with any number of workers. The
    workers' own RNGs are seeded from ``(seed, first epoch)`` through the DataLoader's
    generator, so the global torch RNG is never consumed by the loader.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        seed: int,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        group_ids: Sequence[int] | None = None,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
        shuffle: bool = True,
        repeats: int = 1,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.pin_memory = pin_memory
        self.sampler = ResumableSampler(
            len(dataset),
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            repeats=repeats,
        )
        if group_ids is None:
            self.batch_sampler: BatchSampler | GroupedBatchSampler = BatchSampler(
                self.sampler, batch_size, drop_last=True
            )
        else:
            self.batch_sampler = GroupedBatchSampler(self.sampler, group_ids, batch_size)
        self.batches_per_epoch = len(self.batch_sampler)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"a dataset of {len(dataset)} samples on {world_size} rank(s) gives each rank "
                f"{len(self.sampler)} samples, less than one batch of {batch_size}: lower the "
                "batch size"
            )

    def epoch_of(self, batch: int) -> int:
        """The epoch (number of completed passes) that global batch number ``batch`` is in."""
        return batch // self.batches_per_epoch

    def batches(self, start: int = 0) -> Iterator[Any]:
        """Batches from global batch number ``start`` on, forever, as the DataLoader yields them.

        Closing the iterator (``close()``) shuts the workers down.
        """
        epoch = start // self.batches_per_epoch
        generator = torch.Generator()
        generator.manual_seed(derive_seed(self.seed, LOADER_STREAM, epoch))
        loader = DataLoader(
            self.dataset,
            batch_sampler=self._index_batches(start),
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
            worker_init_fn=init_worker,
            # Without a generator the DataLoader draws its worker base seed from the global
            # torch RNG, which would make the model's RNG stream depend on where a run started.
            generator=generator,
        )
        yield from loader

    def _index_batches(self, start: int) -> Iterator[list[Any]]:
        """The ``(index, seed)`` batches from global batch ``start`` on: the rest of its epoch
        (earlier batches skipped as index lists, nothing loaded), then every later epoch."""
        epoch, skip = divmod(start, self.batches_per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            yield from itertools.islice(self.batch_sampler, skip, None)
            epoch, skip = epoch + 1, 0


def build_eval_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """A sequential evaluation loader over this rank's shard: indices ``rank, rank + world_size, ...``.

    No index is padded or repeated, so each sample is evaluated exactly once over all ranks and
    evaluators can gather without removing duplicates; ranks may get one batch-item fewer than
    others, which is harmless because inference runs no collective operations. Keys are plain
    ints, so datasets apply no random augmentation. The last batch may be smaller. Workers
    persist between passes, so a run's periodic evaluations start them once.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=range(rank, len(dataset), world_size),
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        worker_init_fn=init_worker,
        persistent_workers=num_workers > 0,
        # Its own generator: starting workers draws a base seed, which from torch's global one
        # would shift the training draws (mixup, stochastic depth) of a resumed run, whose
        # persistent workers start at a different evaluation than the uninterrupted run's.
        generator=torch.Generator().manual_seed(0),
    )
