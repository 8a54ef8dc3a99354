"""Throughput of the classification input pipelines on generated data (nothing is downloaded).

Measures images per second (per CPU second of this process where marked, which other processes
on a shared machine disturb far less than wall time, and which is the rate one worker core
gives) of
- ImageNet training samples from the same ImageNet-sized JPEG files, decode included, through
  resdet's pipeline (crop first, uint8 out; normalisation and lighting happen on the device),
  resdet's pipeline before that (resize the whole image, crop, normalise in float on the CPU),
  torchvision.transforms.v2 on ``decode_jpeg`` tensors as torchvision's reference scripts use it
  (RandomResizedCrop, flip, float, normalise; also stopped at uint8, resdet's split), and the
  classic PIL path (``transforms.RandomResizedCrop`` ... ``ToTensor``, ``Normalize``), timed in
  alternating rounds, with the median ratio of resdet's rate to each;
- ImageFolder test samples (centre crop, ten-crop), training samples with ``data.decode=gpu``
  (what the workers still do then: read the bytes and the header, draw the view) and training
  samples through a DataLoader with worker processes;
- CIFAR-10 training samples (pad-crop-flip, mean subtraction) from batches in the real format;
- JPEG decoding alone with cv2.imdecode and torchvision.io.decode_jpeg.

Usage: python tools/bench_cls_loader.py [--cifar-images 10000] [--jpegs 200] [--workers 2]
    [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision.transforms as classic
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.io import decode_jpeg, read_file
from torchvision.transforms import v2

from resdet.data import cls_transforms as T
from resdet.data.cifar import Cifar10
from resdet.data.folder import ImageFolderDataset
from resdet.data.loader import init_worker
from resdet.data.options import ClsAugment, ClsViews


def write_cifar(root: Path, num_images: int) -> None:
    """Random images in cifar-10-batches-py/ (5 training batches, a test batch, the meta file)."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    per_batch = num_images // 5
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {
            "data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, size=per_batch).tolist(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, 2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f, 2)


def write_jpegs(root: Path, count: int, classes: int = 4) -> list[Path]:
    """``count`` 500x375 JPEGs of about 100 KB, the size of a typical ImageNet training photo.

    (The ILSVRC2012 training archive is about 138 GB for 1,281,167 images: ~110 KB each.)
    """
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        noise = rng.integers(0, 256, size=(375, 500, 3)).astype(np.uint8)
        path = root / "train" / f"c{i % classes}" / f"{i}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.blur(noise, (3, 3)), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def rate(
    count: int,
    work: Callable[[], object],
    repeats: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Best items per second of ``repeats`` runs of ``work()``, which handles ``count`` items.

    The best run is the one least disturbed by other processes on a shared machine; with
    ``clock=time.process_time`` single-threaded work is timed in this process's CPU seconds,
    which other processes disturb far less than wall time.
    """
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        work()
        best = min(best, clock() - start)
    return count / best


def single_process(dataset: Dataset) -> float:
    """Samples per CPU second of ``dataset[(index, seed)]`` over the whole dataset, here."""
    return rate(
        len(dataset),
        lambda: [dataset[(i, i)] for i in range(len(dataset))],
        clock=time.process_time,
    )


def with_loader(dataset: Dataset, workers: int, batch_size: int, epochs: int = 3) -> float:
    """Samples per wall second through a DataLoader, over ``epochs`` passes.

    Several passes amortise the start of the worker processes, as a long run does.
    """
    keys = [(i % len(dataset), i) for i in range(epochs * len(dataset))]
    loader = DataLoader(
        dataset, batch_size, sampler=keys, num_workers=workers, worker_init_fn=init_worker
    )
    return rate(len(keys), lambda: list(loader))


def decode_rates(paths: list[Path]) -> tuple[float, float]:
    """Images per CPU second of (cv2.imdecode + BGR->RGB, torchvision decode_jpeg + HWC copy).

    Both decode bytes already in memory to what the pipeline needs: a contiguous uint8 RGB
    ``[H, W, 3]`` array.
    """
    blobs = [p.read_bytes() for p in paths]
    arrays = [np.frombuffer(b, np.uint8) for b in blobs]
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]

    def with_cv2() -> None:
        for a in arrays:
            cv2.cvtColor(cv2.imdecode(a, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def with_torchvision() -> None:
        for t in tensors:
            decode_jpeg(t).permute(1, 2, 0).contiguous().numpy()

    return (
        rate(len(blobs), with_cv2, repeats=3, clock=time.process_time),
        rate(len(blobs), with_torchvision, repeats=3, clock=time.process_time),
    )


def former_resdet_sample(path: Path, rng: np.random.Generator) -> torch.Tensor:
    """resdet's training sample before the crop-first uint8 pipeline: decoded to BGR and
    converted, the whole image resized to the drawn shorter side (cv2.INTER_AREA shrinking),
    cropped, flipped, lighting added and normalised in float32."""
    bgr = cv2.imdecode(
        np.fromfile(path, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    )
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    new_h, new_w = T.short_side_shape(*image.shape[:2], int(rng.integers(256, 481)))
    shrinking = new_h < image.shape[0]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    h, w = image.shape[:2]
    top, left = int(rng.integers(0, h - 223)), int(rng.integers(0, w - 223))
    view = image[top : top + 224, left : left + 224]
    view = view[:, ::-1] if rng.random() < 0.5 else view
    unit = view.astype(np.float32) * np.float32(1 / 255) + T.lighting_shift(rng)
    mean, std = np.float32(T.IMAGENET_MEAN), np.float32(T.IMAGENET_STD)
    return T.to_chw_tensor((unit - mean) / std)


def training_pipelines(folder: Path) -> dict[str, Callable[[], object]]:
    """Each pipeline as a function producing one training sample of every file in ``folder``."""
    resdet = ImageFolderDataset(folder, train=True)
    paths = [resdet.path(i) for i in range(len(resdet))]
    normalize = [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD),
    ]
    v2_uint8 = v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()])
    v2_full = v2.Compose([*v2_uint8.transforms, *normalize])
    pil = classic.Compose(
        [
            classic.RandomResizedCrop(224),
            classic.RandomHorizontalFlip(),
            classic.ToTensor(),
            classic.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD),
        ]
    )
    return {
        "resdet (crop first, uint8; normalised on the device)": lambda: [
            resdet[(i, i)] for i in range(len(resdet))
        ],
        "resdet before (resize, crop, float on the CPU)": lambda: [
            former_resdet_sample(p, np.random.default_rng(i)) for i, p in enumerate(paths)
        ],
        "torchvision v2, decode_jpeg, float + normalize": lambda: [
            v2_full(decode_jpeg(read_file(str(p)))) for p in paths
        ],
        "torchvision v2, decode_jpeg, uint8": lambda: [
            v2_uint8(decode_jpeg(read_file(str(p)))) for p in paths
        ],
        "classic PIL (torchvision.transforms)": lambda: [
            pil(Image.open(p).convert("RGB")) for p in paths
        ],
    }


def compare_training(folder: Path, rounds: int) -> list[tuple[str, float, float]]:
    """``(name, median img/s per CPU s, median ratio of resdet's rate to it)`` per pipeline,
    timed in ``rounds`` rounds that run every pipeline once each, in turn (A B C A B C)."""
    pipelines = training_pipelines(folder)
    count = len(ImageFolderDataset(folder, train=True))
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(rounds):
        for name, work in pipelines.items():
            rates[name].append(rate(count, work, clock=time.process_time))
    ours = rates[next(iter(pipelines))]
    return [
        (
            name,
            statistics.median(values),
            statistics.median(a / b for a, b in zip(ours, values, strict=True)),
        )
        for name, values in rates.items()
    ]


def augmentation_pipelines(folder: Path, cifar: Path) -> dict[str, Callable[[], object]]:
    """resdet's training samples without and with ``data.augment`` (each a function producing
    one sample of every file), and torchvision v2's TrivialAugment pipeline for reference."""
    tv_views = ClsViews(train_crop="random_resized", lighting_std=0)
    sets = {
        "paper views (scale 256-480, crop 224, lighting)": ImageFolderDataset(folder, train=True),
        "random-resized crop 224, flip": ImageFolderDataset(folder, train=True, views=tv_views),
    }
    for name, augment in (
        ("  + TrivialAugmentWide", ClsAugment(policy="trivialaugment")),
        ("  + RandAugment (2 ops, magnitude 9)", ClsAugment(policy="randaugment")),
        ("  + TrivialAugmentWide + erasing 0.1", ClsAugment("trivialaugment", random_erasing=0.1)),
    ):
        sets[name] = ImageFolderDataset(folder, train=True, views=tv_views)
        sets[name].use_augment(augment)
    plain = next(iter(sets.values()))
    paths = [plain.path(i) for i in range(len(plain))]
    reference = v2.Compose(
        [
            v2.RandomResizedCrop(224, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.TrivialAugmentWide(),
        ]
    )
    small = Cifar10(cifar, "train", augment=True)
    small_ta = Cifar10(cifar, "train", augment=True)
    small_ta.use_augment(ClsAugment(policy="trivialaugment"))
    pipelines: dict[str, Callable[[], object]] = {
        name: (lambda d=d: [d[(i, i)] for i in range(len(d))]) for name, d in sets.items()
    }
    pipelines["torchvision v2 RandomResizedCrop, flip, TrivialAugmentWide (uint8)"] = lambda: [
        reference(decode_jpeg(read_file(str(p)))) for p in paths
    ]
    # as many CIFAR samples as JPEGs, so that every row's rate is per sample
    for name, d in (("CIFAR-10 pad-crop-flip", small), ("CIFAR-10 + TrivialAugmentWide", small_ta)):
        pipelines[name] = lambda d=d: [d[(i, i)] for i in range(len(paths))]
    return pipelines


def compare_augmentation(folder: Path, cifar: Path, rounds: int) -> list[tuple[str, float, float]]:
    """``(name, median img/s per CPU s, median ratio of its time to the first pipeline's)``,
    timed in alternating rounds; CIFAR rows are relative to plain CIFAR."""
    pipelines = augmentation_pipelines(folder, cifar)
    count = len(ImageFolderDataset(folder, train=True))
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(rounds):
        for name, work in pipelines.items():
            rates[name].append(rate(count, work, clock=time.process_time))
    names = list(pipelines)
    rows = []
    for name, values in rates.items():
        base = rates[names[-2]] if name.startswith("CIFAR") else rates[names[0]]
        cost = statistics.median(b / v for b, v in zip(base, values, strict=True))
        rows.append((name, statistics.median(values), cost))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar-images", type=int, default=10_000)
    parser.add_argument("--jpegs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--augment-only", action="store_true", help="only the data.augment cost comparison"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    if args.augment_only:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            write_cifar(root / "cifar", args.cifar_images)
            write_jpegs(root / "jpegs", args.jpegs)
            rows = compare_augmentation(root / "jpegs" / "train", root / "cifar", args.rounds)
        print_augmentation(rows, args.rounds)
        return
    # Other processes on the machine slow every wall-clock figure: print how busy it was.
    load = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cifar(root / "cifar", args.cifar_images)
        cifar = Cifar10(root / "cifar", "train", augment=True)
        results.append(("CIFAR-10 train, 1 process (per CPU s)", single_process(cifar)))
        results.append(
            (f"CIFAR-10 train, {args.workers} workers", with_loader(cifar, args.workers, 128))
        )

        paths = write_jpegs(root / "jpegs", args.jpegs)
        cv2_rate, tv_rate = decode_rates(paths)
        results.append(("decode 500x375 JPEG, cv2.imdecode (per CPU s)", cv2_rate))
        results.append(("decode 500x375 JPEG, torchvision (per CPU s)", tv_rate))
        folder = root / "jpegs" / "train"
        training = compare_training(folder, args.rounds)
        train = ImageFolderDataset(folder, train=True)
        on_device = ImageFolderDataset(folder, train=True, decode="gpu")
        results.append(
            (
                "ImageFolder train, data.decode=gpu, worker side (per CPU s)",
                single_process(on_device),
            )
        )
        results.append(
            (
                "ImageFolder test centre crop, 1 process (per CPU s)",
                single_process(ImageFolderDataset(folder, train=False)),
            )
        )
        results.append(
            (
                "ImageFolder test ten-crop, 1 process (per CPU s)",
                single_process(
                    ImageFolderDataset(folder, train=False, views=ClsViews(ten_crop=True))
                ),
            )
        )
        results.append(
            (f"ImageFolder train, {args.workers} workers", with_loader(train, args.workers, 32))
        )
    print(f"load average at the start: {load:.1f} on {os.cpu_count()} cores")
    print(f"ImageNet training sample of a 500x375 JPEG, decode included ({args.rounds} rounds):")
    width = max(len(name) for name, _, _ in training)
    print(f"  {'pipeline':<{width}}  img/s per core  resdet's rate / its")
    for name, value, ratio in training:
        print(f"  {name:<{width}}  {value:14.0f}  {ratio:18.2f}x")
    width = max(len(name) for name, _ in results)
    for name, value in results:
        print(f"{name:<{width}}  {value:10.0f} img/s")


def print_augmentation(rows: list[tuple[str, float, float]], rounds: int) -> None:
    print(f"data.augment's cost, one training sample per file, decode included ({rounds} rounds):")
    width = max(len(name) for name, _, _ in rows)
    print(f"  {'pipeline':<{width}}  img/s per core  time / the plain one")
    for name, value, cost in rows:
        print(f"  {name:<{width}}  {value:14.0f}  {cost:19.2f}x")


if __name__ == "__main__":
    main()
