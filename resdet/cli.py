"""The ``resdet`` command line. Each command parses options, calls one library function, prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

import resdet
from resdet import cli_eval, cli_export, cli_train
from resdet.cli_common import console, fail, show_library_messages

app = typer.Typer(
    help="ResNet backbones, classifiers and detectors (He et al. 2016) as a toolkit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
weights_app = typer.Typer(
    help="The local weight store ($RESDET_HOME/weights).", no_args_is_help=True
)
app.add_typer(weights_app, name="weights")
app.command("train-cls")(cli_train.train_cls)
app.command("train-det")(cli_train.train_det)
app.command("predict")(cli_eval.predict)
app.command("eval")(cli_eval.evaluate)
app.command("plot")(cli_eval.plot)
app.command("export")(cli_export.export)


def version_callback(value: bool) -> None:
    """``--version``: print the version and stop before any command runs."""
    if value:
        console.print(f"resdet {resdet.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """resdet: train and evaluate ResNet classifiers and Faster/Mask R-CNN detectors."""
    show_library_messages()


@app.command()
def models(
    pattern: Annotated[str, typer.Argument(help="Shell-style wildcard, e.g. 'cifar_*'.")] = "*",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List registered models with parameters, multiply-adds and stored weights."""
    infos = [resdet.model_info(name) for name in resdet.list_models(pattern)]
    if not infos:
        raise fail(f"no model matches {pattern!r}; try `resdet models` for all of them")
    if as_json:
        rows = [
            {
                "name": i.name,
                "family": i.family,
                "depth": i.depth,
                "block": i.block,
                "residual": i.residual,
                "shortcut": i.shortcut,
                "params": i.params,
                "macs": i.macs,
                "input_size": i.input_size,
                "weights": list(i.weights),
            }
            for i in infos
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="resdet models (MACs: conv + fc at 224px, CIFAR nets at 32px)")
    for column in ("name", "family", "depth", "block", "shortcut", "params", "GMACs", "weights"):
        table.add_column(column, no_wrap=True, justify="right" if column[0] in "dpG" else "left")
    for i in infos:
        table.add_row(
            i.name,
            i.family,
            str(i.depth),
            i.block,
            i.shortcut,
            f"{i.params / 1e6:.2f}M",
            f"{i.macs / 1e9:.3f}",
            ", ".join(i.weights) or "-",
        )
    console.print(table)


@app.command()
def datasets(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the data sets train-cls and train-det accept, and where each is read from."""
    from resdet.data.catalog import CLS_DATASETS, DET_DATASETS, spelling

    rows = [
        {
            "name": spelling(registry, name),
            "command": command,
            "default_root": registry.get(name).default_root,
            "summary": registry.get(name).summary,
        }
        for command, registry in (("train-cls", CLS_DATASETS), ("train-det", DET_DATASETS))
        for name in registry
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="resdet data sets (--data-dir or data.root replaces the folder)")
    for column in ("name", "command", "folder", "what"):
        table.add_column(column, no_wrap=column != "what")
    for row in rows:
        table.add_row(row["name"], row["command"], row["default_root"] or "-", row["summary"])
    console.print(table)


@weights_app.command("list")
def weights_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the weight store's entries."""
    from resdet.models.weight_defaults import default_tag
    from resdet.models.weights import list_weights, store_root

    entries = list_weights()
    defaults = {e.arch: default_tag(e.arch) for e in entries}
    if as_json:
        rows = [{**entry_json(e), "default": defaults[e.arch] == e.tag} for e in entries]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"weights in {store_root()} (* = the default that `auto` takes)")
    for column in ("arch", "tag", "layout", "classes", "dataset", "metrics", "source", "date"):
        table.add_column(column)
    for e in entries:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in e.metrics.items())
        layout = f"{e.variant.shortcut}, stride in {'1x1' if e.variant.stride_in_1x1 else '3x3'}"
        tag = f"{e.tag} *" if defaults[e.arch] == e.tag else e.tag
        table.add_row(e.arch, tag, layout, str(e.num_classes), e.dataset, metrics, e.source, e.date)
    console.print(table)


@weights_app.command("default")
def weights_default(
    arch: Annotated[str, typer.Argument(help="Registered name, e.g. resnet50.")],
    tag: Annotated[
        str | None, typer.Argument(help="The ImageNet entry `auto` should take; omit to clear.")
    ] = None,
) -> None:
    """Mark the entry that `backbone_weights: auto` (train-det's default) starts from."""
    from resdet.models.weight_defaults import set_default

    try:
        set_default(arch, tag)
    except (ValueError, FileNotFoundError) as error:
        raise fail(str(error)) from None
    console.print(f"default for {arch}: {tag}" if tag else f"default for {arch} cleared")


def entry_json(entry: object) -> dict:
    """A weight entry as JSON-ready data (its manifest plus tag and path)."""
    import dataclasses

    data = dataclasses.asdict(entry)  # type: ignore[call-overload]
    data["path"] = str(data["path"])
    return data


@weights_app.command("import")
def weights_import(
    path: Annotated[
        Path, typer.Argument(help="A torchvision ResNet (.pth) or detectron2 (.pth, .pkl) file.")
    ],
    arch: Annotated[
        str | None, typer.Option(help="Registered name, e.g. resnet50 (torchvision format).")
    ] = None,
    tag: Annotated[str | None, typer.Option(help="Name of the entry in the store.")] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="torchvision or detectron2.")
    ] = "torchvision",
    dataset: Annotated[
        str, typer.Option(help="Data set the weights were trained on (detectors: its classes).")
    ] = "",
    out: Annotated[
        Path | None,
        typer.Option(help="detectron2 detectors: the resdet checkpoint to write (FILE.pt)."),
    ] = None,
    class_names: Annotated[
        str | None, typer.Option(help="detectron2 detectors: comma-separated class names.")
    ] = None,
    input_format: Annotated[
        str, typer.Option(help="detectron2: INPUT.FORMAT its conv1 was trained on, BGR or RGB.")
    ] = "BGR",
    pixel_std: Annotated[
        str, typer.Option(help="detectron2: MODEL.PIXEL_STD in that channel order.")
    ] = "1,1,1",
    stride_in_1x1: Annotated[
        bool,
        typer.Option(
            "--stride-in-1x1/--stride-in-3x3",
            help="detectron2: RESNETS.STRIDE_IN_1X1 (MSRA models: 1x1; torchvision's: 3x3).",
        ),
    ] = True,
    force: Annotated[bool, typer.Option(help="Overwrite an existing entry or file.")] = False,
) -> None:
    """Convert a torchvision ResNet or a detectron2 backbone into the weight store, or a
    detectron2 Faster / Mask R-CNN into a resdet checkpoint."""
    from resdet.experiments.detectron2_import import import_detectron2
    from resdet.models.detectron2_io import InputConvention
    from resdet.models.torchvision_io import import_torchvision

    try:
        if fmt == "torchvision":
            if arch is None or tag is None:
                raise ValueError("--format torchvision needs --arch and --tag")
            entry = import_torchvision(
                path, arch, tag=tag, force=force, dataset=dataset or "imagenet"
            )
            console.print(f"imported {path} as {entry.arch}:{entry.tag} -> {entry.path}")
            return
        if fmt != "detectron2":
            raise ValueError(f"--format {fmt!r} is not supported; use torchvision or detectron2")
        try:
            stds = tuple(float(v) for v in pixel_std.split(","))
        except ValueError:
            raise ValueError(
                f"--pixel-std {pixel_std!r} should be three numbers, e.g. 58.395,57.12,57.375"
            ) from None
        done = import_detectron2(
            path,
            tag=tag,
            out=out,
            dataset=dataset or "coco",
            class_names=class_names.split(",") if class_names else None,
            convention=InputConvention(input_format.upper(), stds),  # type: ignore[arg-type]
            stride_in_1x1=stride_in_1x1,
            force=force,
        )
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as error:
        raise fail(str(error)) from None
    if done.entry is not None:
        console.print(f"imported {path} as {done.entry.arch}:{done.entry.tag} -> {done.entry.path}")
    else:
        layout = done.layout
        kind = "Mask R-CNN" if layout.masks else "Faster R-CNN"
        console.print(
            f"imported {path} as a {layout.arch}-{layout.head} {kind} ({layout.num_classes} "
            f"classes, detectron2's conventions) -> {done.checkpoint}"
        )


@weights_app.command("add")
def weights_add(
    checkpoint: Annotated[Path, typer.Argument(help="A classification run's last.pt or best.pt.")],
    tag: Annotated[
        str | None, typer.Option(help="Name of the entry; default the run folder's name.")
    ] = None,
    weights: Annotated[
        str, typer.Option(help="auto (EMA if the run kept it, else trained), ema or raw.")
    ] = "auto",
    force: Annotated[bool, typer.Option(help="Overwrite an existing entry.")] = False,
) -> None:
    """Add a classification checkpoint's network to the weight store."""
    from resdet.experiments.classification import register_checkpoint

    try:
        added, used = register_checkpoint(
            checkpoint,
            tag=tag,
            weights=weights,  # type: ignore[arg-type]
            force=force,
        )
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as error:
        raise fail(str(error)) from None
    console.print(f"added the {used} weights of {checkpoint} as {added}")


@weights_app.command("remove")
def weights_remove(
    arch: Annotated[str, typer.Argument(help="Registered name, e.g. resnet50.")],
    tag: Annotated[str, typer.Argument(help="The entry to delete (see `resdet weights list`).")],
) -> None:
    """Delete a store entry (its .safetensors file and manifest)."""
    from resdet.models.weights import remove_weights

    try:
        remove_weights(arch, tag)
    except (ValueError, KeyError, FileNotFoundError) as error:
        raise fail(str(error)) from None
    console.print(f"removed {arch}:{tag}")


@weights_app.command("export")
def weights_export(
    arch: Annotated[str, typer.Argument(help="Registered name, e.g. resnet50.")],
    path: Annotated[Path, typer.Argument(help="Where to write the torchvision state dict.")],
    tag: Annotated[str, typer.Option(help="Entry in the store (or a .safetensors path).")],
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a store entry as a state dict that torchvision's ResNet loads."""
    from resdet.models.torchvision_io import export_torchvision

    try:
        export_torchvision(arch, tag, path, force=force)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as error:
        raise fail(str(error)) from None
    console.print(f"exported {arch}:{tag} -> {path}")
