"""Experiment configs: frozen dataclasses that YAML files and ``--set key=value`` fill in.

Each field's comment gives its unit. Builders in this package turn these into plain arguments
for the models, data sets and trainer, which never see a config object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class OptimConfig:
    """SGD and its learning-rate schedule (iterations are optimizer steps)."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    no_decay_norm: bool = False  # exclude norm layers and biases from weight decay
    schedule: Literal["step", "cosine", "plateau"] = "step"
    steps: tuple[int, ...] = ()  # iterations at which "step" multiplies the lr by gamma
    gamma: float = 0.1
    warmup: Literal["none", "linear", "constant"] = "none"
    warmup_iters: int = 0
    warmup_factor: float = 0.1  # lr multiplier at the start of (or during a constant) warm-up
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


@dataclass(frozen=True)
class ClsModelConfig:
    name: str = "cifar_resnet20"
    shortcut: Literal["A", "B", "C"] | None = None  # None: the model's default
    stride_in_1x1: bool | None = None  # None: the paper's layout (stride on the 1x1)
    zero_init_residual: bool = False
    weights: str | None = None  # weight-store tag or .safetensors path to start from


@dataclass(frozen=True)
class ClsDataConfig:
    dataset: str = "cifar10"  # cifar10 | imagenet | digits | folder:PATH
    root: str | None = None  # data folder; None: datasets/<dataset>
    download: bool = False  # CIFAR-10 only, through torchvision
    val_size: int = 0  # CIFAR-10: hold out this many training images (paper: 5000)
    batch_size: int = 128
    workers: int = 4
    train_scale: tuple[int, int] = (256, 480)  # ImageNet: random shorter side, pixels
    crop_size: int = 224
    test_size: int = 256  # ImageNet: shorter side before the centre or ten crops
    lighting: float = 0.1  # AlexNet PCA lighting alpha std; 0 disables


@dataclass(frozen=True)
class ClsExperiment:
    """A classification run (paper sections 3.4 and 4.2)."""

    task: Literal["cls"] = "cls"
    model: ClsModelConfig = field(default_factory=ClsModelConfig)
    data: ClsDataConfig = field(default_factory=ClsDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    register: bool = False  # add the final weights to the weight store (always for ImageNet)
