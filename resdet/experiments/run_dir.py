"""The run folder: created and checked before a run starts, so that no run mixes with another."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from resdet.config import save_config
from resdet.engine import distributed

# What a run writes into its folder; a folder holding either of the first two holds a run.
# What a run writes; --overwrite moves all of it aside (tb/, TensorBoard's events, is a folder).
RUN_FILES = ("last.pt", "metrics.jsonl", "config.yaml", "eval.json", "best.pt", "tb")
_RUN_MARKERS = RUN_FILES[:2]


def prepare_run_dir(out_dir: Path, config: Any, *, resume: bool, overwrite: bool = False) -> None:
    """Make ``out_dir`` ready for a run and write ``config.yaml`` into it (rank 0).

    A new run (``resume`` False) refuses a folder that already holds one (``last.pt`` or
    ``metrics.jsonl``), offering ``--resume`` or ``--overwrite``; with ``overwrite`` the old run's
    files are moved into ``out_dir/replaced-<time>/``, never deleted. Temporary files that a
    killed run left behind (``.last.pt.*.tmp`` and the like) are removed. A folder that cannot be
    created or written is a ValueError naming it and the cause. Every rank checks, so that all of
    them stop rather than wait for rank 0 in a collective.
    """
    held = [name for name in _RUN_MARKERS if (out_dir / name).exists()]
    if held and not resume and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds a run ({', '.join(held)}): continue it with "
            f"--resume {out_dir / 'last.pt'}, start afresh with --overwrite (the old files are "
            f"moved into {out_dir}/replaced-<time>/), or choose another --out"
        )
    if distributed.is_main():
        _make_writable_dir(out_dir)
        _remove_stale_temporaries(out_dir)
        if held and overwrite:
            _move_aside(out_dir)
        save_config(config, out_dir / "config.yaml")
    distributed.barrier()


def _make_writable_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # The only sure test of writability (permissions, read-only mounts, ACLs) is a write.
        fd, probe = tempfile.mkstemp(dir=out_dir, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        cause = error.strerror or str(error)
        if isinstance(error, FileExistsError | NotADirectoryError):
            cause = f"{cause}: a file stands where the folder or one of its parents should be"
        raise ValueError(
            f"cannot use {out_dir} as the run folder ({cause}); choose another --out"
        ) from None


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Temporary files of atomic writes (resdet.files.write_atomically) cut off by a kill."""
    for name in RUN_FILES:
        for stale in out_dir.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


def _move_aside(out_dir: Path) -> None:
    stamp = f"replaced-{datetime.now():%Y%m%d-%H%M%S}"
    aside, n = out_dir / stamp, 1
    while aside.exists():  # a second --overwrite within the same second
        n += 1
        aside = out_dir / f"{stamp}-{n}"
    aside.mkdir()
    for name in RUN_FILES:
        if (out_dir / name).exists():
            os.replace(out_dir / name, aside / name)
