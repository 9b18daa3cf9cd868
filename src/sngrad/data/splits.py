"""Splitting and normalising a dataset: stratified, seeded, fitted on the training split only.

See :mod:`sngrad.data` for the rules; :func:`load_dataset` applies them to a registry entry.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sngrad import __version__
from sngrad.data import download
from sngrad.data.registry import DatasetSpec, get_spec
from sngrad.errors import SngradError, choice_error

TEST_FRACTION = 0.2
TEST_SEED = 20240601
_ROWS_PER_CHUNK = 8192


@dataclass
class Splits:
    """One dataset's three splits, ready for the MLP.

    ``x_*`` are float32 (N, D) normalised with training-split constants, ``y_*`` int32 (N,)
    in 0..num_classes-1; ``meta`` is the JSON sidecar's content (sizes, class counts, source
    checksums, normalisation summary, seed, val_fraction, ...).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- splitting


def stratified_split(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..len(y)-1 into (kept, held) with ``round(fraction * N)`` held.

    Each class c holds out floor or ceil of ``fraction * n_c`` examples (largest remainders
    get the extra ones, ties to the lower class), so class proportions match the whole to
    within one example per class. Both outputs are shuffled by ``rng``.
    """
    y = np.asarray(y)
    classes, counts = np.unique(y, return_counts=True)
    take = _allocate(counts, fraction * counts, math.floor(fraction * len(y) + 0.5))
    held = []
    for c, k in zip(classes, take, strict=True):
        members = np.flatnonzero(y == c)
        held.append(rng.permutation(members)[:k])
    held = np.concatenate(held) if held else np.empty(0, dtype=np.int64)
    kept = np.setdiff1d(np.arange(len(y)), held, assume_unique=True)
    return rng.permutation(kept), rng.permutation(held)


def _allocate(counts: np.ndarray, ideal: np.ndarray, total: int) -> np.ndarray:
    """floor(ideal) per class, plus one for the largest remainders until ``total`` is reached."""
    take = np.minimum(np.floor(ideal).astype(int), counts)
    extra = total - int(take.sum())
    if extra > 0:
        order = np.argsort(-(ideal - take), kind="stable")
        take[order[:extra]] += 1
    return take


def stratified_subset(y: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of ``size`` examples of ``y`` with the class proportions of the whole.

    Class c gets floor or ceil of ``size * n_c / N`` (largest remainders first, ties to the
    lower class); the members are drawn without replacement by ``rng`` and returned shuffled.
    """
    y = np.asarray(y)
    if not 0 < size <= len(y):
        raise SngradError(f"subset size {size} must be in 1..{len(y)}")
    classes, counts = np.unique(y, return_counts=True)
    take = _allocate(counts, size * counts / len(y), size)
    chosen = [
        rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take, strict=True)
    ]
    return rng.permutation(np.concatenate(chosen))


def split_indices(
    y: np.ndarray,
    *,
    seed: int,
    val_fraction: float,
    has_test: bool = False,
    train_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Positions of train / val (/ test) in the pooled labels ``y``.

    With ``has_test`` False a stratified ``TEST_FRACTION`` test split is taken first using
    ``TEST_SEED`` (so it is the same for every ``seed``); validation then comes out of the
    rest using ``seed``. With ``has_test`` True only train / val are returned. ``train_size``
    then keeps a :func:`stratified_subset` of the training positions (generator seeded
    ``seed`` afresh, so the validation split is the same with and without it).
    """
    positions = np.arange(len(y))
    out: dict[str, np.ndarray] = {}
    if not has_test:
        kept, held = stratified_split(y, TEST_FRACTION, np.random.default_rng(TEST_SEED))
        positions, out["test"] = kept, held
    kept, held = stratified_split(y[positions], val_fraction, np.random.default_rng(seed))
    out["train"], out["val"] = positions[kept], positions[held]
    if train_size is not None:
        if train_size > len(out["train"]):
            raise SngradError(
                f"train_size {train_size} exceeds the {len(out['train'])} training examples "
                f"left after the validation split; use at most that many, or null for all"
            )
        subset = stratified_subset(y[out["train"]], train_size, np.random.default_rng(seed))
        out["train"] = out["train"][subset]
    return out


# --------------------------------------------------------------------------- normalisation


def _chunks(n: int):
    for start in range(0, n, _ROWS_PER_CHUNK):
        yield slice(start, min(start + _ROWS_PER_CHUNK, n))


def fit_normalisation(x: np.ndarray, mode: str, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (mean, scale) vectors of length D from training features x (N, D).

    ``mode`` "per-feature" gives every column its own constants; "per-channel" pools the
    D / channels consecutive columns of each channel. scale is the population standard
    deviation, or 1 where the feature (channel) is constant, whose mean is then its value.
    Accumulates in float64 over row chunks so uint8 images are never copied whole.
    """
    if mode not in ("per-feature", "per-channel"):
        raise choice_error("normalisation", mode, ("per-feature", "per-channel"))
    n, d = x.shape
    if n == 0:
        raise SngradError("cannot normalise: the training split is empty")
    groups = channels if mode == "per-channel" else d
    width = d // groups
    if groups * width != d:
        raise SngradError(f"{d} features do not divide into {channels} channels")

    def grouped(block):  # (rows, d) -> (rows, groups, width)
        return block.reshape(len(block), groups, width)

    total = np.zeros(groups)
    lo = np.full(groups, np.inf)
    hi = np.full(groups, -np.inf)
    for rows in _chunks(n):
        block = grouped(x[rows])
        total += block.sum(axis=(0, 2), dtype=np.float64)
        lo = np.minimum(lo, block.min(axis=(0, 2)))
        hi = np.maximum(hi, block.max(axis=(0, 2)))
    mean = total / (n * width)
    squares = np.zeros(groups)
    for rows in _chunks(n):
        squares += ((grouped(x[rows]) - mean[:, None]) ** 2).sum(axis=(0, 2))
    std = np.sqrt(squares / (n * width))
    constant = lo == hi
    mean = np.where(constant, lo, mean)
    scale = np.where(constant, 1.0, std)
    return np.repeat(mean, width), np.repeat(scale, width)


def apply_normalisation(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 ``(x - mean) / scale``, computed in float64 chunk by chunk."""
    out = np.empty(x.shape, dtype=np.float32)
    for rows in _chunks(len(x)):
        out[rows] = (x[rows] - mean) / scale
    return out


def _summary(values: np.ndarray) -> dict:
    return {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean())}


def _normalisation_meta(spec: DatasetSpec, x_train: np.ndarray, mean, scale) -> dict:
    """Per-channel: the constants themselves; per-feature: min / max / mean of them."""
    meta: dict[str, Any] = {"mode": spec.normalisation, "computed_on": "train"}
    if spec.normalisation == "per-channel":
        width = spec.feature_dim // spec.shape[0]
        meta.update(constants="full", mean=mean[::width].tolist(), std=scale[::width].tolist())
    else:
        constant = int(np.sum(x_train.min(axis=0) == x_train.max(axis=0))) if len(x_train) else 0
        meta.update(
            constants="summary over features (min, max, mean)",
            mean=_summary(mean),
            std=_summary(scale),
            constant_features=constant,
            note="constant features are centred and divided by 1",
        )
    return meta


# --------------------------------------------------------------------------- loading


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise SngradError(f"seed must be a non-negative integer; got {seed!r}")
    return int(seed)


def check_fraction(val_fraction) -> float:
    ok = isinstance(val_fraction, int | float | np.floating) and not isinstance(val_fraction, bool)
    if not ok or not 0.0 < float(val_fraction) < 1.0:
        raise SngradError(
            f"val_fraction must be a number strictly between 0 and 1; got {val_fraction!r}"
        )
    return float(val_fraction)


def check_train_size(train_size) -> int | None:
    if train_size is None:
        return None
    if (
        isinstance(train_size, bool)
        or not isinstance(train_size, int | np.integer)
        or (train_size < 1)
    ):
        raise SngradError(
            f"train_size must be a positive integer or None (all); got {train_size!r}"
        )
    return int(train_size)


def _class_counts(y: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(y, minlength=num_classes).astype(int).tolist()


def _flat_features(spec: DatasetSpec, x: np.ndarray, where: str) -> np.ndarray:
    x = np.asarray(x)
    x = x.reshape(len(x), -1)
    if x.shape[1] != spec.feature_dim:
        raise SngradError(
            f"dataset {spec.name!r}: {where} examples have {x.shape[1]} features; "
            f"expected {spec.feature_dim} ({'x'.join(map(str, spec.shape))})"
        )
    return x


def _check_labels(spec: DatasetSpec, y: np.ndarray, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or (len(y) and (y.min() < 0 or y.max() >= spec.num_classes)):
        raise SngradError(
            f"dataset {spec.name!r}: {where} labels must be 1-D in 0..{spec.num_classes - 1}"
        )
    return y.astype(np.int32)


def load_dataset(
    name: str | DatasetSpec,
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    train_size: int | None = None,
) -> Splits:
    """Deterministic, stratified, normalised splits of a registered dataset.

    ``name`` may also be a :class:`DatasetSpec` (e.g. a registry entry re-pointed with
    :meth:`DatasetSpec.with_source`). ``data_dir`` overrides ``$SNGRAD_DATA_DIR`` for the
    download cache; files live in ``<data_dir>/<name>/``. ``train_size`` keeps a stratified
    subset of the training split (after validation was taken out); None keeps all of it.
    """
    spec = name if isinstance(name, DatasetSpec) else get_spec(name)
    seed, val_fraction = check_seed(seed), check_fraction(val_fraction)
    train_size = check_train_size(train_size)
    directory = download.data_dir(data_dir) / spec.name
    raw = spec.reader(spec, directory)

    x = _flat_features(spec, raw.x, "training")
    y = _check_labels(spec, raw.y, "training")
    has_test = raw.x_test is not None
    idx = split_indices(
        y, seed=seed, val_fraction=val_fraction, has_test=has_test, train_size=train_size
    )
    if has_test:
        x_test = _flat_features(spec, raw.x_test, "test")
        y_test = _check_labels(spec, raw.y_test, "test")
    else:
        x_test, y_test = x[idx["test"]], y[idx["test"]]
    x_train, y_train = x[idx["train"]], y[idx["train"]]
    x_val, y_val = x[idx["val"]], y[idx["val"]]
    if min(len(y_train), len(y_val), len(y_test)) == 0:
        raise SngradError(
            f"dataset {spec.name!r} with val_fraction {val_fraction} leaves an empty split "
            f"(train {len(y_train)}, val {len(y_val)}, test {len(y_test)})"
        )

    mean, scale = fit_normalisation(x_train, spec.normalisation, channels=spec.shape[0])
    meta = {
        "name": spec.name,
        "kind": spec.kind,
        "description": spec.description,
        "shape": list(spec.shape),
        "feature_dim": spec.feature_dim,
        "num_classes": spec.num_classes,
        "seed": seed,
        "val_fraction": val_fraction,
        "train_size": train_size,
        "train_subset": (
            "all training examples left after the validation split"
            if train_size is None
            else f"stratified subset of {train_size} after the validation split, seed {seed}"
        ),
        "test_split": (
            "official"
            if has_test
            else f"stratified {TEST_FRACTION:g} of all data, seed {TEST_SEED} (fixed)"
        ),
        "source": raw.source,
        "normalisation": _normalisation_meta(spec, x_train, mean, scale),
        "sngrad_version": __version__,
    }
    splits = Splits(
        x_train=apply_normalisation(x_train, mean, scale),
        y_train=y_train,
        x_val=apply_normalisation(x_val, mean, scale),
        y_val=y_val,
        x_test=apply_normalisation(x_test, mean, scale),
        y_test=y_test,
        num_classes=spec.num_classes,
        name=spec.name,
        meta=meta,
    )
    splits.meta.update(derived_meta(splits))
    return splits


def derived_meta(splits: Splits) -> dict:
    """The parts of the sidecar that follow from the arrays themselves."""
    ys = {"train": splits.y_train, "val": splits.y_val, "test": splits.y_test}
    return {
        "name": splits.name,
        "num_classes": int(splits.num_classes),
        "feature_dim": int(splits.x_train.shape[1]),
        "sizes": {k: len(v) for k, v in ys.items()},
        "class_counts": {k: _class_counts(v, splits.num_classes) for k, v in ys.items()},
    }
