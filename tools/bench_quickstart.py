"""Time the README's quickstart, `resdet train-det shapes`, from an empty folder to the COCO table.

Runs the real CLI in a subprocess (data generation, training, evaluation) in a fresh working
folder, then reads the run's eval.json: the COCO numbers and the wall seconds of each phase
(start-up is the rest: imports, the thread plan, the run folder). Checks them against the
targets:

    python tools/bench_quickstart.py                # boxes: AP50 >= 0.95, AP >= 0.72, <= 120 s
    python tools/bench_quickstart.py --task segm    # masks: mask AP50 >= 0.85 in <= 8 minutes
    python tools/bench_quickstart.py --busy 2       # beside 2 busy processes: <= 2.5x the time
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

TARGETS = {  # task: (iou type checked, AP50 at least, AP at least, seconds at most)
    "det": ("bbox", 0.95, 0.72, 120),
    "segm": ("segm", 0.85, 0.0, 480),
}
BUSY_FACTOR = 2.5  # beside one busy process per core, at most this many times the quiet target


def busy_processes(count: int) -> list[subprocess.Popen]:
    """``count`` processes that each keep a core busy, the competing load of a shared machine."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TARGETS), default="det")
    parser.add_argument("--busy", type=int, default=0, help="busy processes to run beside it")
    parser.add_argument("extra", nargs="*", help="more train-det options, e.g. --iters 300")
    args = parser.parse_args()
    iou_type, min_ap50, min_ap, max_seconds = TARGETS[args.task]
    if args.busy:
        max_seconds *= BUSY_FACTOR
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
        load = busy_processes(args.busy)
        try:
            start = time.perf_counter()
            subprocess.run(command, cwd=tmp, env=env, check=True)
            seconds = time.perf_counter() - start
        finally:
            for process in load:
                process.kill()
        report = json.loads((Path(tmp) / "run" / "eval.json").read_text())
    beside = f", beside {args.busy} busy processes" if args.busy else ""
    print(
        f"\n`resdet train-det shapes --task {args.task}` from an empty folder{beside}: "
        f"{seconds:.0f} s wall"
    )
    phases = report["seconds"]
    phases = {"start-up": round(seconds - sum(phases.values()), 1), **phases}
    print("  " + ", ".join(f"{name} {value:.1f} s" for name, value in phases.items()))
    for name in ("bbox", "segm"):
        if name in report:
            stats = report[name]
            print(
                f"  {name}: AP {stats['AP']:.3f}  AP50 {stats['AP50']:.3f}  AP75 {stats['AP75']:.3f}"
            )
    ap50, ap = report[iou_type]["AP50"], report[iou_type]["AP"]
    ok = ap50 >= min_ap50 and ap >= min_ap and seconds <= max_seconds
    print(
        f"target: {iou_type} AP50 >= {min_ap50}, AP >= {min_ap} in <= {max_seconds:.0f} s -> "
        f"{'met' if ok else 'NOT met'} (AP50 {ap50:.3f}, AP {ap:.3f} in {seconds:.0f} s)"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
