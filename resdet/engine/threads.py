"""How many CPU threads a run uses: torch's intra-op threads, loader workers and OpenCV's, sized
together from the cores this process may use and how busy they are.

Each library assumes it owns the machine: torch starts one OpenMP thread per core, OpenCV its
own pool, and each DataLoader worker is a process. On two cores with two workers, two OpenMP
threads ran a shapes training step at 7 img/s where one thread ran at 10 when other processes
kept both cores busy (and at 22 against 13.5 on idle cores), because OpenMP's threads wait for
each other at every parallel region and a descheduled one stalls the rest. So the plan counts
the cores (affinity, cgroup quota, processes per machine), subtracts what other processes keep
busy at the start, and never starts more runnable threads than that.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ThreadPlan:
    """The threads of one process: ``torch_threads`` intra-op threads, ``workers`` DataLoader
    processes, ``opencv_threads`` for OpenCV in this process (workers run it sequentially)."""

    cores: int  # cores this process may use
    busy: float  # of those, cores that other processes kept busy when measured
    torch_threads: int
    workers: int
    opencv_threads: int
    requested_workers: int

    def describe(self) -> str:
        """One line for the run's log."""
        capped = (
            f" (data.workers {self.requested_workers} capped to the free cores)"
            if self.workers < self.requested_workers
            else ""
        )
        return (
            f"CPU threads: {self.cores} usable core(s), {self.busy:.1f} busy with other work -> "
            f"torch {self.torch_threads} thread(s), {self.workers} loader worker(s){capped}, "
            f"OpenCV {self.opencv_threads}; set train.threads or OMP_NUM_THREADS to choose"
        )


def usable_cores(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may run on (``sched_getaffinity``), fewer under a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_quota(cgroup_root)
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup's CPU limit in cores (``cpu.max`` of cgroup v2, ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us`` of v1), or None without one."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def busy_cores(seconds: float = 0.2, stat: Path = Path("/proc/stat")) -> float:
    """Cores of this process's CPUs that other processes keep busy, measured over ``seconds``
    from ``/proc/stat`` while this one sleeps; 0 where that file does not exist."""
    try:
        cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        before = _cpu_times(stat, cpus)
        time.sleep(seconds)
        after = _cpu_times(stat, cpus)
    except (OSError, AttributeError, ValueError):
        return 0.0
    busy = 0.0
    for cpu, (idle, total) in after.items():
        idle0, total0 = before.get(cpu, (idle, total))
        if total > total0:
            busy += 1 - (idle - idle0) / (total - total0)
    return busy


def _cpu_times(stat: Path, cpus: set[str]) -> dict[str, tuple[int, int]]:
    """``cpu: (idle + iowait jiffies, all jiffies)`` for the ``cpus`` lines of ``/proc/stat``."""
    times = {}
    for line in stat.read_text().splitlines():
        name, *values = line.split()
        if name in cpus:
            numbers = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            times[name] = (numbers[3] + numbers[4], sum(numbers))
    return times


def plan_threads(
    *,
    cores: int,
    busy: float,
    device_type: str,
    workers: int,
    threads: int = 0,
    processes: int = 1,
) -> ThreadPlan:
    """The threads for one of ``processes`` processes sharing ``cores`` cores, ``busy`` of them
    kept busy by other work.

    ``threads`` > 0 (``train.threads``, or ``OMP_NUM_THREADS`` when set) fixes torch's thread
    count; otherwise a CPU run computes on every free core, and a CUDA run, whose process only
    feeds the GPU, keeps the cores its ``workers`` leave. Workers get the free cores that torch
    does not use, at most ``workers`` (the request): on a CPU run the cheap loading then runs
    between the steps in the training process rather than beside them.
    """
    share = max(1, cores // max(1, processes))
    free = max(1, share - round(busy / max(1, processes)))
    if device_type == "cuda":
        loaders = min(workers, max(0, free - 1))  # one core for the process feeding the GPU
        torch_threads = threads or max(1, free - loaders)
    else:
        torch_threads = threads or free
        loaders = min(workers, max(0, free - torch_threads))
    return ThreadPlan(share, busy, torch_threads, loaders, 1, workers)


def apply_thread_plan(
    device: torch.device, workers: int, threads: int = 0, processes: int = 1
) -> ThreadPlan:
    """Plan this process's threads (``plan_threads``, from the usable cores, their load now and
    ``OMP_NUM_THREADS``) and set torch's and OpenCV's; the plan's ``workers`` go to the loaders."""
    import cv2  # here, not at the top: the engine needs no OpenCV otherwise

    if not threads and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = int(os.environ["OMP_NUM_THREADS"])
    plan = plan_threads(
        cores=usable_cores(),
        busy=busy_cores(),
        device_type=device.type,
        workers=workers,
        threads=threads,
        processes=processes,
    )
    torch.set_num_threads(plan.torch_threads)
    cv2.setNumThreads(plan.opencv_threads)
    return plan
