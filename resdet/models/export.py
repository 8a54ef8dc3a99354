"""Classifiers and detectors as ONNX or TorchScript files, and the check of such a file.

Both formats come from tracing: ``torch.jit.trace`` for TorchScript and the TorchScript-based
``torch.onnx.export`` (``dynamo=False``) for ONNX. torchvision's detection models are written
for that exporter (their ``torchvision._is_tracing()`` branches keep the image size and the
number of detections variable in the traced graph), and resdet's own detector parts follow
them while traced: torchvision's RoIAlign kernel instead of the CPU gather
(``resdet.models.roi_align``), detectron2's mask pasting without a Python loop
(``resdet.models.mask_paste``). A traced graph holds one path through the Python code, so
`check_export` runs the file on images of other sizes, and on one where nothing is found,
against the PyTorch model.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from resdet.files import write_atomically

__all__ = [
    "ONNX_OPSET",
    "TOLERANCES",
    "ClassifierExport",
    "DetectorExport",
    "ExportCheck",
    "check_export",
    "export_module",
    "load_exported",
    "read_metadata",
]

Format = Literal["onnx", "torchscript"]
# ONNX's RoiAlign has the half-pixel mode (detectron2's aligned RoIAlign) from opset 16 on.
ONNX_OPSET = 17
# Largest differences the check accepts between the file and the PyTorch model, in the
# outputs' units: logits, pixels, probabilities; labels must be equal. Logits are unbounded:
# theirs is relative to the largest logit's magnitude where that exceeds 1 (float32 cannot
# resolve 1e-4 at a logit of 1000, where one rounding step is 6e-5).
TOLERANCES = {"logits": 1e-4, "boxes": 1e-3, "scores": 1e-4, "labels": 0.0, "masks": 1e-3}
RELATIVE = ("logits",)
METADATA_FILE = "resdet.json"  # inside a TorchScript archive
EXTRA_HINT = 'pip install "resdet[export]"'
# torch 2.10+ deprecates torch.jit in favour of torch.export; TorchScript files still load in
# every torch release, so the format asked for is written without four warnings per file.
_JIT_DEPRECATION = r".*`torch\.jit\.\w+` is deprecated"


class ClassifierExport(nn.Module):
    """The form a classifier is exported in: float [B, 3, H, W] RGB in [0, 1] -> logits [B, K].

    The input normalisation the network was trained with is inside: ``(x - mean) / std``, where
    ``mean`` and ``std`` broadcast to [3, H, W] (ImageNet's per-channel statistics, or CIFAR's
    per-pixel mean image over 255 with ``std`` 1).
    """

    outputs = ("logits",)

    def __init__(self, net: nn.Module, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())

    def forward(self, images: Tensor) -> Tensor:
        return self.net((images - self.mean) / self.std)


class DetectorExport(nn.Module):
    """The form a detector is exported in: one float [3, H, W] RGB image in [0, 1], any size ->
    ``boxes`` [N, 4] xyxy in its pixels, ``labels`` [N] int64 (1..K), ``scores`` [N] and, for
    Mask R-CNN, ``masks`` [N, 1, H, W] probabilities. Normalising and resizing are inside the
    detector, as in PyTorch."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        masks = detector.roi_heads.has_mask()
        self.outputs = ("boxes", "labels", "scores", *(("masks",) if masks else ()))

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        found = self.detector([image])[0]
        return tuple(found[name] for name in self.outputs)


def export_module(
    module: nn.Module,
    example: Tensor,
    path: Path,
    fmt: Format,
    *,
    input_name: str,
    dynamic_axes: Mapping[int, str],
    metadata: Mapping[str, Any],
) -> None:
    """Trace ``module`` (eval mode, on CPU) on ``example`` and write it to ``path`` atomically.

    ``dynamic_axes`` names the input axes that stay variable (ONNX; a traced TorchScript module
    keeps what the code computes from shapes). Output axis 0 (the batch, or the number of
    detections) is always variable. ``metadata`` (JSON-ready values) goes into the ONNX
    model's ``metadata_props``, one entry per key, JSON-encoded unless a string, and into a
    TorchScript archive as ``resdet.json``.
    """
    outputs = list(module.outputs)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer's warnings about Python values are what torchvision's detection code
        # relies on; the check that follows an export is what shows the graph generalises.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.onnx")
        # torchvision's traced branches build tensors from traced sizes on purpose
        warnings.filterwarnings("ignore", message="To copy construct from a tensor")
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION)
        if fmt == "torchscript":
            traced = torch.jit.trace(module, (example,), check_trace=False)
            extra = {METADATA_FILE: json.dumps(metadata)}
            write_atomically(path, lambda tmp: torch.jit.save(traced, str(tmp), extra))
            return
        onnx = _require("onnx")
        axes = {input_name: dict(dynamic_axes), **{name: {0: f"{name}_0"} for name in outputs}}

        def write(tmp: Path) -> None:
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=[input_name],
                output_names=outputs,
                dynamic_axes=axes,
            )
            model = onnx.load(str(tmp))
            for key, value in metadata.items():
                entry = model.metadata_props.add()
                entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
            onnx.save(model, str(tmp))

        write_atomically(path, write)


def read_metadata(path: Path, fmt: Format) -> dict[str, Any]:
    """The metadata `export_module` wrote into ``path`` (values decoded from JSON)."""
    if fmt == "torchscript":
        # The archive is a zip; reading the one entry loads none of its code.
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}")]
            if not names:
                raise ValueError(f"{path} holds no {METADATA_FILE}: it was not written by resdet")
            return json.loads(archive.read(names[0]))
    onnx = _require("onnx")
    props = onnx.load(str(path), load_external_data=False).metadata_props
    return {entry.key: _json_or_text(entry.value) for entry in props}


def load_exported(path: Path, fmt: Format) -> Callable[[Tensor], tuple[Tensor, ...]]:
    """A function running the exported file on CPU, with torch's number of threads:
    onnxruntime for ONNX, ``torch.jit.load`` for TorchScript (a file resdet wrote: TorchScript
    archives hold code)."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_JIT_DEPRECATION)
            module = torch.jit.load(str(path), map_location="cpu")

        def run_torchscript(x: Tensor) -> tuple[Tensor, ...]:
            with torch.no_grad():
                out = module(x)
            return out if isinstance(out, tuple) else (out,)

        return run_torchscript
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    # torch's thread count (resdet's thread plan), and no spinning between runs: onnxruntime's
    # idle threads would otherwise keep the cores busy for whatever the process runs next.
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run_onnx(x: Tensor) -> tuple[Tensor, ...]:
        return tuple(torch.from_numpy(o) for o in session.run(None, {name: x.numpy()}))

    return run_onnx


@dataclass(frozen=True)
class ExportCheck:
    """The exported file against the PyTorch model on one input.

    ``max_diff``: the largest absolute difference per output; ``allowed``: the largest the
    check accepts (`TOLERANCES`, scaled for logits); ``found``: the number of detections
    (detectors), else None.
    """

    input_shape: tuple[int, ...]
    max_diff: dict[str, float]
    allowed: dict[str, float]
    found: int | None

    def within_tolerance(self) -> bool:
        return all(diff <= self.allowed[name] for name, diff in self.max_diff.items())

    def describe(self) -> str:
        size = "x".join(str(s) for s in self.input_shape)
        found = "" if self.found is None else f", {self.found} detections"
        diffs = ", ".join(
            f"{name} {diff:.2g}"
            + (
                f" (limit {self.allowed[name]:.2g})"
                if self.allowed[name] != TOLERANCES[name]
                else ""
            )
            for name, diff in self.max_diff.items()
        )
        return f"input {size}{found}: max |difference| {diffs or '-'}"


def check_export(
    module: nn.Module, run: Callable[[Tensor], tuple[Tensor, ...]], inputs: Sequence[Tensor]
) -> list[ExportCheck]:
    """Run ``module`` (PyTorch) and ``run`` (the exported file) on each input and compare.

    Outputs must have the same shapes (the same number of detections) and, for detectors, the
    detections must come in the same order; a difference in shape raises ValueError.
    """
    checks = []
    for x in inputs:
        with torch.no_grad():
            expected = module(x)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = run(x)
        diffs, allowed = {}, {}
        for name, want, have in zip(module.outputs, expected, got, strict=True):
            if tuple(want.shape) != tuple(have.shape):
                raise ValueError(
                    f"on an input of shape {list(x.shape)} the exported model's {name} has shape "
                    f"{list(have.shape)}, PyTorch's {list(want.shape)}"
                )
            empty = want.numel() == 0
            diffs[name] = 0.0 if empty else float((want.double() - have.double()).abs().max())
            scale = 1.0 if empty or name not in RELATIVE else max(1.0, float(want.abs().max()))
            allowed[name] = TOLERANCES[name] * scale
        found = len(expected[0]) if isinstance(module, DetectorExport) else None
        checks.append(ExportCheck(tuple(x.shape), diffs, allowed, found))
    return checks


def _require(package: str) -> Any:
    """Import an optional dependency of export, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise ImportError(
            f"the {package} package is not installed: ONNX export and its check need onnx and "
            f"onnxruntime ({EXTRA_HINT})"
        ) from None


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
