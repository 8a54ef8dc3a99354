"""Reading pickled data files without running their code.

A pickle is a program: ``pickle.load`` imports and calls whatever globals the file names, so a
crafted data file runs code as soon as it is opened. The CIFAR-10 batches are pickles of plain
containers and numpy arrays, and `load_data_pickle` admits exactly the globals those need.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

# The globals a pickled numpy array (any numpy since 1.x, written by Python 2 or 3) refers to:
# numpy's array rebuilder and the array and dtype types it reconstructs, and ``_codecs.encode``,
# which protocol-2 pickles written by Python 3 use to rebuild ``bytes`` objects.
ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class RefusedGlobalError(pickle.UnpicklingError):
    """The pickle names a global outside `ALLOWED_GLOBALS`; nothing it names was imported."""


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise RefusedGlobalError(f"{module}.{name}")
        return super().find_class(module, name)


def load_data_pickle(path: Path, what: str, *, encoding: str = "ASCII") -> Any:
    """Unpickle ``path``, admitting only plain containers, strings, bytes and numpy arrays.

    ``what`` names the file's kind in errors (e.g. "CIFAR-10 batch"); ``encoding`` is handed to
    the unpickler (``"latin1"`` restores Python 2 byte strings and numpy arrays). Raises
    ValueError naming the file and, for a refused global, the global (``module.name``), before
    any code in the file runs.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {what} {path}: {error.strerror or error}") from error
    try:
        return _DataUnpickler(io.BytesIO(data), encoding=encoding).load()
    except RefusedGlobalError as error:
        raise ValueError(
            f"{what} {path} is not a plain data pickle: it names the global {error.args[0]}, "
            "which a data file has no need of (loading it could run code), so nothing in it "
            "was run; replace the file with one from the data set's official release"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"cannot read {what} {path}: {error}; replace the file") from None
