"""metrics.jsonl truncation and the live progress bar."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from resdet.engine.progress import MetricsLog, PeriodMeter, TrainProgress


def test_truncate_keeps_records_up_to_the_resumed_iteration(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for it in (5, 10, 15):
        log.write({"type": "train", "iter": it, "loss": 1.0})
    log.write({"type": "eval", "iter": 10, "top1_err": 0.5})
    with open(log.path, "a") as f:
        f.write('{"type": "train", "it')  # cut short by a crash
    log.truncate_after(10)
    kept = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert [(r["type"], r["iter"]) for r in kept] == [("train", 5), ("train", 10), ("eval", 10)]
    (tmp_path / "other.jsonl").write_text('{"step": 3}\n')
    with pytest.raises(ValueError, match="other.jsonl line 1 is not a resdet metrics record"):
        MetricsLog(tmp_path / "other.jsonl").truncate_after(0)


def test_disabled_log_writes_nothing(tmp_path: Path) -> None:
    MetricsLog(tmp_path / "metrics.jsonl", enabled=False).write({"iter": 1})
    assert not (tmp_path / "metrics.jsonl").exists()


def test_live_bar_shows_loss_lr_and_throughput() -> None:
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=160)
    with TrainProgress(100, 40, console=console) as progress:
        assert progress.live
        progress.update(50)
        progress.log_train(
            {"iter": 50, "epoch": 1, "lr": 0.1, "loss": 0.6931, "img_per_s": 512.0, "time": 0.25}
        )
        progress.log_eval({"type": "eval", "iter": 50, "top1_err": 0.25})
    text = stream.getvalue()
    assert "loss 0.6931" in text and "lr 0.1" in text and "img/s 512.0" in text
    assert "eval @ iter 50: top1_err 0.2500" in text and "50/100" in text


def test_meter_means_and_first_non_finite_iteration() -> None:
    meter = PeriodMeter(torch.device("cpu"))
    meter.add(1, [{"loss": torch.tensor(1.0), "top1_err": torch.tensor(0.5)}], images=8)
    meter.add(2, [{"loss": torch.tensor(3.0), "top1_err": torch.tensor(0.25)}], images=8)
    assert meter.means() == {"loss": 2.0, "top1_err": 0.375}
    assert int(meter.first_bad) == -1
    meter.add(3, [{"loss": torch.tensor(float("inf")), "top1_err": 0.0}], images=8)
    meter.add(4, [{"loss": torch.tensor(float("nan")), "top1_err": 0.0}], images=8)
    assert int(meter.first_bad) == 3
    restored = PeriodMeter(torch.device("cpu"))
    restored.load_state_dict(meter.state_dict())
    assert restored.counts == {"loss": 4, "top1_err": 4}
