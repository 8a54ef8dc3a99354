"""Training throughput of resdet's Trainer against a bare PyTorch loop, and of the train loader.

Both loops train the same network (``Classifier(create_model(--model))``, CIFAR ResNet-20 by
default) from the same initial weights, with the same SGD optimizer, batch size, AMP and
channels-last settings, on CIFAR-10 batches in the real on-disk format (random pixels written to
a temporary folder, read by ``resdet.data.cifar.Cifar10`` with the paper's augmentation). The bare
loop reads them with a plain shuffled DataLoader, the Trainer with ``TrainLoader``. The two
alternate ``--repeats`` times so that a busy machine slows both alike; each run's first
``--warmup`` iterations are not timed. The Trainer's figure comes from its own ``metrics.jsonl``
(mean seconds per iteration of the log periods after the warm-up).

Usage: python tools/bench_train_cls.py [--iters 30] [--warmup 10] [--batch 128] [--workers 0]
       [--repeats 3] [--amp off|bf16|fp16] [--no-channels-last] [--device auto] [--threads 0]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_cls_loader import write_cifar  # tools/ is on sys.path when this file is run
from torch import nn
from torch.utils.data import DataLoader

from resdet import create_model
from resdet.data.cifar import Cifar10
from resdet.data.loader import TrainLoader, init_worker, prepare_batch
from resdet.engine import StepSchedule, Trainer, build_sgd, init_distributed
from resdet.engine.evaluate import autocast
from resdet.models.classifier import Classifier


def bare_loop(
    model: nn.Module, dataset: Cifar10, args: argparse.Namespace, device: torch.device
) -> float:
    """Images per second of a plain PyTorch training loop after ``args.warmup`` iterations."""
    optimizer = build_sgd(model, lr=0.1)
    loader = DataLoader(
        dataset,
        args.batch,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        worker_init_fn=init_worker,
        pin_memory=device.type == "cuda",
    )
    model.train()
    batches = iter(loader)
    for step in range(args.warmup + args.iters):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        images, labels = prepare_batch(next(batches), device, channels_last=args.channels_last)
        with autocast(device, args.amp):
            loss = model(images, labels)["loss_cls"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    loss.item()  # waits for the device
    return args.iters * args.batch / (time.perf_counter() - start)


def engine_loop(
    model: nn.Module,
    dataset: Cifar10,
    args: argparse.Namespace,
    device: torch.device,
    out_dir: Path,
    seed: int,
) -> float:
    """Images per second of ``Trainer.fit`` over the log periods after the warm-up."""
    trainer = Trainer(
        model,
        build_sgd(model, lr=0.1),
        StepSchedule(0.1, [10**9]),
        TrainLoader(
            dataset,
            batch_size=args.batch,
            seed=seed,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
        ),
        max_iters=args.warmup + args.iters,
        out_dir=out_dir,
        device=device,
        amp=args.amp,
        channels_last=args.channels_last,
        log_period=args.warmup,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines
        trainer.fit()
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    # Every log period after the first (the warm-up) has args.warmup iterations.
    timed = [r["time"] for r in lines if r["type"] == "train" and r["iter"] > args.warmup]
    return args.batch / statistics.mean(timed)


def loader_rate(dataset: Cifar10, args: argparse.Namespace, batches: int) -> float:
    """Images per second of ``TrainLoader`` alone (after its first batch), over ``batches``."""
    stream = TrainLoader(dataset, batch_size=args.batch, seed=0, num_workers=args.workers).batches()
    next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    rate = batches * args.batch / (time.perf_counter() - start)
    stream.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--iters", type=int, default=30, help="timed iterations per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations per run")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=10_000, help="generated CIFAR images")
    parser.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.iters % args.warmup:
        parser.error("--iters must be a multiple of --warmup (the Trainer logs every --warmup)")
    device = init_distributed(args.device)
    load = os.getloadavg()[0]
    torch.manual_seed(0)
    initial = Classifier(create_model(args.model))
    bare_model = copy.deepcopy(initial).to(device)
    if args.channels_last:
        bare_model = bare_model.to(memory_format=torch.channels_last)
    engine_model = copy.deepcopy(initial)
    bare, engine = [], []
    with tempfile.TemporaryDirectory() as tmp:
        write_cifar(Path(tmp) / "cifar", args.images)
        dataset = Cifar10(Path(tmp) / "cifar", "train", augment=True)
        for repeat in range(args.repeats):
            bare.append(bare_loop(bare_model, dataset, args, device))
            out_dir = Path(tmp) / f"run{repeat}"
            engine.append(engine_loop(engine_model, dataset, args, device, out_dir, repeat))
            print(f"repeat {repeat}: bare {bare[-1]:8.1f} img/s   Trainer {engine[-1]:8.1f} img/s")
        data_only = loader_rate(dataset, args, batches=args.iters)

    print(
        f"\n{args.model}, batch {args.batch}, amp {args.amp}, channels_last "
        f"{args.channels_last}, {args.workers} workers, device {device}, "
        f"{torch.get_num_threads()} threads; load average {load:.1f} on {os.cpu_count()} cores"
    )
    for name, values in (("bare PyTorch loop", bare), ("resdet Trainer", engine)):
        print(f"{name:<18} best {max(values):8.1f} img/s   median {statistics.median(values):8.1f}")
    print(
        f"Trainer / bare: best {max(engine) / max(bare):.3f}, "
        f"median {statistics.median(engine) / statistics.median(bare):.3f}"
    )
    print(f"TrainLoader alone: {data_only:8.1f} img/s")


if __name__ == "__main__":
    main()
