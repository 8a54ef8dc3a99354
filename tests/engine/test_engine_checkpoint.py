"""Checkpoint files: atomic writes, clear errors, RNG states that survive weights_only loading."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from resdet.engine import checkpoint
from resdet.engine.checkpoint import (
    capture_rng_state,
    check_plain,
    check_same_run,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def test_round_trip_adds_format_and_version(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "last.pt"
    save_checkpoint(path, {"iteration": 3, "model": {"w": torch.arange(4.0)}})
    state = load_checkpoint(path)
    assert state["iteration"] == 3
    assert torch.equal(state["model"]["w"], torch.arange(4.0))
    assert state["format"] == "resdet-checkpoint"
    assert state["resdet_version"] == checkpoint.resdet_version()
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_interrupted_write_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"iteration": 1})
    real_save = torch.save

    def crash_half_way(obj: object, f: Path) -> None:
        real_save(obj, f)
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"iteration": 2, "model": {"w": torch.zeros(1000)}})
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_corrupted_and_foreign_files_are_named(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pt"
    save_checkpoint(truncated, {"iteration": 1, "model": {"w": torch.zeros(100)}})
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.pt: it is truncated, corrupted"):
        load_checkpoint(truncated)
    foreign = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1)}, foreign)
    with pytest.raises(ValueError, match="weights.pt is a torch file but not a resdet training"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_states_survive_a_weights_only_round_trip(tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    np.random.normal()  # leaves a cached Gaussian in numpy's legacy state
    save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state(cpu)})
    expected = (torch.rand(3), np.random.normal(size=3), [random.random() for _ in range(3)])
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"], cpu)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.normal(size=3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_metadata_must_be_plain_data() -> None:
    check_plain({"config": {"lr": 0.1, "milestones": [1, 2], "root": None}, "task": "cls"})
    with pytest.raises(TypeError, match=r"checkpoint_meta.config.root is a PosixPath"):
        check_plain({"config": {"root": Path("/data")}})


def test_a_checkpoint_of_another_model_is_refused() -> None:
    saved = {"task": "classification", "model": "cifar_resnet20"}
    check_same_run(saved, {**saved, "config": {"lr": 0.2}}, "last.pt")
    with pytest.raises(
        ValueError, match="model 'cifar_resnet20', but this run's model is 'cifar_resnet56'"
    ):
        check_same_run(saved, {**saved, "model": "cifar_resnet56"}, "last.pt")


def test_background_writes_keep_the_state_of_the_moment_they_were_asked(tmp_path):
    from resdet.engine.checkpoint import CheckpointWriter

    writer, weights = CheckpointWriter(), torch.zeros(4)
    writer.save(tmp_path / "a.pt", {"model": {"w": weights}, "iteration": 1})
    weights += 1  # training goes on while the file is written
    writer.save(tmp_path / "b.pt", {"model": {"w": weights}, "iteration": 2})
    writer.wait()
    assert torch.equal(load_checkpoint(tmp_path / "a.pt")["model"]["w"], torch.zeros(4))
    assert torch.equal(load_checkpoint(tmp_path / "b.pt")["model"]["w"], torch.ones(4))


def test_a_failed_background_write_is_raised_where_training_waits(tmp_path):
    from resdet.engine.checkpoint import CheckpointWriter

    writer, path = CheckpointWriter(), tmp_path / "last.pt"
    path.mkdir()  # a folder in the way: the final rename fails
    writer.save(path, {"iteration": 1})
    with pytest.raises(OSError, match="writing checkpoint .*last.pt failed"):
        writer.wait()
    writer.wait()  # reported once
