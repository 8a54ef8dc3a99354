"""``resdet export``: a checkpoint as an ONNX or TorchScript file, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resdet.cli_common import console, fail, run_entry


def export(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="A run's last.pt or best.pt (task read from it).")
    ],
    fmt: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="File to write; default beside the checkpoint (.onnx)."),
    ] = None,
    image_size: Annotated[
        tuple[int, int] | None,
        typer.Option(
            "--image-size",
            help="H W to trace at; default the test crop (classifiers) or a 4:3 image at the "
            "test size (detectors).",
        ),
    ] = None,
    dynamic: Annotated[
        bool | None,
        typer.Option(
            "--dynamic/--static",
            help="Variable image size (default for detectors; classifiers always take any "
            "batch); --static fixes it.",
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option("--check/--no-check", help="Compare the file with the PyTorch model."),
    ] = True,
    weights: Annotated[
        str, typer.Option("--weights", help="auto (EMA if kept, else trained), ema or raw.")
    ] = "auto",
    check_images: Annotated[
        list[Path] | None,
        typer.Option("--check-image", help="Also check a detector on this image (repeatable)."),
    ] = None,
) -> None:
    """Export a classifier or detector to ONNX or TorchScript, with its class names and
    preprocessing in the file's metadata, and check it against PyTorch."""

    def job() -> None:
        from resdet.experiments.export import export_checkpoint

        try:
            result = export_checkpoint(
                checkpoint,
                fmt,
                out=out,
                image_size=image_size,
                dynamic=dynamic,
                check=check,
                weights=weights,  # type: ignore[arg-type]
                check_images=tuple(check_images or ()),
            )
        except ImportError as error:
            raise fail(str(error)) from None
        size = result.path.stat().st_size / 2**20
        console.print(
            f"exported {result.metadata['model']} ({result.weights} weights) -> {result.path} "
            f"({size:.1f} MiB)",
            highlight=False,
        )
        for each in result.checks:
            console.print(f"  check, {each.describe()}", highlight=False)
        if not check:
            console.print("  not checked (--no-check)")

    run_entry(job)
