"""Tests of resdet.engine.threads: the numbers the thread policy picks."""

import os

import pytest

from resdet.engine import threads as T


@pytest.mark.parametrize(
    ("cores", "busy", "device", "workers", "threads", "processes", "expected"),
    [
        (2, 0.1, "cpu", 2, 0, 1, (2, 0)),  # a quiet laptop: compute on both, load in between
        (2, 1.9, "cpu", 2, 0, 1, (1, 0)),  # one busy process per core: one thread
        (2, 3.5, "cpu", 2, 0, 1, (1, 0)),  # never fewer than one
        (8, 0.0, "cpu", 4, 0, 1, (8, 0)),
        (8, 0.0, "cpu", 4, 6, 1, (6, 2)),  # train.threads 6 leaves two cores to the loaders
        (16, 0.0, "cuda", 8, 0, 1, (8, 8)),  # the GPU process keeps what the workers leave
        (8, 0.0, "cuda", 8, 0, 1, (1, 7)),  # one core for the process feeding the GPU
        (64, 0.0, "cuda", 8, 0, 8, (1, 7)),  # eight ranks share a machine: 8 cores each
        (64, 16.0, "cuda", 8, 0, 8, (1, 5)),  # others' load is shared out too
    ],
)
def test_plans_never_run_more_threads_than_free_cores(
    cores, busy, device, workers, threads, processes, expected
):
    plan = T.plan_threads(
        cores=cores,
        busy=busy,
        device_type=device,
        workers=workers,
        threads=threads,
        processes=processes,
    )
    assert (plan.torch_threads, plan.workers) == expected
    assert plan.opencv_threads == 1 and plan.requested_workers == workers


def test_the_plan_line_says_when_the_workers_were_capped():
    plan = T.plan_threads(cores=2, busy=0.0, device_type="cpu", workers=2)
    line = plan.describe()
    assert "2 usable core(s)" in line and "torch 2 thread(s), 0 loader worker(s)" in line
    assert "data.workers 2 capped" in line and "OMP_NUM_THREADS" in line


def test_cgroup_quotas_v2_and_v1(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert T.cgroup_quota(v2) == 1.5 and T.usable_cores(v2) == 2
    (v2 / "cpu.max").write_text("max 100000\n")
    assert T.cgroup_quota(v2) is None and T.usable_cores(v2) == 8
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert T.usable_cores(v1) == 3
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")  # v1's "no limit"
    assert T.cgroup_quota(v1) is None
    assert T.cgroup_quota(tmp_path / "none") is None


def test_busy_cores_are_read_from_proc_stat_while_sleeping(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal, per CPU (cpu2 is not ours)
    stat.write_text("cpu 0 0 0 0 0 0 0 0\ncpu0 100 0 0 100 0 0 0 0\ncpu1 0 0 0 200 0 0 0 0\n")

    def a_moment_passes(seconds):
        # cpu0 fully busy for 100 jiffies, cpu1 a quarter busy, cpu2 ignored
        stat.write_text(
            "cpu 0 0 0 0 0 0 0 0\ncpu0 200 0 0 100 0 0 0 0\ncpu1 25 0 0 275 0 0 0 0\n"
            "cpu2 999 0 0 0 0 0 0 0\n"
        )

    monkeypatch.setattr(T.time, "sleep", a_moment_passes)
    assert T.busy_cores(stat=stat) == pytest.approx(1.25)
    assert T.busy_cores(stat=tmp_path / "missing") == 0.0


def test_a_resumed_cpu_run_keeps_its_checkpoints_thread_count(tmp_path, monkeypatch):
    import torch

    from resdet.engine.checkpoint import save_checkpoint
    from resdet.experiments.common import set_up_threads

    save_checkpoint(tmp_path / "last.pt", {"meta": {"torch_threads": 1}})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(T, "busy_cores", lambda: 0.0)
    monkeypatch.setattr(T, "usable_cores", lambda: 2)
    before = torch.get_num_threads()
    try:
        cpu = torch.device("cpu")
        assert set_up_threads(cpu, 2, 0, tmp_path / "last.pt").torch_threads == 1
        assert torch.get_num_threads() == 1
        assert set_up_threads(cpu, 2, 0).torch_threads == 2  # a new run: the free cores
        assert set_up_threads(cpu, 2, 2, tmp_path / "last.pt").torch_threads == 2  # asked
    finally:
        torch.set_num_threads(before)
