"""Checkpoints of a running sweep, so that a killed job resumes where it stopped.

A checkpoint is one ``.npz`` file of plain numpy arrays (no pickle):

- ``leaf_0000, leaf_0001, ...``: the leaves of the training state pytree (the vmapped
  parameters and optimizer states, the per-run RNG keys, the divergence flags), in
  ``jax.tree.leaves`` order. The tree structure is not stored: the caller rebuilds it from a
  freshly initialised state of the same program, so a checkpoint can only be loaded into the
  program that wrote it.
- ``rec_<name>``: the per-epoch records so far, stacked along a leading epoch axis.
- ``meta``: a JSON string with the number of finished epochs, the elapsed training time and
  a fingerprint of everything that determines the results (command, data, spec, settings).

A checkpoint whose fingerprint differs from the current job's is ignored (and replaced at
the next save), so changing the spec can never resume a stale run. Saving goes through
:func:`sngrad.io.atomic_write`, so a kill during the save leaves the previous checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sngrad.io import atomic_write

FILE_NAME = "state.npz"


def fingerprint(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (what must match for a resume)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def checkpoint_dir(out_dir: str | Path, command: str) -> Path:
    return Path(out_dir) / f".checkpoint-{command}"


@dataclass
class Checkpoint:
    epoch: int  # number of finished epochs
    elapsed_s: float  # training wall time before the interruption
    leaves: list[np.ndarray]
    records: dict[str, np.ndarray]  # name -> (epoch, ...) array


def save(directory: str | Path, fp: str, ckpt: Checkpoint) -> Path:
    arrays = {f"leaf_{i:04d}": np.asarray(leaf) for i, leaf in enumerate(ckpt.leaves)}
    arrays.update({f"rec_{k}": np.asarray(v) for k, v in ckpt.records.items()})
    meta = {"fingerprint": fp, "epoch": ckpt.epoch, "elapsed_s": ckpt.elapsed_s}
    arrays["meta"] = np.array(json.dumps(meta))
    return atomic_write(
        Path(directory) / FILE_NAME, lambda h: np.savez(h, **arrays), binary=True
    )


def load(directory: str | Path, fp: str) -> Checkpoint | None:
    """The checkpoint in ``directory`` if there is one for this fingerprint, else None."""
    path = Path(directory) / FILE_NAME
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            leaves = [data[k] for k in sorted(k for k in data.files if k.startswith("leaf_"))]
            records = {k[4:]: data[k] for k in data.files if k.startswith("rec_")}
        epoch, elapsed = int(meta["epoch"]), float(meta["elapsed_s"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError,
            zipfile.BadZipFile, zlib.error) as err:
        # Only an atomically renamed file can be here, so this is foreign or damaged storage
        # (a truncated file, a flipped bit that the archive's CRC catches); starting over is
        # always correct, merely slower.
        print(f"sngrad: ignoring unreadable checkpoint {path} ({type(err).__name__}: {err}); "
              "this job starts over", file=sys.stderr)
        return None
    if meta.get("fingerprint") != fp:
        print(f"sngrad: ignoring checkpoint {path} of a different job", file=sys.stderr)
        return None
    return Checkpoint(epoch, elapsed, leaves, records)


def remove(directory: str | Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
