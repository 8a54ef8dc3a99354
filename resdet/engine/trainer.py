"""One training loop for every task: the model's losses are summed, whatever the task.

Models follow docs/design.md#models: in train mode ``model(images, targets)`` returns a dict
whose ``loss*`` entries are summed and back-propagated and whose other entries are only logged.
An iteration is one optimizer step over ``grad_accum`` batches; ``Trainer.iteration`` counts the
completed ones, so metrics and checkpoints at iteration ``i`` describe the state after ``i`` steps.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from resdet.data.loader import TrainLoader, batch_size_of, prepare_batch
from resdet.engine import distributed
from resdet.engine.checkpoint import (
    CheckpointWriter,
    capture_rng_state,
    check_plain,
    check_same_run,
    load_checkpoint,
    restore_rng_state,
)
from resdet.engine.distributed import StopSignals
from resdet.engine.evaluate import AMP_DTYPES, AmpMode, autocast
from resdet.engine.hooks import (
    Evaluation,
    Hook,
    PeriodicCheckpoint,
    ScheduleFeedback,
    check_period,
    due,
)
from resdet.engine.losses import total_loss
from resdet.engine.progress import MetricsLog, PeriodMeter, TrainProgress
from resdet.engine.schedule import Schedule


class Trainer:
    """Trains ``model`` for ``max_iters`` optimizer steps on CPU or CUDA, one or many processes.

    Args:
        model: returns a dict of losses in train mode (docs/design.md#models); moved to
            ``device``.
        optimizer: built on ``model``'s parameters (``resdet.engine.optim.build_sgd``).
        schedule: sets the learning rate of every parameter group before each step.
        train_loader: the endless batch stream (docs/design.md#batches); ``prepare_batch``
            makes its images the model's float input on ``device``.
        max_iters: number of optimizer steps of the whole run.
        out_dir: receives ``last.pt`` and ``metrics.jsonl``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` or a ``torch.device``.
        amp: ``"off"``; ``"bf16"`` autocast; ``"fp16"`` autocast with a ``GradScaler``.
        channels_last: NHWC model and 4-D image batches (faster convolutions on CPU and
            tensor cores; list batches of detection stay as they are).
        grad_accum: batches per optimizer step (gradients of ``grad_accum`` batches are summed
            with the loss divided by ``grad_accum``).
        clip_grad_norm: clip the global gradient L2 norm to this value; ``None`` for no clipping.
        log_period: iterations between train records and progress lines.
        eval_period: iterations between evaluations; ``None`` evaluates only at the end.
        checkpoint_period: iterations between checkpoints; ``None`` only at the end.
        evaluate: ``evaluate(model) -> dict[str, float]`` run on every rank (the evaluator
            gathers); ``None`` for no evaluation.
        checkpoint_meta: plain data saved in checkpoints: ``config``, ``task``, ``model`` (name
            or variant signature), ``dataset``; ``task`` and ``model`` must match on resume.
        find_unused_parameters: passed to ``DistributedDataParallel`` (detectors whose heads
            skip parameters on some batches need it).
        static_graph: tell ``DistributedDataParallel`` that every step uses the same
            parameters in the same order (classifiers), which lets it plan its all-reduces.
        compile_model: train through ``torch.compile(model)``; if compiling fails, a message
            says why and training goes on with the model as it is.
        hooks: extensions called around each step (``resdet.engine.hooks``); they run after the
            schedule's feedback and before the checkpoint and evaluation hooks the trainer adds.

    A process group (torchrun) wraps the model in ``DistributedDataParallel``; rank 0 writes
    the files. A non-finite loss stops the run before any checkpoint of the poisoned state is
    written (checked every iteration on CPU; on CUDA, where reading the loss would stall the
    GPU, at each log, evaluation and checkpoint). SIGINT (Ctrl-C) and SIGTERM stop the run
    after the current iteration (and evaluation, if one is running) with a checkpoint that
    resumes bit-exactly; a ``KeyboardInterrupt`` raised inside a step (a second Ctrl-C) saves
    the parameters and optimizer of the last completed iteration.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        train_loader: TrainLoader,
        *,
        max_iters: int,
        out_dir: str | Path,
        device: str | torch.device,
        amp: AmpMode = "off",
        channels_last: bool = False,
        grad_accum: int = 1,
        clip_grad_norm: float | None = None,
        log_period: int = 20,
        eval_period: int | None = None,
        checkpoint_period: int | None = None,
        evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
        checkpoint_meta: Mapping[str, Any] | None = None,
        find_unused_parameters: bool = False,
        static_graph: bool = False,
        compile_model: bool = False,
        hooks: Sequence[Hook] = (),
    ) -> None:
        if amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
        for name, value in (("max_iters", max_iters), ("grad_accum", grad_accum)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        check_period("eval_period", eval_period)  # checked even when there is no evaluation
        if log_period < 1:
            raise ValueError(f"log_period must be >= 1, got {log_period}")
        self.device = distributed.resolve_device(device)
        if amp == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"{torch.cuda.get_device_name(self.device)} has no bf16: use amp fp16")
        self.checkpoint_meta = dict(checkpoint_meta or {})
        check_plain(self.checkpoint_meta)

        memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=memory_format)
        self.train_model: nn.Module = self.model
        if distributed.is_distributed():
            self.train_model = distributed.wrap_ddp(
                self.model,
                self.device,
                find_unused_parameters=find_unused_parameters,
                static_graph=static_graph and grad_accum == 1,
            )
        self._eager_model = self.train_model
        if compile_model:
            self.train_model = torch.compile(self.train_model)
        self.optimizer = optimizer
        self.schedule = schedule
        self.train_loader = train_loader
        self.max_iters = max_iters
        self.amp = amp
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        self.channels_last = channels_last
        self.grad_accum = grad_accum
        self.clip_grad_norm = clip_grad_norm
        self.log_period = log_period
        self.hooks: list[Hook] = [
            ScheduleFeedback(schedule),
            *hooks,
            PeriodicCheckpoint(checkpoint_period),
            *([Evaluation(evaluate, eval_period)] if evaluate is not None else []),
        ]
        names = [hook.name for hook in self.hooks]
        if len(set(names)) != len(names):
            raise ValueError(f"hook names must be unique (they key checkpoint state), got {names}")

        self.out_dir = Path(out_dir)
        self.checkpoint_path = self.out_dir / "last.pt"
        self.is_main = distributed.is_main()
        self.metrics_log = MetricsLog(self.out_dir / "metrics.jsonl", enabled=self.is_main)

        self.iteration = 0
        self.last_eval: dict[str, float] = {}
        self.evaluated_at: int | None = None  # iteration of the last evaluation
        self.saved_at: int | None = None  # iteration of the last checkpoint written
        self._finite_at: int | None = None  # iteration whose losses were last checked
        self._lr = schedule.lr_at(0)
        self._meter = PeriodMeter(self.device)
        # Reading the loss every iteration is free on CPU but would stall a GPU's queue.
        self._check_every_iteration = self.device.type == "cpu"
        self._signals = StopSignals()
        self._writer = CheckpointWriter()
        # "forward" (parameters and optimizer untouched), "update" (optimizer step) or "hooks".
        self._phase = "hooks"
        self._progress: TrainProgress | None = None

    # ---------------------------------------------------------------- running

    def fit(self) -> dict[str, float]:
        """Train from ``self.iteration`` to ``max_iters``; returns the last evaluation's metrics.

        Raises ``NonFiniteLossError`` on a NaN/inf loss, ``KeyboardInterrupt`` after Ctrl-C and
        ``SystemExit(143)`` after SIGTERM (both once a checkpoint is saved).
        """
        self.train_model.train()
        batches = self.train_loader.batches(self.iteration * self.grad_accum)
        self._progress = TrainProgress(self.max_iters, self.iteration, enabled=self.is_main)
        self._meter.restart_clock()
        try:
            with self._progress, self._signals:
                self._call("before_train")
                while self.iteration < self.max_iters:
                    self._call("before_step")
                    self._guarded_step(batches)
                    self._after_step()
                    if self._signals.signum is not None:
                        self._stop_with_checkpoint(capture_rng_state(self.device))
                self._call("after_train")
        finally:
            batches.close()  # shuts down the stream's DataLoader workers
            # A failed write is raised, unless another error is already on its way out.
            self._writer.wait(raise_error=sys.exc_info()[0] is None)
        distributed.barrier()
        return dict(self.last_eval)

    @property
    def at_end(self) -> bool:
        """Whether the run's last step is done."""
        return self.iteration == self.max_iters

    def _call(self, event: str) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self)

    def _guarded_step(self, batches: Iterator[Any]) -> None:
        self._phase = "forward"
        try:
            entries, images = self._step(batches)
        except BaseException as error:
            interrupted = isinstance(error, KeyboardInterrupt) or self._signals.signum is not None
            # Before the optimizer step the parameters and optimizer state are still those of the
            # last completed iteration; BN running statistics and the RNG streams may already
            # include part of the interrupted forward pass, so resuming from this checkpoint is
            # not bit-exact (stopping on a signal between iterations is).
            if self._phase == "forward" and interrupted:
                self.optimizer.zero_grad(set_to_none=True)
                self._stop_with_checkpoint(capture_rng_state(self.device), error)
            raise
        finally:
            self._phase = "hooks"
        self._meter.add(self.iteration, entries, images * distributed.get_world_size())

    def _step(self, batches: Iterator[Any]) -> tuple[list[dict[str, torch.Tensor]], int]:
        """One optimizer step over ``grad_accum`` batches; returns the logged entries and images."""
        self._lr = self.schedule.apply(self.optimizer, self.iteration)
        entries, images = [], 0
        for micro in range(self.grad_accum):
            inputs, targets = prepare_batch(
                next(batches), self.device, channels_last=self.channels_last
            )
            last = micro == self.grad_accum - 1
            # Only the last batch's backward all-reduces the accumulated gradients (the DDP
            # module sits under torch.compile's wrapper when compiled).
            no_sync = isinstance(self._eager_model, DistributedDataParallel) and not last
            with self._eager_model.no_sync() if no_sync else contextlib.nullcontext():
                with autocast(self.device, self.amp):
                    outputs = self._forward(inputs, targets)
                loss = total_loss(outputs)
                self.scaler.scale(loss / self.grad_accum).backward()
            entries.append({**outputs, "loss": loss})
            images += batch_size_of(inputs)
        self._phase = "update"
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.iteration += 1
        return entries, images

    def _forward(self, inputs: Any, targets: Any) -> dict[str, torch.Tensor]:
        try:
            return self.train_model(inputs, targets)
        except torch._dynamo.exc.TorchDynamoException as error:
            if self.train_model is self._eager_model:
                raise
            # Compiling happens at the first call and again for new input shapes (detection).
            if self.is_main:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                print(
                    f"train.compile: torch.compile cannot compile {type(self.model).__name__} "
                    f"({type(error).__name__}: {first_line}); training goes on without it",
                    file=sys.stderr,
                    flush=True,
                )
            self.train_model = self._eager_model
            return self.train_model(inputs, targets)

    # ---------------------------------------------------------------- after a step

    def _after_step(self) -> None:
        if self._check_every_iteration:
            self.check_finite()
        if due(self.iteration, self.log_period, self.at_end):
            self._log_train()
        started = time.perf_counter()
        self._call("after_step")
        # Checkpoints and evaluations are left out of the throughput.
        self._meter.exclude(time.perf_counter() - started)
        self._progress.update(self.iteration)

    def check_finite(self) -> None:
        """Raise ``NonFiniteLossError`` if a loss since the last check was NaN or infinite.

        Collective (all ranks stop together); checked at most once per iteration.
        """
        if self._finite_at == self.iteration:
            return
        self._finite_at = self.iteration
        self._meter.raise_if_non_finite(
            "no checkpoint was written in this run"
            if self.saved_at is None
            else f"{self.checkpoint_path} (iteration {self.saved_at}) is the last good one"
        )

    def _log_train(self) -> None:
        self.check_finite()
        means = distributed.all_reduce_mean(dict(sorted(self._meter.means().items())))
        img_per_s, seconds_per_iter = self._meter.throughput()
        record: dict[str, Any] = {
            "type": "train",
            "iter": self.iteration,
            "epoch": self.train_loader.epoch_of(self.iteration * self.grad_accum),
            "lr": self._lr,
            "loss": means.pop("loss"),
            **means,
            "img_per_s": img_per_s,
            "time": seconds_per_iter,
        }
        for hook in self.hooks:
            hook.on_train_record(self, record)
        self.metrics_log.write(record)
        self._progress.log_train(record)
        self._meter.reset()

    def record_eval(self, metrics: Mapping[str, float]) -> None:
        """Log an evaluation's metrics (rank 0's, on every rank) and pass them to the hooks."""
        # Every rank must take the same decisions, even if only rank 0 computed metrics.
        metrics = distributed.broadcast_from_main(dict(metrics))
        self.last_eval = metrics
        self.evaluated_at = self.iteration
        record = {"type": "eval", "iter": self.iteration, **metrics}
        self.metrics_log.write(record)
        self._progress.log_eval(record)
        for hook in self.hooks:
            hook.after_eval(self, metrics)

    # ---------------------------------------------------------------- checkpoints

    def _state(self, rng: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "epoch": self.train_loader.epoch_of(self.iteration * self.grad_accum),
            "rng": rng,
            "meta": self.checkpoint_meta,
            "trainer": {
                "meter": self._meter.state_dict(),
                "last_eval": dict(self.last_eval),
                "evaluated_at": self.evaluated_at,
            },
            "hooks": {hook.name: hook.state_dict() for hook in self.hooks},
        }

    def save_checkpoint(self, path: str | Path | None = None) -> None:
        """Write ``last.pt`` (or ``path``; rank 0) with the state after ``iteration`` steps,
        RNGs included; refuses (``NonFiniteLossError``) a state reached through a non-finite
        loss. Returns once the state is copied; ``wait_for_checkpoint`` waits for the file."""
        self.check_finite()
        if path is None:
            self._save(capture_rng_state(self.device))
        elif self.is_main:  # another file (best.pt): last.pt's bookkeeping stays as it is
            self._writer.save(path, self._state(capture_rng_state(self.device)))

    def _save(self, rng: dict[str, Any]) -> None:
        if self.is_main:  # written in the background (CheckpointWriter)
            self._writer.save(self.checkpoint_path, self._state(rng))
        self.saved_at = self.iteration

    def wait_for_checkpoint(self) -> None:
        """Block until the last checkpoint is on disk (``fit`` does before it returns)."""
        self._writer.wait()

    def _stop_with_checkpoint(
        self, rng: dict[str, Any], error: BaseException | None = None
    ) -> NoReturn:
        """Save the last completed iteration (unless just saved), say where, and stop."""
        if self.saved_at != self.iteration:
            self._save(rng)
        self._writer.wait()
        sigterm = self._signals.signum == signal.SIGTERM
        if self.is_main:
            print(
                f"{'SIGTERM' if sigterm else 'interrupted'}: stopped after iteration "
                f"{self.iteration}/{self.max_iters} and saved {self.checkpoint_path}; to "
                f"continue, resume from it (--resume {self.checkpoint_path}, Trainer.resume)",
                file=sys.stderr,
                flush=True,
            )
        if sigterm:
            raise SystemExit(128 + signal.SIGTERM) from error
        if isinstance(error, KeyboardInterrupt):
            raise error
        raise KeyboardInterrupt from error

    def resume(self, path: str | Path) -> None:
        """Continue from checkpoint ``path``: model, optimizer, schedule, scaler, iteration, RNGs.

        Refuses (``ValueError``) a checkpoint whose ``task`` or ``model`` metadata differs from
        this run's ``checkpoint_meta``. Records of ``metrics.jsonl`` after the checkpoint's
        iteration are removed, so the log continues as if the run had never stopped.
        """
        path = Path(path)
        state = load_checkpoint(path)
        check_same_run(state["meta"], self.checkpoint_meta, path)
        if state["iteration"] > self.max_iters:
            raise ValueError(
                f"checkpoint {path} is at iteration {state['iteration']}, beyond this run's "
                f"max_iters {self.max_iters}: raise max_iters to continue training"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise ValueError(
                f"checkpoint {path} does not fit this model/optimizer ({error}); was it written "
                "with another architecture or optimizer setting?"
            ) from error
        self.schedule.load_state_dict(state["schedule"])
        if state["scaler"]:  # empty when the checkpoint's run had no fp16 scaler
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = state["iteration"]
        restore_rng_state(state["rng"], self.device)
        self._meter.load_state_dict(state["trainer"]["meter"])
        self.last_eval = dict(state["trainer"]["last_eval"])
        self.evaluated_at = state["trainer"]["evaluated_at"]
        for hook in self.hooks:
            hook.load_state_dict(state.get("hooks", {}).get(hook.name, {}))
        if path.resolve() == self.checkpoint_path.resolve():
            self.saved_at = self.iteration
        self.metrics_log.truncate_after(self.iteration)
