"""Time the README's quickstart, `resdet train-det shapes`, from an empty folder to the COCO table.

Runs the real CLI in a subprocess (data generation, training, evaluation) in a fresh working
folder, then reads the run's eval.json and checks it against the targets of the detection and
segmentation issues:

    python tools/bench_quickstart.py                # boxes: AP50 >= 0.90 in under 5 minutes
    python tools/bench_quickstart.py --task segm    # masks: mask AP50 >= 0.85 in under 8 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {  # task: (iou type checked, AP50 at least, seconds at most)
    "det": ("bbox", 0.90, 300),
    "segm": ("segm", 0.85, 480),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TARGETS), default="det")
    parser.add_argument("extra", nargs="*", help="more train-det options, e.g. --iters 300")
    args = parser.parse_args()
    iou_type, min_ap50, max_seconds = TARGETS[args.task]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RESDET_HOME": str(Path(tmp) / "home")}
        command = [
            sys.executable,
            "-m",
            "resdet",
            "train-det",
            "shapes",
            "--task",
            args.task,
            "--out",
            "run",
            *args.extra,
        ]
        start = time.perf_counter()
        subprocess.run(command, cwd=tmp, env=env, check=True)
        seconds = time.perf_counter() - start
        report = json.loads((Path(tmp) / "run" / "eval.json").read_text())
    print(
        f"\n`resdet train-det shapes --task {args.task}` from an empty folder: {seconds:.0f} s wall"
    )
    for name, stats in report.items():
        print(f"  {name}: AP {stats['AP']:.3f}  AP50 {stats['AP50']:.3f}  AP75 {stats['AP75']:.3f}")
    ap50 = report[iou_type]["AP50"]
    ok = ap50 >= min_ap50 and seconds <= max_seconds
    print(
        f"target: {iou_type} AP50 >= {min_ap50} in <= {max_seconds} s -> "
        f"{'met' if ok else 'NOT met'} ({ap50:.3f} in {seconds:.0f} s)"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
