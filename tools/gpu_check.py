"""The GPU paths of resdet proven and measured in one run, ending with one JSON line of results.

Run under torchrun (``tools/gpu_check.sh`` does), so that a process group exists even with one
process: NCCL on CUDA, gloo on CPU, and DDP really wraps the models. On one GPU it measures
- ResNet-50 bf16 channels-last training through resdet's Trainer against a bare torchvision
  loop (torchvision's resnet50, SGD, autocast, DDP) on the same batches, with and without
  ``train.compile``, and with ``train.deterministic``: img/s and the ratio resdet / bare;
- the image-folder loader's img/s per worker process on this machine's cores;
- ``data.decode=gpu``: nvjpeg decode plus the views made on the GPU, img/s;
- Faster R-CNN R50-FPN and Mask R-CNN R50-FPN training steps against torchvision's models of
  the same layout (img/s and ratio), and resdet's R50-C4 (torchvision has no C4 model).

``--smoke`` runs every section on tiny sizes and skips the compiled runs (minutes of CPU
compiling), so the test suite runs this script on CPU and it cannot rot.

    torchrun --standalone --nproc_per_node 1 tools/gpu_check.py [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.distributed as dist
import torchvision
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

from resdet.data.device_input import collate_cls
from resdet.data.folder import ImageFolderDataset
from resdet.data.loader import init_worker
from resdet.engine import distributed
from resdet.engine.optim import build_sgd
from resdet.engine.schedule import CosineSchedule
from resdet.engine.trainer import Trainer
from resdet.models.api import create_model
from resdet.models.classifier import Classifier
from resdet.models.detector import build_detector
from resdet.models.rcnn_settings import RoIHeadSettings


@dataclass(frozen=True)
class Sizes:
    """How big each section runs: the real check, or the smoke test's tiny version."""

    cls_arch: str  # resdet and torchvision name of the classifier
    cls_batch: int
    cls_crop: int
    cls_iters: int  # timed iterations (as many again warm up first)
    rounds: int  # resdet / bare rounds, alternated
    det_backbone: str
    det_size: tuple[int, int]  # (H, W) of the detection images, already at the model's size
    det_iters: int
    det_rois: int  # sampled RoIs per image for the box head (detectron2 and torchvision: 512)
    jpegs: int
    workers: int


FULL = Sizes("resnet50", 128, 224, 30, 2, "resnet50", (800, 1216), 10, 512, 512, 8)
SMOKE = Sizes("resnet18", 2, 32, 2, 1, "resnet18", (128, 160), 1, 16, 8, 1)


class CycledBatches:
    """A ``TrainLoader`` stand-in serving the same few in-memory batches forever, so that the
    Trainer and the bare loop see identical inputs and no data loading."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.items = batches
        self.batches_per_epoch = len(batches)

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.items[start % len(self.items)]
            start += 1

    def epoch_of(self, batch: int) -> int:
        return batch // self.batches_per_epoch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cls_batches(sizes: Sizes, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Four normalised float32 batches in (pinned, on CUDA) host memory, with labels."""
    generator = torch.Generator().manual_seed(0)
    shape = (sizes.cls_batch, 3, sizes.cls_crop, sizes.cls_crop)
    batches = []
    for _ in range(4):
        images = torch.randn(shape, generator=generator)
        labels = torch.randint(0, 1000, (sizes.cls_batch,), generator=generator)
        if device.type == "cuda":
            images, labels = images.pin_memory(), labels.pin_memory()
        batches.append((images, labels))
    return batches


def resdet_cls_rate(
    sizes: Sizes, device: torch.device, out: Path, compile_model: bool, deterministic: bool
) -> tuple[float, bool]:
    """img/s of the Trainer's last log period, and whether it trained a DDP module."""
    distributed.configure_backends(device, deterministic=deterministic, fixed_shapes=True)
    torch.manual_seed(0)
    net = create_model(sizes.cls_arch, num_classes=1000, stride_in_1x1=False)
    model = Classifier(net)
    iters = sizes.cls_iters
    trainer = Trainer(
        model,
        build_sgd(model, lr=0.1, momentum=0.9, weight_decay=1e-4),
        CosineSchedule(0.1, max_iters=2 * iters),
        CycledBatches(cls_batches(sizes, device)),  # type: ignore[arg-type]
        max_iters=2 * iters,
        out_dir=out,
        device=device,
        amp="bf16" if device.type == "cuda" else "off",
        channels_last=True,
        log_period=iters,
        static_graph=True,
        compile_model=compile_model,
    )
    trainer.fit()
    distributed.configure_backends(device, deterministic=False, fixed_shapes=True)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return last["img_per_s"], isinstance(trainer.train_model, DistributedDataParallel)


def bare_cls_rate(sizes: Sizes, device: torch.device, compile_model: bool) -> float:
    """img/s of a plain torchvision training loop (as its reference scripts train) on the same
    batches: the speed resdet's engine must not fall short of."""
    distributed.configure_backends(device, deterministic=False, fixed_shapes=True)
    torch.manual_seed(0)
    net: nn.Module = torchvision.models.get_model(sizes.cls_arch, num_classes=1000)
    net = net.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    if dist.is_initialized():
        net = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if compile_model:
        net = torch.compile(net)
    batches = cls_batches(sizes, device)
    bf16 = device.type == "cuda"

    def step(i: int) -> torch.Tensor:
        images, labels = batches[i % len(batches)]
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(net(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for i in range(sizes.cls_iters):
        step(i)
    synchronize(device)
    start = time.perf_counter()
    for i in range(sizes.cls_iters):
        loss = step(i)
    loss.item()
    return sizes.cls_iters * sizes.cls_batch / (time.perf_counter() - start)


def check_classification(sizes: Sizes, device: torch.device, out: Path, smoke: bool) -> dict:
    results: dict[str, Any] = {"arch": sizes.cls_arch, "batch": sizes.cls_batch}
    ratios, ours, bare, ddp = [], [], [], False
    for round_ in range(sizes.rounds):  # resdet, bare, resdet, bare
        rate, ddp = resdet_cls_rate(sizes, device, out / f"cls-{round_}", False, False)
        ours.append(rate)
        bare.append(bare_cls_rate(sizes, device, False))
        ratios.append(ours[-1] / bare[-1])
    results.update(
        resdet_img_per_s=statistics.median(ours),
        bare_img_per_s=statistics.median(bare),
        ratio=statistics.median(ratios),
        trained_ddp=ddp,
    )
    deterministic, _ = resdet_cls_rate(sizes, device, out / "cls-deterministic", False, True)
    results["deterministic_img_per_s"] = deterministic
    if smoke:
        results["compile"] = "skipped in --smoke"
    else:
        compiled, _ = resdet_cls_rate(sizes, device, out / "cls-compiled", True, False)
        bare_compiled = bare_cls_rate(sizes, device, True)
        results["compile"] = {
            "resdet_img_per_s": compiled,
            "bare_img_per_s": bare_compiled,
            "ratio": compiled / bare_compiled,
        }
    return results


def write_jpegs(root: Path, count: int) -> Path:
    """``count`` 500x375 JPEGs of about 100 KB (an ImageNet training photo) in 4 classes."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"c{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(0, 256, size=(375, 500, 3)).astype(np.uint8)
        cv2.imwrite(
            str(folder / f"{i}.jpg"), cv2.blur(noise, (3, 3)), [cv2.IMWRITE_JPEG_QUALITY, 90]
        )
    return root


def check_loading(sizes: Sizes, device: torch.device, folder: Path) -> dict:
    """The image-folder training pipeline's img/s per worker, and data.decode=gpu's rate."""
    workers = min(sizes.workers, os.cpu_count() or 1)
    dataset = ImageFolderDataset(folder, train=True)
    keys = [(i % len(dataset), i) for i in range(2 * len(dataset))]
    loader = DataLoader(
        dataset,
        batch_size=max(1, len(dataset) // 8),
        sampler=keys,
        num_workers=workers,
        collate_fn=collate_cls,
        worker_init_fn=init_worker,
    )
    start = time.perf_counter()
    for _ in loader:
        pass
    per_worker = len(keys) / (time.perf_counter() - start) / workers

    encoded = ImageFolderDataset(folder, train=True, decode="gpu")
    batch = max(1, len(encoded) // 4)
    batches = [
        collate_cls([encoded[(i, i)] for i in range(start, start + batch)])[0]
        for start in range(0, len(encoded) - batch + 1, batch)
    ]
    batches[0].to_model_input(device, channels_last=True)  # warm-up: nvjpeg handles, kernels
    synchronize(device)
    start = time.perf_counter()
    for encoded_batch in batches:
        images = encoded_batch.to_model_input(device, channels_last=True)
    synchronize(device)
    decoded = len(batches) * batch / (time.perf_counter() - start)
    return {
        "workers": workers,
        "cpu_cores": os.cpu_count(),
        "train_img_per_s_per_worker": per_worker,
        "gpu_decode_img_per_s": decoded,
        "gpu_decode_batch": list(images.shape),
    }


def det_batch(sizes: Sizes, device: torch.device, masks: bool) -> tuple[list, list]:
    """Two float images of ``det_size`` with five boxes each (and masks), on ``device``."""
    generator = torch.Generator().manual_seed(0)
    h, w = sizes.det_size
    images, targets = [], []
    for _ in range(2):
        corners = torch.rand(5, 2, generator=generator) * torch.tensor([w * 0.6, h * 0.6])
        boxes = torch.cat([corners, corners + torch.tensor([w * 0.3, h * 0.3])], dim=1)
        target = {"boxes": boxes, "labels": torch.randint(1, 81, (5,), generator=generator)}
        if masks:
            target["masks"] = torch.zeros(5, h, w, dtype=torch.uint8)
            for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
                target["masks"][k, y0:y1, x0:x1] = 1
        images.append(torch.rand(3, h, w, generator=generator).to(device))
        targets.append({key: value.to(device) for key, value in target.items()})
    return images, targets


def torchvision_detector(sizes: Sizes, masks: bool) -> nn.Module:
    """torchvision's R50-FPN Faster / Mask R-CNN with resdet's defaults: frozen BN, res2 and
    the stem frozen, images kept at their size."""
    backbone = resnet_fpn_backbone(
        backbone_name=sizes.det_backbone,
        weights=None,
        trainable_layers=3,
        norm_layer=FrozenBatchNorm2d,
    )
    kind = MaskRCNN if masks else FasterRCNN
    h, w = sizes.det_size
    return kind(
        backbone,
        num_classes=81,
        min_size=h,
        max_size=max(h, w),
        box_batch_size_per_image=sizes.det_rois,
    )


def det_step_rate(model: nn.Module, sizes: Sizes, device: torch.device, masks: bool) -> float:
    """Training img/s of ``model`` on one fixed two-image batch (bf16 autocast on CUDA)."""
    model = model.to(device).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    images, targets = det_batch(sizes, device, masks)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = sum(value for key, value in model(images, targets).items() if "loss" in key)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(max(1, sizes.det_iters // 2)):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(sizes.det_iters):
        loss = step()
    loss.item()
    return sizes.det_iters * len(images) / (time.perf_counter() - start)


def check_detection(sizes: Sizes, device: torch.device) -> dict:
    h, w = sizes.det_size
    results: dict[str, Any] = {"backbone": sizes.det_backbone, "image": [h, w], "batch": 2}

    def resdet(head: str, masks: bool) -> Callable[[], nn.Module]:
        return lambda: build_detector(
            sizes.det_backbone,
            head=head,  # type: ignore[arg-type]
            num_classes=80,
            masks=masks,
            backbone_weights=None,
            stride_in_1x1=False,
            min_size=h,
            max_size=max(h, w),
            roi_heads=RoIHeadSettings(batch_size_per_image=sizes.det_rois),
        )

    for name, head, masks in (("faster_fpn", "fpn", False), ("mask_fpn", "fpn", True)):
        ours, theirs = [], []
        for _ in range(sizes.rounds):  # alternated
            torch.manual_seed(0)
            ours.append(det_step_rate(resdet(head, masks)(), sizes, device, masks))
            torch.manual_seed(0)
            theirs.append(det_step_rate(torchvision_detector(sizes, masks), sizes, device, masks))
        results[name] = {
            "resdet_img_per_s": statistics.median(ours),
            "torchvision_img_per_s": statistics.median(theirs),
            "ratio": statistics.median(a / b for a, b in zip(ours, theirs, strict=True)),
        }
    torch.manual_seed(0)
    results["faster_c4"] = {
        "resdet_img_per_s": det_step_rate(resdet("c4", False)(), sizes, device, False)
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, no compiling")
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs' files")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else FULL
    device = distributed.init_distributed("cpu" if args.smoke else "cuda")
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "process_group": {
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "world_size": distributed.get_world_size(),
        },
    }
    started = time.perf_counter()
    results["classification"] = check_classification(sizes, device, out, args.smoke)
    results["loading"] = check_loading(sizes, device, write_jpegs(out / "jpegs", sizes.jpegs))
    results["detection"] = check_detection(sizes, device)
    results["seconds"] = round(time.perf_counter() - started, 1)
    if distributed.is_main():
        print(json.dumps({"gpu_check": results}), flush=True)


if __name__ == "__main__":
    distributed.run_and_exit(main)
