"""The detectron2 fixture (imported by the tests by its bare name): recorded outputs, and the
weights regenerated from their recipe."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

FIXTURE = Path(__file__).parents[1] / "fixtures" / "detectron2"


def record(name: str) -> dict:
    """The fixture JSON of one model (recipe, settings, detectron2's outputs)."""
    return json.loads((FIXTURE / f"{name}.json").read_text())


def detectron2_state(recorded: dict) -> dict[str, torch.Tensor]:
    """The detectron2 state dict of a record, from its recipe (synthetic_weights.py)."""
    spec = importlib.util.spec_from_file_location(
        "synthetic_weights", FIXTURE / "synthetic_weights.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.synthetic_state(recorded["recipe"])
