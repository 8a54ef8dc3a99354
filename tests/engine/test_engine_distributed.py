"""torchrun with 2 CPU processes (gloo), and the single-process fallbacks of the helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from resdet.engine.distributed import all_reduce_mean, broadcast_from_main, run_and_exit

TESTS_DIR = Path(__file__).parent

SCRIPT = """
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, {tests_dir!r})
from engine_toys import ToyImages, ToyNet

from resdet.data.loader import TrainLoader
from resdet.engine import StepSchedule, Trainer, build_sgd, get_rank, get_world_size
from resdet.engine import init_distributed, run_and_exit


def main():
    out = Path(sys.argv[1])
    device = init_distributed("cpu")
    rank, world_size = get_rank(), get_world_size()
    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
    # A constant loss equal to the rank: its logged mean over ranks must be 0.5.
    model = ToyNet(extra_losses={{"loss_rank": float(rank)}})
    loader = TrainLoader(ToyImages(64), batch_size=8, seed=1, rank=rank, world_size=world_size)
    trainer = Trainer(
        model, build_sgd(model, lr=0.1), StepSchedule(0.1, [8]), loader,
        max_iters=12, out_dir=out, device=device, log_period=4, checkpoint_period=6,
        evaluate=lambda model: {{"rank_seen": float(rank)}},
    )
    metrics = trainer.fit()
    parameters = {{name: p.detach() for name, p in model.named_parameters()}}
    torch.save(parameters, out / f"rank{{rank}}.pt")
    (out / f"rank{{rank}}.json").write_text(json.dumps({{"world": world_size, **metrics}}))


run_and_exit(main)
"""


def test_two_process_torchrun_trains_in_sync(tmp_path: Path) -> None:
    script = tmp_path / "train_ddp.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests_dir=str(TESTS_DIR))))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(script), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Both ranks finished; rank 0's evaluation result reached rank 1.
    for rank in range(2):
        assert json.loads((out / f"rank{rank}.json").read_text()) == {"world": 2, "rank_seen": 0.0}
    # Parameters stay in sync; BN running statistics are per rank, as with any DDP run.
    first, second = (torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(2))
    assert first.keys() == {
        "conv.weight",
        "conv.bias",
        "bn.weight",
        "bn.bias",
        "fc.weight",
        "fc.bias",
    }
    for key in first:
        assert torch.equal(first[key], second[key]), key
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["type"] == "train"]
    # Written once, by rank 0 only.
    assert [r["iter"] for r in train] == [4, 8, 12]
    assert [r for r in lines if r["type"] == "eval"] == [
        {"type": "eval", "iter": 12, "rank_seen": 0.0}
    ]
    for record in train:
        assert record["loss_rank"] == 0.5
        assert record["loss"] == pytest.approx(record["loss_cls"] + record["loss_rank"], abs=1e-5)
        assert record["epoch"] == record["iter"] // 4  # 32 samples per rank: 4 batches per epoch
    assert torch.load(out / "last.pt", weights_only=True)["iteration"] == 12


def test_helpers_without_a_process_group() -> None:
    assert all_reduce_mean({"a": 1.5, "b": -2.0}) == {"a": 1.5, "b": -2.0}
    assert broadcast_from_main({"x": 1}) == {"x": 1}


@pytest.mark.parametrize(
    ("body", "code"),
    [(lambda: None, 0), (lambda: sys.exit(3), 3), (lambda: 1 / 0, 1)],
)
def test_run_and_exit_without_a_process_group_exits_with_the_code(body, code) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_and_exit(body)
    assert exit_info.value.code == code


def test_run_and_exit_maps_ctrl_c_to_130() -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        run_and_exit(interrupted)
    assert exit_info.value.code == 130
    assert torch.distributed.is_available()


def test_backends_autotune_fixed_shapes_on_cuda_and_obey_deterministic() -> None:
    from resdet.engine.distributed import configure_backends

    cudnn = torch.backends.cudnn
    before = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled())
    try:
        configure_backends(torch.device("cuda", 0), deterministic=False, fixed_shapes=True)
        assert cudnn.benchmark and not cudnn.deterministic
        configure_backends(torch.device("cuda", 0), deterministic=False, fixed_shapes=False)
        assert not cudnn.benchmark  # detection: every image size would be tuned anew
        configure_backends(torch.device("cuda", 0), deterministic=True, fixed_shapes=True)
        assert not cudnn.benchmark and cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled()
        configure_backends(torch.device("cpu"), deterministic=False, fixed_shapes=True)
        assert not cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    finally:
        cudnn.benchmark, cudnn.deterministic = before[:2]
        torch.use_deterministic_algorithms(before[2])


def test_ddp_broadcasts_buffers_only_when_training_changes_them(tmp_path: Path) -> None:
    from torchvision.ops import FrozenBatchNorm2d

    from resdet.engine.distributed import wrap_ddp

    store = tmp_path / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        cpu = torch.device("cpu")
        trained = wrap_ddp(
            torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)), cpu
        )
        frozen = wrap_ddp(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), FrozenBatchNorm2d(4)), cpu)
        assert trained.broadcast_buffers and not frozen.broadcast_buffers
        assert trained.gradient_as_bucket_view and not trained.static_graph
        static = wrap_ddp(torch.nn.Conv2d(3, 4, 1), cpu, static_graph=True)
        assert static.static_graph
    finally:
        dist.destroy_process_group()
