"""resdet: the ResNet paper's backbones, classifiers and detectors as a toolkit."""

import os
from importlib.metadata import PackageNotFoundError, version

# albumentations asks PyPI for a newer release when imported; resdet never touches the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from resdet.models import ModelInfo, create_model, list_models, model_info

try:
    __version__ = version("resdet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["ModelInfo", "__version__", "create_model", "export", "list_models", "model_info"]


def export(checkpoint: str | os.PathLike, fmt: str = "onnx", **options: object) -> object:
    """Export a run's checkpoint (``last.pt``, ``best.pt``) to ONNX or TorchScript, checked
    against PyTorch: ``resdet.experiments.export.export_checkpoint`` (its options:
    ``out``, ``image_size``, ``dynamic``, ``check``, ``weights``, ``check_images``). Returns its
    ``ExportResult`` (file, weights, metadata, checks)."""
    from pathlib import Path

    from resdet.experiments.export import export_checkpoint

    return export_checkpoint(Path(checkpoint), fmt, **options)  # type: ignore[arg-type]
