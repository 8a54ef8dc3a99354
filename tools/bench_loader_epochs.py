"""Epoch boundaries of the training stream: one persistent DataLoader vs one per epoch.

``TrainLoader.batches`` keeps one DataLoader, so its workers start once and prefetch across
epoch boundaries. Before, each epoch built a new DataLoader: the workers were forked again,
the data set pickled to them again and the pipeline drained and refilled at every boundary. On
generated ImageNet-sized JPEGs in short epochs (many boundaries), this times both streams on
the same files, alternating (A B A B), and prints the median ratio of their wall times.

    python tools/bench_loader_epochs.py [--jpegs 96] [--batch 8] [--epochs 6] [--workers 2]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from resdet.data.folder import ImageFolderDataset
from resdet.data.loader import TrainLoader, init_worker
from resdet.data.samplers import LOADER_STREAM, derive_seed


class PerEpochLoader(TrainLoader):
    """The former stream: a new DataLoader (and new workers) for every epoch."""

    def batches(self, start: int = 0) -> Iterator[Any]:
        epoch, skip = divmod(start, self.batches_per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            generator = torch.Generator()
            generator.manual_seed(derive_seed(self.seed, LOADER_STREAM, epoch))
            yield from DataLoader(
                self.dataset,
                batch_sampler=itertools.islice(self.batch_sampler, skip, None),
                num_workers=self.num_workers,
                worker_init_fn=init_worker,
                generator=generator,
            )
            epoch, skip = epoch + 1, 0


def timed(loader: TrainLoader, batches: int) -> float:
    stream = loader.batches()
    started = time.perf_counter()
    for _ in range(batches):
        next(stream)
    elapsed = time.perf_counter() - started
    stream.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jpegs", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from bench_cls_loader import write_jpegs  # the same generated photos as the loader bench

    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp), args.jpegs)
        dataset = ImageFolderDataset(Path(tmp) / "train", train=True)
        options = {"batch_size": args.batch, "seed": 0, "num_workers": args.workers}
        batches = args.epochs * (args.jpegs // args.batch)
        old, new = [], []
        for _ in range(args.pairs):
            old.append(timed(PerEpochLoader(dataset, **options), batches))
            new.append(timed(TrainLoader(dataset, **options), batches))
    ratios = [n / o for n, o in zip(new, old, strict=True)]
    print(f"{batches} batches of {args.batch} over {args.epochs} epochs, {args.workers} workers")
    print(f"per-epoch DataLoaders: median {statistics.median(old):.2f} s")
    print(f"one persistent DataLoader: median {statistics.median(new):.2f} s")
    print(f"time new/old, median of {args.pairs} pair ratios: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
