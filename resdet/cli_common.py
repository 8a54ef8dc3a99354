"""What every ``resdet`` command shares: consoles, error exits and the job runner."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from resdet.experiments.detection import DetReport

console = Console()
err_console = Console(stderr=True)


class _ConsoleHandler(logging.Handler):
    """Shows the library's messages for people (the ``resdet`` logger's INFO) on the console."""

    def emit(self, record: logging.LogRecord) -> None:
        console.print(self.format(record), highlight=False, markup=False)


def show_library_messages() -> None:
    """Print what resdet logs at INFO or above (data summaries, set generation) on the console.

    The library only logs; the CLI decides that a person sees it. Idempotent.
    """
    library = logging.getLogger("resdet")
    if not any(isinstance(h, _ConsoleHandler) for h in library.handlers):
        library.addHandler(_ConsoleHandler())
    library.setLevel(logging.INFO)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print an error a user can act on and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def run_entry(job: Callable[[], None]) -> None:
    """Run a training or evaluation job, turning expected failures into clear exits.

    Under torchrun the process ends through ``run_and_exit`` (``os._exit`` after flushing), which
    sidesteps torch's gloo teardown abort at interpreter exit.
    """
    from resdet.engine import distributed
    from resdet.engine.progress import NonFiniteLossError

    def guarded() -> None:
        try:
            job()
        except NonFiniteLossError as error:
            raise fail(str(error), code=3) from None
        except (ValueError, KeyError, FileNotFoundError, FileExistsError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            raise fail(str(message)) from None
        except KeyboardInterrupt:
            err_console.print("stopped by Ctrl-C")
            raise typer.Exit(130) from None

    if distributed.launched_by_torchrun():  # a process group exists
        distributed.run_and_exit(_typer_exit_code(guarded))
    guarded()


def _typer_exit_code(fn: Callable[[], None]) -> Callable[[], None]:
    def wrapped() -> None:
        try:
            fn()
        except typer.Exit as exit_:
            sys.exit(exit_.exit_code)

    return wrapped


def print_report(report: DetReport, title: str = "") -> None:
    """A detection evaluation as rich tables: COCO AP and per-class AP, or the VOC table."""
    from resdet.evaluation.tables import coco_table, per_class_table, voc_table

    if report.voc is not None:
        console.print(voc_table(report.voc))
        return
    for iou_type, result in report.coco.items():
        console.print(coco_table(result.stats, title=f"{title} COCO {iou_type} AP (%)".strip()))
        console.print(per_class_table(result.per_class, title=f"per-class {iou_type} AP (%)"))
