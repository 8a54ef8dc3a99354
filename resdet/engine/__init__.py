"""Training engine: one loop for classification and detection, schedules, checkpoints, torchrun.

Typical use (configuration stops at the builders; the engine takes plain arguments)::

    from resdet.data.loader import TrainLoader, build_eval_loader

    device = init_distributed("auto")
    loader = TrainLoader(dataset, batch_size=128, seed=0, num_workers=4,
                         rank=get_rank(), world_size=get_world_size())
    optimizer = build_sgd(model, lr=0.1, weight_decay=1e-4)
    schedule = StepSchedule(0.1, milestones=[32000, 48000])
    trainer = Trainer(model, optimizer, schedule, loader, max_iters=64000, out_dir="runs/x",
                      device=device, evaluate=lambda m: inference(m, val_loader, evaluator, device))
    metrics = trainer.fit()
"""

from resdet.engine.checkpoint import load_checkpoint, save_checkpoint
from resdet.engine.distributed import (
    all_reduce_mean,
    barrier,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main,
    run_and_exit,
)
from resdet.engine.evaluate import inference
from resdet.engine.hooks import Hook
from resdet.engine.optim import build_sgd
from resdet.engine.progress import NonFiniteLossError
from resdet.engine.schedule import (
    CosineSchedule,
    PlateauSchedule,
    Schedule,
    StepSchedule,
    Warmup,
)
from resdet.engine.trainer import Trainer

__all__ = [
    "CosineSchedule",
    "Hook",
    "NonFiniteLossError",
    "PlateauSchedule",
    "Schedule",
    "StepSchedule",
    "Trainer",
    "Warmup",
    "all_reduce_mean",
    "barrier",
    "build_sgd",
    "get_rank",
    "get_world_size",
    "inference",
    "init_distributed",
    "is_distributed",
    "is_main",
    "load_checkpoint",
    "run_and_exit",
    "save_checkpoint",
]
