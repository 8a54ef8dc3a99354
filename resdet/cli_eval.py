"""``resdet eval`` (checkpoints, COCO results files, VOC results files) and ``resdet plot``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from resdet.cli_common import console, fail, print_report, run_entry

MetricOpt = Annotated[
    str | None,
    typer.Option("--metric", help="VOC AP: voc07 (11-point) or voc12 (area); default by year."),
]


def evaluate(
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="A run's last.pt (task read from it).")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Data set folder.")] = None,
    ten_crop: Annotated[bool, typer.Option("--ten-crop", help="Also 10-crop testing.")] = False,
    multi_scale: Annotated[
        bool,
        typer.Option(
            "--multi-scale",
            help="Also fully-convolutional testing at shorter sides 224-640 (paper 3.4).",
        ),
    ] = False,
    annotations: Annotated[
        Path | None, typer.Option("--annotations", help="COCO ground truth JSON.")
    ] = None,
    results: Annotated[Path | None, typer.Option("--results", help="COCO results JSON.")] = None,
    iou_type: Annotated[str, typer.Option("--iou-type", help="bbox or segm.")] = "bbox",
    voc_root: Annotated[Path | None, typer.Option("--voc-root", help="VOCdevkit folder.")] = None,
    year: Annotated[str, typer.Option("--year", help="VOC year.")] = "2007",
    split: Annotated[str, typer.Option("--split", help="VOC image set.")] = "test",
    results_dir: Annotated[
        Path | None, typer.Option("--results-dir", help="Folder of comp4_det_test_<class>.txt.")
    ] = None,
    metric: MetricOpt = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the numbers here.")] = None,
    results_out: Annotated[
        Path | None,
        typer.Option(
            "--results-out",
            help="Save detections: a COCO results JSON; for VOC a folder of comp4 files.",
        ),
    ] = None,
) -> None:
    """Evaluate a checkpoint, a COCO results file or VOC results files, and print the tables."""
    modes = [
        checkpoint is not None,
        annotations is not None or results is not None,
        voc_root is not None,
    ]
    if sum(modes) != 1:
        raise fail(
            "give exactly one of: --checkpoint RUN/last.pt; --annotations GT.json --results "
            "DT.json; --voc-root DEVKIT --results-dir DIR"
        )
    if checkpoint is not None:
        run_entry(
            lambda: _eval_checkpoint(
                checkpoint, data_dir, ten_crop, multi_scale, device, metric, json_out, results_out
            )
        )
    elif voc_root is not None:
        if results_dir is None:
            raise fail("--voc-root needs --results-dir (the comp4_det_test_<class>.txt files)")
        run_entry(lambda: _eval_voc_files(voc_root, year, split, results_dir, metric, json_out))
    else:
        if annotations is None or results is None:
            raise fail("COCO evaluation needs both --annotations GT.json and --results DT.json")
        if iou_type not in ("bbox", "segm"):
            raise fail(f"--iou-type must be bbox or segm, got {iou_type!r}")
        run_entry(lambda: _eval_coco_files(annotations, results, iou_type, json_out))


def _eval_checkpoint(
    checkpoint: Path,
    data_dir: Path | None,
    ten_crop: bool,
    multi_scale: bool,
    device: str,
    metric: str | None,
    json_out: Path | None,
    results_out: Path | None,
) -> None:
    from resdet.engine.checkpoint import read_checkpoint_meta

    meta = read_checkpoint_meta(checkpoint)
    task = meta.get("task")
    if task == "cls":
        from resdet.data.catalog import CLS_DATASETS, find_dataset
        from resdet.evaluation.tables import classification_table
        from resdet.experiments.classification import evaluate_checkpoint

        asked = [
            flag for flag, on in (("--ten-crop", ten_crop), ("--multi-scale", multi_scale)) if on
        ]
        if asked and "views" not in find_dataset(CLS_DATASETS, meta["dataset"])[0].options:
            raise fail(
                f"{' and '.join(asked)}: {meta['dataset']} is tested on its single view; "
                "10-crop and multi-scale testing apply to imagenet and folder:PATH runs"
            )

        metrics = evaluate_checkpoint(
            checkpoint,
            data_root=str(data_dir) if data_dir else None,
            ten_crop=ten_crop,
            multi_scale=multi_scale,
            device=device,
        )
        console.print(classification_table(metrics, title=f"{checkpoint}"))
        _write_json(json_out, metrics)
        return
    if task == "det":
        from resdet.experiments.detection import evaluate_detector_checkpoint

        report = evaluate_detector_checkpoint(
            checkpoint,
            data_root=str(data_dir) if data_dir else None,
            device=device,
            voc_metric=metric,
            results_out=results_out,
        )
        print_report(report)
        _write_json(json_out, report.as_json())
        return
    raise ValueError(f"{checkpoint} has task {task!r}; resdet knows 'cls' and 'det'")


def _eval_coco_files(
    annotations: Path, results: Path, iou_type: str, json_out: Path | None
) -> None:
    from resdet.evaluation.coco import evaluate_coco
    from resdet.evaluation.tables import coco_table, per_class_table

    result = evaluate_coco(annotations, results, iou_type)
    console.print(coco_table(result.stats, title=f"COCO {iou_type} AP, {results.name}"))
    console.print(per_class_table(result.per_class, title=f"per-class {iou_type} AP"))
    _write_json(json_out, {iou_type: {**result.stats, "per_class": result.per_class}})


def _eval_voc_files(
    voc_root: Path,
    year: str,
    split: str,
    results_dir: Path,
    metric: str | None,
    json_out: Path | None,
) -> None:
    from resdet.data.voc import VOC_CLASSES, VocDetection, voc_ground_truth, voc_image_names
    from resdet.evaluation.tables import voc_table
    from resdet.evaluation.voc import evaluate_voc, read_voc_results
    from resdet.experiments.detection import voc_metric

    dataset = VocDetection(voc_root, year, split, train=False)
    names = voc_image_names(dataset)
    ground_truth = {names[i]: objects for i, objects in voc_ground_truth(dataset).items()}
    detections = read_voc_results(results_dir, VOC_CLASSES)
    result = evaluate_voc(detections, ground_truth, VOC_CLASSES, metric=voc_metric(year, metric))
    console.print(voc_table(result))
    _write_json(
        json_out, {"metric": result.metric, "mAP": result.mAP, "per_class": result.per_class}
    )


def _write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(data, indent=2) + "\n")
        console.print(f"wrote {path}")


def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders (with metrics.jsonl).")],
    out: Annotated[Path, typer.Option("--out", help="Figure file, e.g. curves.png.")],
    metric: Annotated[
        str, typer.Option("--metric", help="Error logged in training and eval.")
    ] = "top1_err",
    title: Annotated[str | None, typer.Option("--title", help="Figure title.")] = None,
) -> None:
    """Training error (thin) and test error (bold) against iterations, as the paper's Figs. 4 and 6."""
    from resdet.viz import plot_curves

    try:
        plot_curves(run_dirs, out, metric=metric, title=title)
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from None
    console.print(f"wrote {out}")


def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="A detection run's last.pt.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the drawn images.")] = Path(
        "predictions"
    ),
    score_thresh: Annotated[
        float, typer.Option("--score-thresh", help="Lowest score drawn.")
    ] = 0.5,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Draw a detector's boxes (and masks), labels and scores on images."""

    def job() -> None:
        import cv2

        from resdet.data.detection import read_image
        from resdet.experiments.detection import load_detector, predict_image
        from resdet.viz import draw_detections

        model, class_names = load_detector(checkpoint, device)
        out.mkdir(parents=True, exist_ok=True)
        for path in images:
            rgb = read_image(path)
            found = predict_image(model, rgb, score_thresh)
            names = [class_names[label - 1] for label in found["labels"]]
            drawn = draw_detections(rgb, found["boxes"], names, found["scores"], found.get("masks"))
            target = out / f"{path.stem}_pred.png"
            cv2.imwrite(str(target), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
            console.print(f"{path}: {len(names)} detections -> {target}")

    run_entry(job)
