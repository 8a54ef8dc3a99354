"""Learning-rate schedules: values at chosen iterations, computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from resdet.engine.schedule import (
    CosineSchedule,
    PlateauSchedule,
    StepSchedule,
    Warmup,
)


def test_step_schedule_divides_by_ten_at_the_cifar_milestones() -> None:
    # CIFAR-10 recipe, paper section 4.2: lr 0.1, /10 at 32k and 48k iterations.
    schedule = StepSchedule(0.1, milestones=[32000, 48000])
    assert schedule.lr_at(0) == pytest.approx(0.1)
    assert schedule.lr_at(31999) == pytest.approx(0.1)
    assert schedule.lr_at(32000) == pytest.approx(0.01)
    assert schedule.lr_at(47999) == pytest.approx(0.01)
    assert schedule.lr_at(48000) == pytest.approx(0.001)


def test_constant_warmup_of_resnet110() -> None:
    # Paper section 4.2: ResNet-110 uses lr 0.01 for about 400 iterations, then 0.1.
    schedule = StepSchedule(0.1, [32000, 48000], warmup=Warmup("constant", 0.1, 400))
    assert schedule.lr_at(0) == pytest.approx(0.01)
    assert schedule.lr_at(399) == pytest.approx(0.01)
    assert schedule.lr_at(400) == pytest.approx(0.1)
    assert schedule.lr_at(32000) == pytest.approx(0.01)


def test_linear_warmup_ramps_from_factor_to_one() -> None:
    # By hand: factor * (1 - i/n) + i/n with factor 0.001, n 1000.
    schedule = StepSchedule(0.1, [2000], warmup=Warmup("linear", 0.001, 1000))
    assert schedule.lr_at(0) == pytest.approx(0.1 * 0.001)
    assert schedule.lr_at(500) == pytest.approx(0.1 * (0.001 * 0.5 + 0.5))
    assert schedule.lr_at(1000) == pytest.approx(0.1)
    assert schedule.lr_at(2000) == pytest.approx(0.01)


def test_cosine_schedule_values() -> None:
    # By hand: final + (base - final) * (1 + cos(pi * i / n)) / 2.
    schedule = CosineSchedule(0.1, max_iters=100)
    assert schedule.lr_at(0) == pytest.approx(0.1)
    assert schedule.lr_at(25) == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)) / 2)
    assert schedule.lr_at(50) == pytest.approx(0.05)
    assert schedule.lr_at(100) == pytest.approx(0.0, abs=1e-12)
    assert schedule.lr_at(150) == pytest.approx(0.0, abs=1e-12)
    floor = CosineSchedule(0.1, max_iters=100, final_lr=0.01)
    assert floor.lr_at(50) == pytest.approx(0.01 + 0.09 * 0.5)
    warm = CosineSchedule(0.1, max_iters=100, warmup=Warmup("linear", 0.5, 10))
    # At iteration 5: warm-up factor 0.5 * 0.5 + 0.5 = 0.75 times the cosine value.
    assert warm.lr_at(5) == pytest.approx(0.75 * 0.1 * (1 + math.cos(math.pi * 0.05)) / 2)


def test_plateau_divides_by_ten_after_patience_is_exceeded() -> None:
    schedule = PlateauSchedule(0.1, metric="top1_err", patience=1, min_delta=0.01)
    lrs = []
    for error in (0.50, 0.45, 0.445, 0.442, 0.441, 0.30, 0.30, 0.30):
        schedule.step({"top1_err": error})
        lrs.append(schedule.lr_at(0))
    # By hand: 0.445 and 0.442 improve on 0.45 by less than min_delta; the second such evaluation
    # exceeds patience 1 and divides the rate; 0.30 improves; two more stalls divide again.
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01, 0.001])
    restored = PlateauSchedule(0.1, metric="top1_err", patience=1, min_delta=0.01)
    restored.load_state_dict(schedule.state_dict())
    assert restored.lr_at(0) == pytest.approx(0.001)
    assert restored.state_dict() == {
        "warmup_ended_at": None,
        "best": 0.30,
        "bad_evals": 0,
        "reductions": 2,
    }


def test_plateau_in_max_mode_and_with_a_missing_metric() -> None:
    schedule = PlateauSchedule(0.02, metric="bbox/AP", mode="max", patience=0)
    schedule.step({"bbox/AP": 0.30})
    schedule.step({"bbox/AP": 0.35})
    assert schedule.lr_at(0) == pytest.approx(0.02)
    schedule.step({"bbox/AP": 0.34})
    assert schedule.lr_at(0) == pytest.approx(0.002)
    with pytest.raises(KeyError, match="bbox/AP.*top1_err"):
        schedule.step({"top1_err": 0.5})


def test_apply_sets_every_parameter_group() -> None:
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=1.0)
    lr = StepSchedule(0.1, [10]).apply(optimizer, 10)
    assert lr == pytest.approx(0.01)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.01, 0.01])


def test_invalid_warmup_is_refused() -> None:
    with pytest.raises(ValueError, match="'linear' or 'constant'"):
        Warmup("exponential", 0.1, 10)  # type: ignore[arg-type]


def test_warmup_until_the_training_error_is_below_80_percent():
    # Paper 4.2 (ResNet-110): lr 0.01 "until the training error is below 80% (about 400
    # iterations), and then go back to 0.1"; warmup iters is the longest it may last.
    warmup = Warmup("constant", 0.1, 2000, until_train_err=0.8)
    schedule = StepSchedule(0.1, [32000, 48000], warmup=warmup)
    schedule.observe_train(300, {"loss": 2.1, "top1_err": 0.85})
    assert schedule.lr_at(350) == pytest.approx(0.01)
    schedule.observe_train(400, {"loss": 1.9, "top1_err": 0.79})
    assert schedule.lr_at(399) == pytest.approx(0.01) and schedule.lr_at(400) == pytest.approx(0.1)
    schedule.observe_train(500, {"top1_err": 0.9})  # once ended, it stays ended
    assert schedule.lr_at(500) == pytest.approx(0.1)
    resumed = StepSchedule(0.1, [32000, 48000], warmup=warmup)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.lr_at(400) == pytest.approx(0.1) and resumed.lr_at(399) == pytest.approx(0.01)
    never = StepSchedule(0.1, [32000], warmup=warmup)  # error never falls: ends at iters
    assert never.lr_at(1999) == pytest.approx(0.01) and never.lr_at(2000) == pytest.approx(0.1)
    with pytest.raises(KeyError, match="drop warmup_until_train_err"):
        never.observe_train(100, {"loss": 1.0})
