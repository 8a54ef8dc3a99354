"""The train-mode model contract: a dict of entries whose ``loss*`` ones are summed.

See docs/design.md#models.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def total_loss(outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The sum of a train-mode model's ``loss*`` entries, in float32."""
    if not isinstance(outputs, Mapping):
        raise TypeError(
            f"in train mode the model must return a dict of losses, got {type(outputs).__name__}"
        )
    losses = [value for key, value in outputs.items() if key.startswith("loss")]
    if not losses:
        raise ValueError(
            f"the model returned {sorted(outputs)} in train mode; at least one entry must be "
            "a loss whose name starts with 'loss' (docs/design.md#models)"
        )
    return torch.stack([loss.float() for loss in losses]).sum()
