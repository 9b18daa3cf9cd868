"""A damaged splits file repaired in place before a run plans its jobs.

A splits file (:mod:`sngrad.data.files`) is a pure function of its dataset and the settings
its sidecar records, so a corrupt ``.npz`` is rebuilt (:func:`sngrad.data.splits.load_dataset`)
and a damaged sidecar of a good ``.npz`` is rewritten from the record the ``.npz`` holds; when
the bytes are those the results read, the times are set back so that nothing is redone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from sngrad.data.files import load_splits, save_splits
from sngrad.data.splits import load_dataset
from sngrad.errors import SngradError
from sngrad.io import write_text
from sngrad.provenance import sha256_file


def _repair_sidecar(path: Path) -> str | None:
    """Rewrite a damaged sidecar of a good splits file from the metadata the ``.npz`` holds.

    :func:`save_splits` writes the sidecar's text into the ``.npz`` too (``meta_json``), so
    the rewritten sidecar has the bytes of the original; its time is set to the ``.npz``'s,
    and nothing made from it is redone."""
    sidecar = path.with_suffix(".json")
    with np.load(path, allow_pickle=False) as data:
        text = str(data["meta_json"])
    try:
        if sidecar.read_text() == text:
            return None
    except (OSError, UnicodeDecodeError):
        pass
    json.loads(text)  # what the .npz holds is a whole record
    write_text(sidecar, text)
    built = path.stat()
    os.utime(sidecar, ns=(built.st_atime_ns, built.st_mtime_ns))
    return (f"{sidecar}: was damaged or missing; rewritten from the record in {path} (the "
            "same bytes as before, so the results made from it are kept)")


def repair(path_npz: str | os.PathLike, recorded_sha256=()) -> str | None:
    """Rebuild a corrupt or truncated splits file in place; None if it loads (or is absent)
    and its sidecar is whole (a damaged sidecar of a good file: :func:`_repair_sidecar`).

    A splits file is a pure function of its dataset and of the settings its JSON sidecar
    records (name, seed, val_fraction, train_size), and :func:`save_splits` writes the same
    bytes for the same arrays. So the file is rebuilt from the sidecar's settings, and its
    modification time is set back to the sidecar's (the build time of the original) when the
    rebuilt file is the one the results made from it read: its sha256 is each of
    ``recorded_sha256`` (the ``data_sha256`` of their provenance; none recorded counts as a
    match). Snakemake then still sees those results as up to date and keeps them. Otherwise
    the rebuilt file keeps its new time and everything made from the old bytes is redone.
    Without a readable sidecar the file is removed, for the workflow to build it anew.
    Returns one line saying what was done.
    """
    path = Path(path_npz)
    if not path.is_file():
        return None
    try:
        load_splits(path)
        return _repair_sidecar(path)
    except SngradError:
        pass
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
        settings = {"seed": meta["seed"], "val_fraction": meta["val_fraction"],
                    "train_size": meta["train_size"]}
        name, built = meta["name"], sidecar.stat()
    except (OSError, ValueError, KeyError, TypeError):
        path.unlink()
        return (f"{path}: corrupt, and its sidecar {sidecar} does not say how it was built; "
                "removed, so this run builds it again (and redoes what was made from it)")
    splits = load_dataset(name, **settings)
    save_splits(splits, path)
    digest = sha256_file(path)
    if all(recorded == digest for recorded in recorded_sha256):
        for rebuilt in (sidecar, path):
            os.utime(rebuilt, ns=(built.st_atime_ns, built.st_mtime_ns))
        return (f"{path}: was corrupt; rebuilt from {name} with the settings of {sidecar} "
                "(the same bytes as before, so the results made from it are kept)")
    return (f"{path}: was corrupt; rebuilt from {name}, but the results made from it read "
            "other bytes, so they are redone")
