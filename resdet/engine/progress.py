"""What a training run shows and records: a rich progress bar and ``metrics.jsonl``.

``metrics.jsonl`` holds one JSON object per line (docs/design.md#metricsjsonl):
``{"type": "train", "iter", "epoch", "lr", "loss", <loss and logged entries>, "img_per_s",
"time"}`` every log period and ``{"type": "eval", "iter", <evaluator keys>}`` after each evaluation. ``time`` is the mean
wall-clock seconds per iteration over the log period.
"""

from __future__ import annotations

import datetime
import json
import math
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Entries shown on the bar and in plain log lines, in this order, when present.
_SHOWN = ("loss", "lr", "img_per_s")


class MetricsLog:
    """Appends records to a JSON-lines file; a disabled log (ranks other than 0) writes nothing."""

    def __init__(self, path: str | Path, *, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line; the file is closed after each line so a crash keeps it."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, iteration: int) -> None:
        """Drop the records with ``iter`` > ``iteration`` (written after a checkpoint we resume)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # A line cut short by a crash during the write.
                continue
            if not isinstance(record, dict) or "iter" not in record:
                raise ValueError(
                    f"{self.path} line {number} is not a resdet metrics record: {line[:80]!r}; "
                    "move the file away or choose another output folder"
                )
            if record["iter"] <= iteration:
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _format_value(name: str, value: float) -> str:
    if name == "lr":
        return f"{value:.3g}"
    if name == "img_per_s":
        return f"{value:.1f}"
    return f"{value:.4f}"


def format_record(record: dict[str, Any]) -> str:
    """A short human-readable line for a train record: ``loss 0.6931  lr 0.1  img/s 512.0``."""
    parts = []
    for name in _SHOWN:
        if name in record:
            label = "img/s" if name == "img_per_s" else name
            parts.append(f"{label} {_format_value(name, record[name])}")
    return "  ".join(parts)


class TrainProgress:
    """Progress of a run on rank 0: a live rich bar on a terminal, plain lines otherwise.

    On a terminal the bar shows iterations, loss, lr, img/s, elapsed time and ETA; when stdout is
    not a terminal (CI logs, ``nohup``) one line per log period is printed instead.
    """

    def __init__(
        self,
        max_iters: int,
        start_iter: int,
        *,
        enabled: bool = True,
        console: Console | None = None,
    ) -> None:
        self.max_iters = max_iters
        self.enabled = enabled
        self.console = console or Console()
        self.live = enabled and self.console.is_terminal
        self._bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.live,
        )
        self._task = self._bar.add_task("train", total=max_iters, completed=start_iter, stats="")

    def __enter__(self) -> TrainProgress:
        self._bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bar.stop()

    def update(self, iteration: int) -> None:
        """Move the bar to ``iteration`` completed iterations (cheap; call every iteration)."""
        if self.live:
            self._bar.update(self._task, completed=iteration)

    def log_train(self, record: dict[str, Any]) -> None:
        """Show a train record: on the bar, or as a plain line with an ETA from its ``time``."""
        if not self.enabled:
            return
        text = format_record(record)
        if self.live:
            self._bar.update(self._task, stats=text)
            return
        remaining = (self.max_iters - record["iter"]) * record["time"]
        eta = datetime.timedelta(seconds=math.ceil(remaining))
        self.console.print(
            f"iter {record['iter']}/{self.max_iters}  epoch {record['epoch']}  {text}  eta {eta}",
            highlight=False,
            soft_wrap=True,
        )

    def log_eval(self, record: dict[str, Any]) -> None:
        """Print an eval record's metrics above the bar."""
        if not self.enabled:
            return
        metrics = "  ".join(
            f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
            for key, value in record.items()
            if key not in ("type", "iter")
        )
        self.console.print(f"eval @ iter {record['iter']}: {metrics}", highlight=False)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; no checkpoint was written from that state."""


class PeriodMeter:
    """Means of the logged entries and throughput over one log period.

    Sums stay on the device and are only read by ``means()``, so accumulating never waits for
    the GPU. The 1-based iteration of the first non-finite loss is tracked the same way.
    """

    def __init__(self, device: torch.device) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, int] = {}
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.restart_clock()

    def add(self, iteration: int, entries: list[dict[str, Any]], images: int) -> None:
        """Add the entries (scalar tensors or numbers) of one iteration, one dict per batch.

        Each dict holds the total ``loss`` tensor; ``images`` counts the iteration's images on
        all ranks.
        """
        for entry in entries:
            for key, value in entry.items():
                value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
                self.sums[key] = self.sums.get(key, 0.0) + value
                self.counts[key] = self.counts.get(key, 0) + 1
            bad = ~torch.isfinite(entry["loss"].detach())
            # In place, without reading the value: no device synchronisation.
            self.first_bad.masked_fill_(bad & (self.first_bad < 0), iteration)
        self.iters += 1
        self.images += images

    def raise_if_non_finite(self, kept: str) -> None:
        """Raise ``NonFiniteLossError`` if a loss of this period, on any rank, was not finite.

        Collective: the earliest bad iteration of all ranks, so that all ranks stop together.
        ``kept`` says which checkpoint is the last good one.
        """
        first_bad = self.first_bad
        if dist.is_available() and dist.is_initialized():
            never = torch.iinfo(torch.int64).max
            first_bad = torch.where(first_bad < 0, never, first_bad)
            dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
            first_bad = torch.where(first_bad == never, -1, first_bad)
        bad_iter = int(first_bad.item())
        if bad_iter < 0:
            return
        means = ", ".join(f"{key}={value:.4g}" for key, value in self.means().items())
        raise NonFiniteLossError(
            f"non-finite loss at iteration {bad_iter} (means since the last log: {means}); "
            f"stopped before writing a checkpoint from this state: {kept}. Lower the learning "
            "rate, set clip_grad_norm, add warm-up, or use amp bf16 instead of fp16"
        )

    def means(self) -> dict[str, float]:
        """Mean of each entry over the period (reads the device)."""
        return {key: float(value) / self.counts[key] for key, value in self.sums.items()}

    def reset(self) -> None:
        """Start a new period: clear the sums and restart the clock."""
        self.sums, self.counts = {}, {}
        self.restart_clock()

    def restart_clock(self) -> None:
        """Measure throughput from now on."""
        self.start = time.perf_counter()
        self.iters = 0
        self.images = 0

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` (evaluation, checkpointing) out of the throughput."""
        self.start += seconds

    def throughput(self) -> tuple[float, float]:
        """(images per second, seconds per iteration) since the clock started."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return self.images / elapsed, elapsed / max(self.iters, 1)

    def state_dict(self) -> dict[str, Any]:
        """The sums and counts (tensors moved to the CPU) for a checkpoint."""
        sums = {
            key: value.cpu() if isinstance(value, torch.Tensor) else value
            for key, value in self.sums.items()
        }
        return {"sums": sums, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore sums and counts; the clock restarts."""
        device = self.first_bad.device
        self.sums = {
            key: value.to(device) if isinstance(value, torch.Tensor) else value
            for key, value in state["sums"].items()
        }
        self.counts = dict(state["counts"])
        self.restart_clock()
