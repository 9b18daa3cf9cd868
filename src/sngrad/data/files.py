"""The splits file: ``X.npz`` (arrays + metadata) and its ``X.json`` sidecar, written atomically
and read back without ever unpickling.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
import zipfile
import zlib
from pathlib import Path

import numpy as np

from sngrad.data.splits import Splits, derived_meta
from sngrad.errors import SngradError

_SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- files


def _check_splits(splits: Splits, where: str) -> None:
    """Shapes, dtypes and label range; raises SngradError naming ``where``."""
    dim = None
    for part in _SPLITS:
        x, y = getattr(splits, f"x_{part}"), getattr(splits, f"y_{part}")
        if x.dtype != np.float32 or x.ndim != 2 or y.dtype != np.int32 or y.shape != (len(x),):
            raise SngradError(
                f"{where}: split {part!r} must be float32 (N, D) features and int32 (N,) labels; "
                f"got {x.dtype} {x.shape} and {y.dtype} {y.shape}"
            )
        dim = x.shape[1] if dim is None else dim
        if x.shape[1] != dim:
            raise SngradError(f"{where}: split {part!r} has {x.shape[1]} features, not {dim}")
        if len(y) and (y.min() < 0 or y.max() >= splits.num_classes):
            raise SngradError(
                f"{where}: split {part!r} has labels outside 0..{splits.num_classes - 1}"
            )


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in the JSON sidecar")


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_splits(splits: Splits, path_npz: str | os.PathLike) -> Path:
    """Write ``X.npz`` (compressed arrays + metadata) and ``X.json`` (metadata) atomically.

    Both are written under temporary names in the target directory and renamed into place
    only when complete; on any error neither a partial file nor a temporary one remains.
    Sizes, class counts, feature_dim and num_classes in the metadata are recomputed from the
    arrays, so a hand-built :class:`Splits` gets a correct sidecar too.
    """
    path = Path(path_npz)
    if path.suffix != ".npz":
        raise SngradError(f"output file {str(path)!r} must end in .npz")
    splits = dataclasses.replace(
        splits,
        **{f"x_{p}": np.asarray(getattr(splits, f"x_{p}")) for p in _SPLITS},
        **{f"y_{p}": np.asarray(getattr(splits, f"y_{p}")) for p in _SPLITS},
    )
    _check_splits(splits, str(path))
    meta = {**splits.meta, **derived_meta(splits)}
    text = json.dumps(meta, indent=2, sort_keys=True, default=_json_default) + "\n"
    arrays = {f"{kind}_{p}": getattr(splits, f"{kind}_{p}") for p in _SPLITS for kind in "xy"}
    arrays["meta_json"] = np.array(text)

    path.parent.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []
    placed: list[Path] = []
    try:
        npz_tmp = _temp_in(path)
        temps.append(npz_tmp)
        with open(npz_tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        json_tmp = _temp_in(_sidecar(path))
        temps.append(json_tmp)
        json_tmp.write_text(text)
        # the .npz is what the workflow waits for, so it lands last
        os.replace(json_tmp, _sidecar(path))
        placed.append(_sidecar(path))
        os.replace(npz_tmp, path)
    except BaseException:
        for leftover in temps + placed:
            leftover.unlink(missing_ok=True)
        raise
    return path


def _temp_in(path: Path) -> Path:
    """A fresh hidden name next to ``path``, created empty (mode from the umask)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    temp.touch(exist_ok=False)
    return temp


def rebuild_command(path: str | os.PathLike) -> str:
    """The command that rewrites a splits file.

    A file at ``results/<profile>/data/<name>.npz`` belongs to the workflow: its own command
    rebuilds a damaged one in place before planning (:func:`sngrad.data.recovery.repair`) and
    goes on with the run, keeping the results made from the good file.
    """
    path = Path(path)
    parts = path.parts
    if len(parts) >= 4 and parts[-2] == "data" and parts[-4] == "results":
        profile = parts[-3]
        config = "" if profile == "default" else f" --configfile config/{profile}.yaml"
        return f"snakemake --cores 4{config}"
    return f"python -m sngrad data prepare {path.stem} --out {path}"


def load_splits(path_npz: str | os.PathLike) -> Splits:
    """Read what :func:`save_splits` wrote (only the .npz is needed; never unpickles).

    A truncated or damaged file is caught here (zip structure, per-member CRC, array headers)
    and reported in one line with the command that rebuilds it.
    """
    path = Path(path_npz)
    if not path.is_file():
        raise SngradError(
            f"splits file {str(path)!r} not found; build it with `{rebuild_command(path)}`"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            needed = [f"{kind}_{p}" for p in _SPLITS for kind in "xy"] + ["meta_json"]
            missing = [key for key in needed if key not in archive.files]
            if missing:
                raise SngradError(
                    f"{path}: not a sngrad splits file (missing {', '.join(missing)}); "
                    f"rebuild it with `{rebuild_command(path)}`"
                )
            arrays = {key: archive[key] for key in needed}
        meta = json.loads(str(arrays.pop("meta_json")))
        name, num_classes = str(meta["name"]), int(meta["num_classes"])
    except SngradError:
        raise
    except (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile, zlib.error):
        # numpy's own message for bytes that are not a zip suggests allow_pickle: never repeat it
        raise SngradError(
            f"{path}: corrupt or truncated splits file (not a complete .npz archive); "
            f"rebuild it with `{rebuild_command(path)}`"
        ) from None
    splits = Splits(**arrays, num_classes=num_classes, name=name, meta=meta)
    _check_splits(splits, str(path))
    return splits
