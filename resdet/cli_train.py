"""``resdet train-cls`` and ``resdet train-det``: pick a recipe, apply options, run it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from resdet.cli_common import console, fail, print_report, run_entry
from resdet.experiments.recipes import cls_recipe, det_recipe, recipe_file

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Experiment YAML, or a packaged recipe by name, e.g. "
        "detectron2/faster_rcnn_R_50_FPN_1x (default: the data set's packaged recipe).",
    ),
]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Data set folder.")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Run folder (default: runs/<name>).")]
ItersOpt = Annotated[int | None, typer.Option("--iters", help="Total optimizer steps.")]
EpochsOpt = Annotated[
    int | None, typer.Option("--epochs", help="Passes over the data (replaces --iters).")
]
BatchOpt = Annotated[
    int | None, typer.Option("--batch-size", help="Images per step, all processes together.")
]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Base learning rate.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda.")]
AmpOpt = Annotated[
    bool | None,
    typer.Option("--amp/--no-amp", help="bf16 autocast, or fp32; default: the recipe's (auto)."),
]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="Data loader processes.")]
ResumeOpt = Annotated[
    Path | None, typer.Option("--resume", help="Checkpoint (last.pt) to continue.")
]
StrictOpt = Annotated[
    bool,
    typer.Option("--strict", help="Stop at any data problem instead of dropping and counting it."),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Start afresh in an --out folder that holds a run: its files are moved aside into "
        "OUT/replaced-<time>/ (nothing is deleted).",
    ),
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override any config key: --set optim.lr=0.05")
]


def common_overrides(
    *,
    data_dir: Path | None,
    iters: int | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    device: str | None,
    amp: bool | None,
    workers: int | None,
    strict: bool,
) -> list[str]:
    """``key=value`` overrides for the options shared by both training commands."""
    overrides = ["data.strict=true"] if strict else []
    if data_dir is not None:
        overrides.append(f"data.root={data_dir}")
    if iters is not None:
        overrides += [f"train.iters={iters}", "train.epochs=0"]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    if batch_size is not None:
        overrides.append(f"data.batch_size={batch_size}")
    if lr is not None:
        overrides.append(f"optim.lr={lr}")
    if device is not None:
        overrides.append(f"train.device={device}")
    if amp is not None:
        overrides.append(f"train.amp={'bf16' if amp else 'fp32'}")
    if workers is not None:
        overrides.append(f"data.workers={workers}")
    return overrides


def check_fresh_or_resumed(resume: Path | None, overwrite: bool) -> None:
    """``--overwrite`` starts a run afresh, ``--resume`` continues one: not both."""
    if overwrite and resume is not None:
        raise fail("--overwrite starts a new run and --resume continues one: choose one")


def load_run_config(
    cls: type, config: Path | None, overrides: list[str], resume: Path | None
) -> tuple[Any, Path | None]:
    """The experiment config, and the run folder of ``resume``.

    A resumed run continues with the configuration saved in its checkpoint; options and
    ``--set`` still apply on top (to extend ``--iters``, say).
    """
    from resdet.config import ConfigError, load_config
    from resdet.engine.checkpoint import read_checkpoint_meta

    try:
        if resume is None:
            return load_config(cls, config, overrides), None
        saved = read_checkpoint_meta(resume)["config"]
        return load_config(cls, config, overrides, start=saved), resume.parent
    except (ConfigError, ValueError, FileNotFoundError) as error:
        raise fail(str(error)) from None


def train_cls(
    dataset: Annotated[
        str, typer.Argument(help="cifar10, imagenet, digits, folder:PATH (`resdet datasets`).")
    ],
    depth: Annotated[
        int | None, typer.Option("--depth", help="Network depth, e.g. 56 or 101.")
    ] = None,
    plain: Annotated[bool, typer.Option("--plain", help="The plain net (no shortcuts).")] = False,
    shortcut: Annotated[str | None, typer.Option("--shortcut", help="A, B or C.")] = None,
    register: Annotated[
        bool, typer.Option("--register", help="Add the final weights to the weight store.")
    ] = False,
    download: Annotated[
        bool,
        typer.Option(
            "--download", help="cifar10: fetch the batches with torchvision first (online)."
        ),
    ] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    out: OutOpt = None,
    iters: ItersOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    device: DeviceOpt = None,
    amp: AmpOpt = None,
    workers: WorkersOpt = None,
    resume: ResumeOpt = None,
    strict: StrictOpt = False,
    overwrite: OverwriteOpt = False,
    set_: SetOpt = None,
) -> None:
    """Train a classifier with the paper's recipe (CIFAR-10 section 4.2, ImageNet section 3.4)."""
    from resdet.experiments.classification import train_classifier
    from resdet.experiments.configs import ClsExperiment

    check_fresh_or_resumed(resume, overwrite)
    family = "cifar_" if dataset in ("cifar10", "digits") else ""
    net = f"{'plain' if plain else 'resnet'}{depth}" if depth is not None else None
    overrides = [f"data.dataset={dataset}"]
    try:
        config = recipe_file(config, "cls")
        if config is None and resume is None:
            config = cls_recipe(dataset, net)
    except ValueError as error:
        raise fail(str(error)) from None
    if net is not None:
        overrides.append(f"model.name={family}{net}")
    elif plain:
        raise fail("--plain needs --depth (e.g. --depth 34 --plain)")
    if shortcut is not None:
        overrides.append(f"model.shortcut={shortcut.upper()}")
    if register:
        overrides.append("register=true")
    if download:
        overrides.append("data.download=true")
    overrides += common_overrides(
        data_dir=data_dir,
        iters=iters,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        device=device,
        amp=amp,
        workers=workers,
        strict=strict,
    )
    cfg, resumed_dir = load_run_config(ClsExperiment, config, overrides + (set_ or []), resume)
    out_dir = (
        out
        or resumed_dir
        or Path("runs") / f"{dataset.replace(':', '_').replace('/', '_')}-{cfg.model.name}"
    )

    def job() -> None:
        from resdet.evaluation.tables import classification_table

        result = train_classifier(cfg, out_dir, resume=resume, overwrite=overwrite)
        console.print(classification_table(result.metrics, title=f"{cfg.model.name} on {dataset}"))
        console.print(f"run folder: {out_dir}")
        if result.weights_tag:
            console.print(f"weights stored as {cfg.model.name}:{result.weights_tag}")

    run_entry(job)


def train_det(
    dataset: Annotated[
        str,
        typer.Argument(
            help="shapes, coco, voc0712, voc2007, voc2012, coco-format:PATH (`resdet datasets`)."
        ),
    ],
    backbone: Annotated[str | None, typer.Option("--backbone", help="e.g. resnet101.")] = None,
    head: Annotated[str | None, typer.Option("--head", help="c4 (the paper's) or fpn.")] = None,
    task: Annotated[str, typer.Option("--task", help="det (boxes) or segm (Mask R-CNN).")] = "det",
    backbone_weights: Annotated[
        str | None,
        typer.Option(
            "--backbone-weights",
            help="auto (the store's default, else the best ImageNet top-1, else the newest), "
            "a weight-store TAG, a .safetensors PATH, or none (random initialisation).",
        ),
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    out: OutOpt = None,
    iters: ItersOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    device: DeviceOpt = None,
    amp: AmpOpt = None,
    workers: WorkersOpt = None,
    resume: ResumeOpt = None,
    strict: StrictOpt = False,
    overwrite: OverwriteOpt = False,
    set_: SetOpt = None,
) -> None:
    """Train Faster R-CNN (or Mask R-CNN with --task segm), then print the COCO or VOC table."""
    from resdet.experiments.configs import DetExperiment
    from resdet.experiments.detection import train_detector

    check_fresh_or_resumed(resume, overwrite)
    if task not in ("det", "segm"):
        raise fail(f"--task must be det or segm, got {task!r}")
    try:
        config = recipe_file(config, "det")
        if config is None and resume is None:
            config = det_recipe(dataset, backbone, head, masks=task == "segm")
    except ValueError as error:
        raise fail(str(error)) from None
    overrides = [f"data.dataset={dataset}"]
    if task == "segm":
        overrides.append("model.masks=true")
    if backbone is not None:
        overrides.append(f"model.backbone={backbone}")
    if head is not None:
        overrides.append(f"model.head={head}")
    if backbone_weights is not None:
        value = "null" if backbone_weights.lower() == "none" else backbone_weights
        overrides.append(f"model.backbone_weights={value}")
    overrides += common_overrides(
        data_dir=data_dir,
        iters=iters,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        device=device,
        amp=amp,
        workers=workers,
        strict=strict,
    )
    cfg, resumed_dir = load_run_config(DetExperiment, config, overrides + (set_ or []), resume)
    name = dataset.split(":")[0]
    kind = "mask" if cfg.model.masks else "faster"
    out_dir = (
        out or resumed_dir or Path("runs") / f"{name}-{kind}-{cfg.model.backbone}-{cfg.model.head}"
    )

    def job() -> None:
        result = train_detector(cfg, out_dir, resume=resume, overwrite=overwrite)
        print_report(result.report, title=f"{cfg.model.backbone}-{cfg.model.head} on {dataset}")
        console.print(f"run folder: {out_dir}")

    run_entry(job)
