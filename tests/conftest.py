"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread for the test, then as before.

    Small models and tensors on the shared 2-core machine: a second OpenMP thread competing
    with other jobs only waits (30 ms per op on toy tensors; an R18-FPN training step ran 5x
    slower, 0.15 s vs 0.9 s forward).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# The thread policy (resdet.engine.threads) sizes torch's threads from the cores other work
# leaves free, which would differ between the halves of the suite's exact-resume comparisons
# on a busy machine; a fixed count, as OMP_NUM_THREADS sets it, keeps them comparable.
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
