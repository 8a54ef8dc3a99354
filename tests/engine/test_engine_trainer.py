"""The training loop: learning, exact resumption, NaN stops, interruptions, logs and AMP."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_toys import ToyAccuracy, ToyImages, ToyNet

from resdet.data.loader import TrainLoader, build_eval_loader
from resdet.engine import checkpoint as checkpoint_module
from resdet.engine.checkpoint import load_checkpoint
from resdet.engine.ema import ModelEMA
from resdet.engine.evaluate import inference
from resdet.engine.hooks import BestCheckpoint, CountedImages, Evaluation, Hook, lower_is_better
from resdet.engine.optim import build_sgd
from resdet.engine.progress import NonFiniteLossError
from resdet.engine.schedule import CosineSchedule, Warmup
from resdet.engine.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


META = {"task": "classification", "model": "toy", "config": {"lr": 0.1}, "dataset": "toy"}
CPU = torch.device("cpu")


def build(
    out_dir: Path,
    *,
    workers: int = 0,
    max_iters: int = 24,
    checkpoint_period: int | None = 4,
    meta: dict[str, Any] = META,
    amp: str = "off",
    grad_accum: int = 1,
    hooks: tuple[Any, ...] | list[Any] = (),
    compile_model: bool = False,
    **model_options: Any,
) -> Trainer:
    """A 24-iteration run on 64 toy images (8 batches of 8 per epoch), seeded like a real run."""
    torch.manual_seed(0)
    model = ToyNet(**model_options)
    val_loader = build_eval_loader(ToyImages(32, seed=5), batch_size=16)
    return Trainer(
        model,
        build_sgd(model, lr=0.1),
        CosineSchedule(0.1, max_iters=max_iters, warmup=Warmup("linear", 0.1, 4)),
        TrainLoader(ToyImages(64), batch_size=8, seed=1, num_workers=workers),
        max_iters=max_iters,
        out_dir=out_dir,
        device="cpu",
        amp=amp,  # type: ignore[arg-type]
        channels_last=True,
        grad_accum=grad_accum,
        log_period=5,
        eval_period=6,
        checkpoint_period=checkpoint_period,
        evaluate=lambda model: inference(model, val_loader, ToyAccuracy(), CPU),
        checkpoint_meta=meta,
        hooks=hooks,
        compile_model=compile_model,
    )


def keep_checkpoint_of(monkeypatch: pytest.MonkeyPatch, iteration: int, copy: Path) -> None:
    """Copy the checkpoint written at ``iteration`` to ``copy`` (last.pt is overwritten later)."""
    real_save = checkpoint_module.save_checkpoint

    def save_and_keep(path: Path, state: dict[str, Any]) -> None:
        real_save(path, state)
        if state["iteration"] == iteration:
            shutil.copy(path, copy)

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", save_and_keep)


def records(out_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock entries, which differ between runs."""
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [
        {k: v for k, v in json.loads(line).items() if k not in ("img_per_s", "time")}
        for line in lines
    ]


def assert_same_parameters(a: Trainer, b: Trainer) -> None:
    state_a, state_b = a.model.state_dict(), b.model.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def test_loss_falls_and_metrics_follow_the_contract(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = build(tmp_path, max_iters=60)
    metrics = trainer.fit()
    train = [r for r in records(tmp_path) if r["type"] == "train"]
    evals = [r for r in records(tmp_path) if r["type"] == "eval"]
    assert [r["iter"] for r in train] == list(range(5, 61, 5))
    assert [r["iter"] for r in evals] == list(range(6, 61, 6))
    assert list(train[0]) == ["type", "iter", "epoch", "lr", "loss", "loss_cls", "top1_err"]
    assert train[-1]["epoch"] == 60 // 8
    # The toy task is learnable: the loss of the last period is well below the first one's.
    assert train[-1]["loss"] < 0.7 * train[0]["loss"]
    assert metrics == {"top1_err": evals[-1]["top1_err"]}
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 60
    # Not a terminal: one plain line per log period.
    out = capsys.readouterr().out
    assert "iter 5/60  epoch 0  loss " in out and "eval @ iter 60: top1_err" in out


def test_hooks_run_in_order_add_to_records_and_resume_with_their_state(tmp_path: Path) -> None:
    class Counting(Hook):
        """Counts its steps (state kept in checkpoints) and records what it was called with."""

        def __init__(self) -> None:
            self.steps, self.events = 0, []

        def before_train(self, trainer: Trainer) -> None:
            self.events.append(("before_train", trainer.iteration))

        def after_step(self, trainer: Trainer) -> None:
            self.steps += 1
            # Runs before the trainer's checkpoint and evaluation hooks of this iteration.
            assert trainer.saved_at != trainer.iteration
            assert trainer.evaluated_at != trainer.iteration

        def after_eval(self, trainer: Trainer, metrics: Any) -> None:
            self.events.append(("eval", trainer.iteration))

        def after_train(self, trainer: Trainer) -> None:
            self.events.append(("after_train", trainer.iteration))

        def state_dict(self) -> dict[str, Any]:
            return {"steps": self.steps}

        def load_state_dict(self, state: Any) -> None:
            self.steps = state["steps"]

    counting, skipped = Counting(), [0]
    hooks = [counting, CountedImages("skipped_images", lambda: skipped[0])]
    trainer = build(tmp_path, max_iters=8, hooks=hooks)
    skipped[0] = 3  # as ImageFolderDataset counts unreadable files
    trainer.fit()
    assert counting.events == [("before_train", 0), ("eval", 6), ("eval", 8), ("after_train", 8)]
    train = [r for r in records(tmp_path) if r["type"] == "train"]
    assert [r["skipped_images"] for r in train] == [3, 3]

    resumed = Counting()
    again = build(tmp_path / "b", max_iters=10, hooks=[resumed])
    again.resume(tmp_path / "last.pt")
    assert resumed.steps == 8  # from the checkpoint's hook state
    again.fit()
    assert resumed.steps == 10


def test_counted_images_continue_their_total_after_a_resume() -> None:
    first, record = CountedImages("skipped_images", lambda: 2), {}
    first.on_train_record(None, record)  # type: ignore[arg-type]  # the trainer is not read
    resumed, again = CountedImages("skipped_images", lambda: 1), {}
    resumed.load_state_dict(first.state_dict())
    resumed.on_train_record(None, again)  # type: ignore[arg-type]
    assert (record["skipped_images"], again["skipped_images"]) == (2, 3)


def test_hook_names_must_be_unique(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hook names must be unique"):
        build(
            tmp_path,
            hooks=[
                CountedImages("skipped_images", lambda: 0),
                CountedImages("skipped_images", lambda: 0),
            ],
        )


@pytest.mark.parametrize(("workers_first", "workers_resumed"), [(0, 0), (2, 2), (0, 2)])
def test_resumed_run_is_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers_first: int, workers_resumed: int
) -> None:
    keep_checkpoint_of(monkeypatch, 14, tmp_path / "mid.pt")
    # Iteration 14 is mid-epoch (8 batches per epoch) and mid log period (every 5).
    first = build(tmp_path / "first", workers=workers_first, checkpoint_period=7)
    first_metrics = first.fit()
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    # The full log of the first run: resuming must drop its records after iteration 14.
    shutil.copy(tmp_path / "first" / "metrics.jsonl", resumed_dir / "metrics.jsonl")
    resumed = build(resumed_dir, workers=workers_resumed, checkpoint_period=7)
    resumed.resume(tmp_path / "mid.pt")
    assert resumed.iteration == 14
    assert resumed.fit() == first_metrics
    assert_same_parameters(first, resumed)
    assert records(resumed_dir) == records(tmp_path / "first")


def test_nan_loss_stops_before_any_checkpoint_of_the_poisoned_state(tmp_path: Path) -> None:
    trainer = build(tmp_path, nan_at=7, checkpoint_period=5)
    with pytest.raises(NonFiniteLossError, match=r"iteration 7 .*loss_cls=nan") as error:
        trainer.fit()
    assert "last.pt (iteration 5) is the last good one" in str(error.value)
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 5
    assert max(r["iter"] for r in records(tmp_path)) == 6  # the eval at 6 ran, nothing after


def test_deferred_nan_check_of_gpu_runs_still_names_the_iteration(tmp_path: Path) -> None:
    trainer = build(tmp_path, nan_at=7, checkpoint_period=10)
    trainer._check_every_iteration = False  # as on CUDA: checked at logs, evals, checkpoints
    with pytest.raises(NonFiniteLossError, match=r"iteration 7 "):
        trainer.fit()
    assert trainer.iteration == 10
    assert not (tmp_path / "last.pt").exists()


def test_keyboard_interrupt_inside_a_step_saves_a_checkpoint_that_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_save = checkpoint_module.save_checkpoint
    saved: dict[int, dict[str, Any]] = {}

    def save_and_remember(path: Path, state: dict[str, Any]) -> None:
        real_save(path, state)
        saved[state["iteration"]] = load_checkpoint(path)

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", save_and_remember)
    build(tmp_path / "reference", checkpoint_period=9).fit()
    run_dir = tmp_path / "run"
    # The 10th forward pass has run its BN layer and drawn its dropout mask when Ctrl-C arrives.
    with pytest.raises(KeyboardInterrupt):
        build(run_dir, interrupt_at=10).fit()
    assert (
        f"stopped after iteration 9/24 and saved {run_dir / 'last.pt'}" in capsys.readouterr().err
    )
    state = load_checkpoint(run_dir / "last.pt")
    assert state["iteration"] == 9
    # Parameters and momentum are those of iteration 9 (BN statistics may include step 10).
    for name, _ in ToyNet().named_parameters():
        assert torch.equal(state["model"][name], saved[9]["model"][name]), name
    momentum = [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]
    expected = [s["momentum_buffer"] for s in saved[9]["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, expected, strict=True))
    resumed = build(run_dir)
    resumed.resume(run_dir / "last.pt")
    resumed.fit()
    assert [r["iter"] for r in records(run_dir)] == [
        r["iter"] for r in records(tmp_path / "reference")
    ]


def test_sigterm_finishes_the_iteration_then_saves_and_exits(tmp_path: Path) -> None:
    reference = build(tmp_path / "reference")
    reference.fit()
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        build(run_dir, sigterm_at=10).fit()
    assert stop.value.code == 143
    assert load_checkpoint(run_dir / "last.pt")["iteration"] == 10
    resumed = build(run_dir)
    resumed.resume(run_dir / "last.pt")
    resumed.fit()
    assert_same_parameters(reference, resumed)


def test_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    build(tmp_path / "a", max_iters=4).fit()
    other = build(tmp_path / "b", meta={**META, "model": "toy_wide"})
    with pytest.raises(ValueError, match="model 'toy', but this run's model is 'toy_wide'"):
        other.resume(tmp_path / "a" / "last.pt")


def test_gradient_accumulation_consumes_several_batches_per_step(tmp_path: Path) -> None:
    trainer = build(tmp_path, max_iters=8, grad_accum=2)
    trainer.fit()
    train = [r for r in records(tmp_path) if r["type"] == "train"]
    # 8 steps x 2 batches = 16 batches = 2 epochs of 8 batches.
    assert train[-1]["iter"] == 8 and train[-1]["epoch"] == 2


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_and_resumes(tmp_path: Path, amp: str) -> None:
    trainer = build(tmp_path, amp=amp, max_iters=6)
    seen = []  # what the model's forward ran under
    trainer.model.register_forward_hook(
        lambda module, inputs, output: seen.append(
            (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        )
    )
    trainer.fit()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    assert seen and all(entry == (True, dtype) for entry in seen[:6])  # the training steps
    assert all(math.isfinite(r["loss"]) for r in records(tmp_path) if r["type"] == "train")
    resumed = build(tmp_path, amp=amp, max_iters=8)
    resumed.resume(tmp_path / "last.pt")
    assert resumed.scaler.state_dict() == trainer.scaler.state_dict()
    resumed.fit()


def test_inference_restores_train_mode_and_feeds_the_evaluator() -> None:
    torch.manual_seed(0)
    model = ToyNet().train()
    dataset = ToyImages(20, seed=3)
    loader = build_eval_loader(dataset, batch_size=8)
    metrics = inference(model, loader, ToyAccuracy(), CPU, channels_last=True)
    assert model.training
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(dataset.images))
    expected = (logits.argmax(1).numpy() != dataset.labels).mean()
    assert metrics["top1_err"] == pytest.approx(expected)


def test_failed_final_evaluation_keeps_the_trained_state_and_resume_evaluates(
    tmp_path: Path,
) -> None:
    trainer = build(tmp_path, checkpoint_period=None)
    (evaluation,) = [hook for hook in trainer.hooks if isinstance(hook, Evaluation)]
    evaluate = evaluation.evaluate

    def fails_at_the_end(model: torch.nn.Module) -> dict[str, float]:
        if trainer.iteration == trainer.max_iters:
            raise RuntimeError("out of memory")
        return evaluate(model)

    evaluation.evaluate = fails_at_the_end
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 24  # not lost with the eval

    resumed = build(tmp_path, checkpoint_period=None)
    resumed.resume(tmp_path / "last.pt")
    metrics = resumed.fit()
    assert metrics and [r["iter"] for r in records(tmp_path) if r["type"] == "eval"][-1] == 24
    assert load_checkpoint(tmp_path / "last.pt")["trainer"]["evaluated_at"] == 24


class Wrapped(torch.nn.Module):
    """What torch.compile returns: a module around the model."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> Any:
        return self.model(*args)


def test_compiled_training_goes_through_torch_compile(tmp_path: Path, monkeypatch) -> None:
    compiled: list[torch.nn.Module] = []

    def fake_compile(model: torch.nn.Module) -> torch.nn.Module:  # as fast as eager, here
        compiled.append(model)
        return Wrapped(model)

    monkeypatch.setattr(torch, "compile", fake_compile)
    trainer = build(tmp_path / "compiled", compile_model=True, max_iters=6)
    assert compiled == [trainer.model]
    trainer.fit()
    eager = build(tmp_path / "eager", max_iters=6)
    eager.fit()
    assert records(tmp_path / "compiled") == records(tmp_path / "eager")


def test_a_model_torch_compile_cannot_compile_trains_as_it_is(tmp_path: Path, monkeypatch, capsys):
    from torch._dynamo.exc import TorchDynamoException

    class Failing(Wrapped):
        def forward(self, *args: Any) -> Any:
            raise TorchDynamoException("graph break in a data-dependent branch")

    monkeypatch.setattr(torch, "compile", Failing)
    trainer = build(tmp_path / "compiled", compile_model=True, max_iters=6)
    trainer.fit()
    assert "torch.compile cannot compile ToyNet (TorchDynamoException: graph break" in (
        capsys.readouterr().err
    )
    build(tmp_path / "eager", max_iters=6).fit()
    assert records(tmp_path / "compiled") == records(tmp_path / "eager")


def scripted(trainer: Trainer, values: list[float]) -> None:
    """Make the trainer's evaluations report ``values`` as top1_err, in turn."""
    sequence = iter(values)
    evaluation = next(hook for hook in trainer.hooks if isinstance(hook, Evaluation))
    evaluation.evaluate = lambda model: {"top1_err": next(sequence)}


def test_best_pt_follows_the_best_evaluation(tmp_path: Path) -> None:
    trainer = build(tmp_path, hooks=[BestCheckpoint("top1_err")])  # evaluations at 6, 12, 18, 24
    scripted(trainer, [0.5, 0.3, 0.4, 0.35])
    trainer.fit()
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["iteration"] == 12 and best["trainer"]["last_eval"] == {"top1_err": 0.3}
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 24
    rows = [r for r in records(tmp_path) if r["type"] == "best"]
    assert [(r["iter"], r["value"]) for r in rows] == [(6, 0.5), (12, 0.3)]

    # Resumed, the hook remembers 0.3: a worse evaluation leaves best.pt alone, a better one not.
    again = build(tmp_path, max_iters=36, hooks=[BestCheckpoint("top1_err")])
    again.resume(tmp_path / "last.pt")
    scripted(again, [0.32, 0.1])
    again.fit()
    assert load_checkpoint(tmp_path / "best.pt")["iteration"] == 36


def test_best_metric_directions_and_unknown_names(tmp_path: Path) -> None:
    assert lower_is_better("top1_err") and lower_is_better("loss_cls")
    assert not any(map(lower_is_better, ["bbox/AP", "segm/AP50", "voc/mAP", "bbox/AR100"]))
    with pytest.raises(ValueError, match="cannot tell whether higher or lower is better"):
        BestCheckpoint("accuracy-ish")
    trainer = build(tmp_path, max_iters=6, hooks=[BestCheckpoint("bbox/AP")])
    with pytest.raises(ValueError, match=r"not a metric of this run's evaluation.*top1_err"):
        trainer.fit()


class Recorder(Hook):
    """Keeps a copy of the model's state before training and after every step."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def _keep(self, trainer: Trainer) -> None:
        self.states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})

    before_train = after_step = _keep


def test_ema_is_the_warmed_up_average_of_the_trained_weights(tmp_path: Path) -> None:
    recorder, ema = Recorder(), ModelEMA(0.9)
    build(tmp_path, max_iters=8, hooks=[recorder, ema]).fit()
    expected = {k: v.clone() for k, v in recorder.states[0].items()}
    for step, state in enumerate(recorder.states[1:]):
        d = min(0.9, (1 + step) / (10 + step))
        for name, value in state.items():
            if value.dtype.is_floating_point:
                expected[name] = d * expected[name] + (1 - d) * value
            else:
                expected[name] = value
    averaged = ema.model.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(averaged[name], value, rtol=1e-5, atol=1e-6)
    assert ema.updates == 8


def test_a_resumed_run_continues_the_same_average(tmp_path: Path, monkeypatch) -> None:
    keep_checkpoint_of(monkeypatch, 12, tmp_path / "mid.pt")
    whole = ModelEMA(0.99)
    build(tmp_path / "whole", hooks=[whole]).fit()
    resumed = ModelEMA(0.99)
    trainer = build(tmp_path / "resumed", hooks=[resumed])
    trainer.resume(tmp_path / "mid.pt")
    trainer.fit()
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert resumed.updates == whole.updates == 24
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tensorboard_curves_continue_across_a_resume(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("tensorboard", reason='pip install "resdet[tensorboard]"')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from resdet.engine.tensorboard import TensorBoard

    keep_checkpoint_of(monkeypatch, 12, tmp_path / "mid.pt")

    def curves() -> dict[str, list[tuple[int, float]]]:
        events = EventAccumulator(str(tmp_path / "tb")).Reload()
        return {
            tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]
        }

    build(tmp_path, hooks=[TensorBoard(tmp_path / "tb")]).fit()
    whole = curves()
    assert [step for step, _ in whole["train/loss"]] == [5, 10, 15, 20, 24]
    assert [step for step, _ in whole["eval/top1_err"]] == [6, 12, 18, 24]
    assert {"train/lr", "train/img_per_s"} <= set(whole)

    # Resuming at 12 drops the events after it, then writes them again.
    trainer = build(tmp_path, hooks=[TensorBoard(tmp_path / "tb")])
    trainer.resume(tmp_path / "mid.pt")
    trainer.fit()
    again = curves()
    assert [step for step, _ in again["train/loss"]] == [5, 10, 15, 20, 24]
    assert again["eval/top1_err"] == whole["eval/top1_err"]
