"""Training checkpoints: one file, written atomically, loadable with ``weights_only=True``.

A checkpoint is a dict holding ``format`` (``"resdet-checkpoint"``), ``format_version``,
``resdet_version`` and what the trainer saves: ``model``, ``optimizer``, ``schedule``,
``scaler``, ``iteration``, ``epoch``, ``rng``, ``meta`` (config, task, model, dataset) and
``trainer`` (logging accumulators and the last evaluation). Only tensors, numbers, strings,
``None`` and dicts/lists/tuples of them are stored, so ``torch.load(weights_only=True)``, which
executes no code from the file, can read it.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resdet.files import write_atomically

FORMAT = "resdet-checkpoint"
FORMAT_VERSION = 1
# Checkpoint metadata that must match for a run to resume from a checkpoint.
IDENTITY_KEYS = ("task", "model")


def resdet_version() -> str:
    """``resdet.__version__`` (imported here, not at module level: resdet's top level imports
    the models, which need not be loaded to read a checkpoint)."""
    from resdet import __version__

    return __version__


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus format and version entries) to ``path`` atomically.

    The bytes go to a temporary file in the same folder, are fsynced, and the file is renamed
    over ``path`` with ``os.replace``; an exception or crash during the write leaves any
    previous file at ``path`` intact and removes the temporary file.
    """
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "resdet_version": resdet_version(),
        **state,
    }
    write_atomically(path, lambda tmp: torch.save(payload, tmp))


class CheckpointWriter:
    """Writes checkpoints in a background thread, so that training waits only for the copy of
    the state to host memory, not for pickling, writing and fsyncing hundreds of megabytes.

    One write is in flight at a time: ``save`` first waits for the previous one. ``wait``
    blocks until the last write is on disk and raises its error, if it had one. The thread is
    not a daemon, so an interpreter that exits (after Ctrl-C, say) still finishes the file; the
    write is atomic (``save_checkpoint``) whatever happens.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._path: Path | None = None

    def save(self, path: str | Path, state: dict[str, Any]) -> None:
        """Copy ``state`` to host memory and write it to ``path`` in the background."""
        self.wait()
        host = to_host(state)  # training may change every tensor of state from here on
        self._path = Path(path)
        self._thread = threading.Thread(
            target=self._write, args=(self._path, host), name="resdet-checkpoint"
        )
        self._thread.start()

    def _write(self, path: Path, state: dict[str, Any]) -> None:
        try:
            save_checkpoint(path, state)
        except BaseException as error:  # reported by wait(), in the training thread
            self._error = error

    def wait(self, raise_error: bool = True) -> None:
        """Block until the last checkpoint is written; ``OSError`` naming it if that failed
        (with ``raise_error``; otherwise the error is dropped)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None and not raise_error:
            self._error = None
        if self._error is not None:
            error, self._error = self._error, None
            raise OSError(f"writing checkpoint {self._path} failed: {error}") from error


def to_host(value: Any) -> Any:
    """A copy of ``value`` whose tensors are new host-memory tensors (dicts, lists and tuples
    copied along; other values shared, being immutable)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: to_host(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_host(item) for item in value)
    return value


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; tensors are mapped to ``map_location``.

    ``mmap`` maps the file instead of reading it, so tensors load only when touched.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file when it
    is truncated or corrupted, or is not a resdet training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:
        raise ValueError(
            f"cannot read checkpoint {path}: it is truncated, corrupted or not a torch file "
            f"({type(error).__name__}: {error}); use an earlier checkpoint"
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{path} is a torch file but not a resdet training checkpoint (no "
            f"'format': {FORMAT!r} entry); model weights alone go through resdet.models.weights"
        )
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format version {state.get('format_version')}, this resdet "
            f"({resdet_version()}) reads version {FORMAT_VERSION}"
        )
    return state


def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """The torch CPU, CUDA (of ``device``, if CUDA), numpy and Python ``random`` RNG states.

    numpy's key array is stored as an int64 tensor and Python's state as a tuple of ints, the
    types ``weights_only`` loading accepts.
    """
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Set every RNG from ``capture_rng_state``'s result (the CUDA one only on a CUDA device)."""
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {
                "key": numpy_state["key"].cpu().numpy().astype(np.uint32),
                "pos": numpy_state["pos"],
            },
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def check_plain(value: Any, where: str = "checkpoint_meta") -> None:
    """Raise ``TypeError`` unless ``value`` is dicts/lists/tuples of str, int, float, bool, None.

    Such metadata survives ``weights_only`` loading and JSON; ``where`` names the offending entry.
    """
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a non-string key {key!r}")
            check_plain(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_plain(item, f"{where}[{index}]")
    elif not (value is None or isinstance(value, str | int | float | bool)):
        raise TypeError(
            f"{where} is a {type(value).__name__}; checkpoint metadata may only hold str, int, "
            "float, bool, None and dicts/lists of them (convert paths with str())"
        )


def check_same_run(saved: dict[str, Any], current: dict[str, Any], path: str | Path) -> None:
    """Raise ``ValueError`` when checkpoint ``path``'s ``task`` or ``model`` metadata differs."""
    for key in IDENTITY_KEYS:
        if saved.get(key) != current.get(key):
            raise ValueError(
                f"checkpoint {path} was written for {key} {saved.get(key)!r}, but this run's "
                f"{key} is {current.get(key)!r}: resume from a checkpoint of this experiment "
                "or start a new run"
            )


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` entry (task, config, model signature) of a checkpoint, without reading
    its tensors from disk (the file is memory-mapped)."""
    return load_checkpoint(path, mmap=True)["meta"]
