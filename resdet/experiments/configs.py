"""Experiment configs: frozen dataclasses that YAML files and ``--set key=value`` fill in.

Each field's comment gives its unit. Builders in this package turn these into plain arguments
for the models, data sets and trainer, which never see a config object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from resdet.data.options import ClsAugment, ClsViews, DecodeDevice, DetSizes
from resdet.models.classifier import BatchMix, ClsLoss
from resdet.models.conventions import RCNNConventions
from resdet.models.rcnn_settings import RoIHeadSettings, RPNSettings


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer and its learning-rate schedule (iterations are optimizer steps)."""

    name: Literal["sgd", "adamw", "lamb"] = "sgd"  # lamb: timm's (pip install "resdet[recipes]")
    lr: float = 0.1
    momentum: float = 0.9  # sgd
    weight_decay: float = 1e-4
    nesterov: bool = False  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adamw, lamb
    eps: float | None = None  # adamw, lamb; None: the optimizer's default
    no_decay_norm: bool = False  # exclude norm layers and biases from weight decay
    norm_weight_decay: float | None = None  # norm layers' decay; None: weight_decay
    bias_weight_decay: float | None = None  # biases' decay; None: weight_decay
    schedule: Literal["step", "cosine", "plateau"] = "step"
    steps: tuple[int, ...] = ()  # iterations at which "step" multiplies the lr by gamma
    gamma: float = 0.1
    warmup: Literal["none", "linear", "constant"] = "none"
    warmup_iters: int = 0
    warmup_factor: float = 0.1  # lr multiplier at the start of (or during a constant) warm-up
    # End the warm-up at the first training log with mean top1_err below this (0: never);
    # warmup_iters is then the longest it lasts (paper 4.2: "until the training error is below
    # 80%")
    warmup_until_train_err: float = 0.0
    plateau_metric: str = "top1_err"  # eval metric watched by "plateau" (lower is better)
    plateau_patience: int = 3  # evaluations without improvement before dividing the lr
    grad_clip: float = 0.0  # max gradient norm; 0 disables clipping


@dataclass(frozen=True)
class TrainConfig:
    """The training loop: length, precision, logging, evaluation and checkpoints."""

    iters: int = 64000  # total optimizer steps
    epochs: int = 0  # when > 0, replaces iters with epochs x batches per epoch
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    channels_last: bool = True
    grad_accum: int = 1
    log_period: int = 20
    eval_period: int = 2000  # 0: evaluate only at the end
    checkpoint_period: int = 2000
    seed: int = 0
    # deterministic GPU kernels (bit-exact resume on GPU, slower); CPU runs are deterministic
    deterministic: bool = False
    # torch.compile the model (slow first steps; a model it cannot compile trains uncompiled)
    compile: bool = False
    # torch's CPU threads; 0: the free cores (engine.threads; OMP_NUM_THREADS is read too)
    threads: int = 0
    # write best.pt at each evaluation that improves this metric (top1_err, bbox/AP, voc/mAP)
    save_best: str | None = None
    # decay of an average of the weights (e.g. 0.9998), evaluated as ema/<metric>; 0: none
    ema: float = 0.0
    tensorboard: bool = False  # scalar curves in RUN/tb/ (pip install "resdet[tensorboard]")


@dataclass(frozen=True)
class ClsModelConfig:
    """The classifier: a registered network and its layout options."""

    name: str = "cifar_resnet20"
    shortcut: Literal["A", "B", "C"] | None = None  # None: the model's default
    stride_in_1x1: bool | None = None  # None: the paper's layout (stride on the 1x1)
    zero_init_residual: bool = False
    weights: str | None = None  # weight-store tag or .safetensors path to start from
    drop_path: float = 0.0  # stochastic depth: the last block's drop rate, linear from 0


@dataclass(frozen=True)
class ClsDataConfig:
    """The classification data set (``resdet datasets``), its loader and augmentation."""

    dataset: str = "cifar10"  # cifar10 | imagenet | digits | folder:PATH
    root: str | None = None  # data folder; None: datasets/<dataset>
    download: bool = False  # CIFAR-10 only, through torchvision
    val_size: int = 0  # CIFAR-10: hold out this many training images (paper: 5000)
    batch_size: int = 128
    workers: int = 4
    # ImageNet and folder sets: training scale range, crop, test size, lighting (pixels)
    views: ClsViews = field(default_factory=ClsViews)
    # ImageNet and folder sets: decode JPEGs in the workers (cpu) or on the training device (gpu)
    decode: DecodeDevice = "cpu"
    # the modern recipes: TrivialAugment / RandAugment / random erasing per sample, mixup and
    # cutmix per batch, and each sample this many times per epoch (repeated augmentation)
    augment: ClsAugment = field(default_factory=ClsAugment)
    mix: BatchMix = field(default_factory=BatchMix)
    repeated_augment: int = 1
    strict: bool = False  # an unreadable image is an error instead of a counted skip


@dataclass(frozen=True)
class ClsExperiment:
    """A classification run (paper sections 3.4 and 4.2)."""

    task: Literal["cls"] = "cls"
    model: ClsModelConfig = field(default_factory=ClsModelConfig)
    data: ClsDataConfig = field(default_factory=ClsDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: ClsLoss = field(default_factory=ClsLoss)  # ce or bce, label smoothing
    register: bool = False  # add the final weights to the weight store (always for ImageNet)

    # Keys of earlier resdet versions, still read (with a warning) from files and checkpoints.
    RENAMED: ClassVar[dict[str, str]] = {
        "data.train_scale": "data.views.train_scale",
        "data.crop_size": "data.views.crop",
        "data.test_size": "data.views.test_size",
        "data.lighting": "data.views.lighting_std",
    }


@dataclass(frozen=True)
class DetModelConfig:
    """Faster / Mask R-CNN on a registry backbone (``resdet.models.detector.build_detector``)."""

    backbone: str = "resnet50"
    head: Literal["c4", "fpn"] = "fpn"
    masks: bool = False  # Mask R-CNN (instance segmentation)
    # "auto": the store's default for the arch (`resdet weights default`), else the ImageNet
    # entry with the best recorded top-1 error, else the newest; a tag; a .safetensors path;
    # null: random initialisation. A run records the entry it took here and its sha256 below.
    backbone_weights: str | None = "auto"
    backbone_sha256: str | None = None  # when set, the weights must still have this digest
    init: str | None = None  # a detection checkpoint to start from (predictor re-initialised
    # when its number of classes differs)
    trainable_stages: int = 3  # 3 freezes the stem and res2 (paper, detectron2)
    frozen_bn: bool = True  # FrozenBatchNorm2d with ImageNet statistics (paper Appendix A)
    shortcut: Literal["A", "B", "C"] | None = None
    stride_in_1x1: bool | None = None
    fpn_channels: int = 256  # the pyramid's width (head fpn; the paper and detectron2: 256)
    rpn: RPNSettings = field(default_factory=RPNSettings)  # anchors, proposals
    roi_heads: RoIHeadSettings = field(default_factory=RoIHeadSettings)  # sampling, widths, test
    # Where torchvision and detectron2 differ (resdet.models.conventions); torchvision's
    # defaults, so its fasterrcnn_resnet50_fpn weights give its detections.
    conventions: RCNNConventions = field(default_factory=RCNNConventions)


@dataclass(frozen=True)
class DetDataConfig:
    """Detection data: ``shapes``, ``coco``, ``voc0712``, ``voc2007``, ``voc2012`` or
    ``coco-format:TRAIN.json`` (then ``val_annotations`` names the evaluation JSON)."""

    dataset: str = "shapes"
    root: str | None = None  # None: datasets/<name> (VOC: datasets/voc/VOCdevkit)
    val_annotations: str | None = None  # coco-format only
    batch_size: int = 16  # images per step, all processes together
    workers: int = 4
    # shorter side(s) and longer-side cap in pixels; keep training images without objects
    sizes: DetSizes = field(default_factory=DetSizes)
    aspect_grouping: bool = True  # batch portrait and landscape images separately
    voc_metric: Literal["voc07", "voc12"] | None = None  # None: voc07 for VOC2007 test
    strict: bool = False  # any dropped or clipped box or unreadable image is an error


@dataclass(frozen=True)
class DetExperiment:
    """A detection run (paper Appendix A; detectron2 and torchvision for the FPN form)."""

    task: Literal["det"] = "det"
    model: DetModelConfig = field(default_factory=DetModelConfig)
    data: DetDataConfig = field(default_factory=DetDataConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=0.02, steps=(60000, 80000), warmup="linear", warmup_iters=1000, warmup_factor=0.001
        )
    )
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(iters=90000, channels_last=False)
    )

    # Keys of earlier resdet versions, still read (with a warning) from files and checkpoints.
    RENAMED: ClassVar[dict[str, str]] = {
        "model.min_size": "data.sizes.min_size",
        "model.max_size": "data.sizes.max_size",
        "data.keep_empty": "data.sizes.keep_empty",
        "model.anchor_sizes": "model.rpn.anchor_sizes",
        "model.aspect_ratios": "model.rpn.aspect_ratios",
        "model.rpn_pre_nms_top_n_train": "model.rpn.pre_nms_top_n_train",
        "model.rpn_pre_nms_top_n_test": "model.rpn.pre_nms_top_n_test",
        "model.rpn_post_nms_top_n_train": "model.rpn.post_nms_top_n_train",
        "model.rpn_post_nms_top_n_test": "model.rpn.post_nms_top_n_test",
        "model.rpn_batch_size_per_image": "model.rpn.batch_size_per_image",
        "model.box_batch_size_per_image": "model.roi_heads.batch_size_per_image",
        "model.box_head_width": "model.roi_heads.box_head_width",
        "model.mask_head_layers": "model.roi_heads.mask_head_layers",
        "model.box_score_thresh": "model.roi_heads.score_thresh",
        "model.box_nms_thresh": "model.roi_heads.nms_thresh",
        "model.box_detections_per_img": "model.roi_heads.detections_per_img",
        "model.roi_sampling_ratio": "model.conventions.roi_sampling_ratio",
        "model.roi_aligned": "model.conventions.roi_aligned",
        "model.anchor_rounding": "model.conventions.anchor_rounding",
        "model.size_divisible": "model.conventions.size_divisible",
        "model.rpn_box_loss_beta": "model.conventions.rpn_box_loss_beta",
        "model.roi_box_loss_beta": "model.conventions.roi_box_loss_beta",
        "model.head_init": "model.conventions.head_init",
        "model.mask_paste": "model.conventions.mask_paste",
    }
