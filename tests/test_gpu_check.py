"""tools/gpu_check.sh --smoke: the GPU check's measuring script, run on CPU with gloo and tiny
sizes so that it cannot rot between the runs on a lent GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def test_gpu_check_smoke_runs_ddp_and_reports_every_section(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", str(TOOLS / "gpu_check.sh"), "--smoke", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    results = json.loads(last)["gpu_check"]
    assert results["process_group"] == {"backend": "gloo", "world_size": 1}
    cls = results["classification"]
    assert cls["trained_ddp"] and cls["compile"] == "skipped in --smoke"
    assert min(cls["resdet_img_per_s"], cls["bare_img_per_s"], cls["ratio"]) > 0
    loading = results["loading"]
    assert loading["gpu_decode_batch"] == [2, 3, 224, 224]
    assert min(loading["train_img_per_s_per_worker"], loading["gpu_decode_img_per_s"]) > 0
    detection = results["detection"]
    for name in ("faster_fpn", "mask_fpn"):
        assert detection[name]["ratio"] > 0
    assert detection["faster_c4"]["resdet_img_per_s"] > 0
