"""The noise study's command: read the reference run and the tuned alphas, measure, write.

``python -m sngrad noise`` (the workflow's noise rule) checks its inputs (the reference run's
checkpoints, the ``RUN=best.json`` pairs of the tuned sngrad runs, whose ``alpha`` and
``alpha_reference`` say which alpha and how it is read, the batch sizes), runs
:func:`sngrad.noise.measure.study_checkpoint` on every checkpoint and writes
``results/<profile>/noise/<dataset>.csv`` (columns :func:`sngrad.noise.measure.csv_columns`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from sngrad import ledger
from sngrad.errors import SngradError
from sngrad.io import write_csv
from sngrad.models import Params
from sngrad.names import parse_run
from sngrad.noise.measure import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_BATCHES,
    FULL_DRAWS_UP_TO,
    TunedAlpha,
    csv_columns,
    study_checkpoint,
)
from sngrad.transforms import REFERENCES


def load_reference(directory: str | Path) -> list[tuple[str, int, Params]]:
    """``[(checkpoint, epoch, params), ...]`` of a reference run directory, in epoch order.

    ``reference.json`` maps checkpoint names to epochs; ``<name>.npz`` holds the leaves
    ``w0, b0, w1, b1, ...`` with ``W`` of shape (fan_in, fan_out).
    """
    directory = Path(directory)
    meta_path = directory / "reference.json"
    if not meta_path.is_file():
        raise SngradError(
            f"{meta_path} not found; allowed: a reference directory written by "
            "`python -m sngrad reference`"
        )
    try:
        checkpoints = json.loads(meta_path.read_text())["checkpoints"]
        order = sorted(((str(k), int(v)) for k, v in checkpoints.items()), key=lambda kv: kv[1])
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise SngradError(
            f"{meta_path}: needs 'checkpoints': {{name: epoch}} ({type(err).__name__}: {err})"
        ) from None
    if not order:
        raise SngradError(f"{meta_path}: 'checkpoints' is empty; allowed: at least one")
    out = []
    for name, epoch in order:
        path = directory / f"{name}.npz"
        if not path.is_file():
            raise SngradError(f"checkpoint file {path} not found (listed in {meta_path})")
        with np.load(path, allow_pickle=False) as archive:
            layers = sum(1 for k in archive.files if re.fullmatch(r"w\d+", k))
            try:
                params = [
                    (
                        jnp.asarray(archive[f"w{i}"], jnp.float32),
                        jnp.asarray(archive[f"b{i}"], jnp.float32),
                    )
                    for i in range(layers)
                ]
            except KeyError as err:
                raise SngradError(
                    f"{path}: missing leaf {err}; allowed: w0, b0, w1, b1, ... without gaps"
                ) from None
        _check_params(params, path)
        out.append((name, epoch, params))
    return out


def _check_params(params: Params, where) -> None:
    if not params:
        raise SngradError(f"{where}: no layers (leaves w0, b0, ...)")
    for i, (w, b) in enumerate(params):
        if w.ndim != 2 or b.shape != (w.shape[1],):
            raise SngradError(
                f"{where}: layer {i} has W {w.shape} and b {b.shape}; allowed: W (fan_in, "
                "fan_out) and b (fan_out,)"
            )
        if i and w.shape[0] != params[i - 1][0].shape[1]:
            raise SngradError(
                f"{where}: layer {i} takes {w.shape[0]} inputs but layer {i - 1} gives "
                f"{params[i - 1][0].shape[1]}"
            )


def _tuned_variant(run: str) -> str | None:
    """The variant of a tuned-alpha sngrad run name, or None for any other string."""
    try:
        parts = parse_run(run)
    except SngradError:
        return None
    return parts.variant if parts.fixed_alpha is None else None


def parse_tuned(items: Sequence[str]) -> dict[str, TunedAlpha]:
    """``RUN=best.json`` pairs -> ``{variant: TunedAlpha(alpha, reference)}``.

    RUN must be a sngrad run of the registry (``<base>+sngrad1|2|3``); its ``best.json`` key
    ``alpha`` is the tuned alpha (null when every setting diverged) and ``alpha_reference``
    how the run reads it (``sngrad.transforms.REFERENCES``: "absolute", raw units, or "rms",
    relative to each step's RMS sigma). A best.json without ``alpha_reference`` (written before
    the key existed) is read as "absolute"; with a null alpha the reference is not used.
    Variant II with an ``alpha_scaled`` is read in the protocol's unit, ``alpha_scaled / B`` at
    each batch size B (``TunedAlpha.per_batch_size``).
    """
    tuned: dict[str, TunedAlpha] = {}
    for item in items:
        run, sep, path = item.partition("=")
        variant = _tuned_variant(run) if sep and path else None
        if variant is None:
            raise SngradError(
                f"--tuned {item!r}; allowed: RUN=PATH with RUN like sgd+sngrad1, sgd+sngrad2, "
                "sgd+sngrad3 and PATH its best.json"
            )
        if variant in tuned:
            raise SngradError(f"--tuned gives variant {variant} twice; allowed: once per variant")
        try:
            best = json.loads(Path(path).read_text())
            alpha = best["alpha"]
            reference = best.get("alpha_reference", "absolute")
            scaled = best.get("alpha_scaled")
        except FileNotFoundError:
            raise SngradError(f"--tuned {run}: {path} not found") from None
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise SngradError(f"--tuned {run}: {path} has no 'alpha' ({err})") from None
        if alpha is None:
            reference = "absolute"  # nothing to read
        else:
            alpha = float(alpha)
            if not math.isfinite(alpha) or alpha < 0 or (alpha == 0 and variant != "III"):
                raise SngradError(f"--tuned {run}: alpha {alpha} in {path} is not allowed")
            if reference not in REFERENCES:
                raise SngradError(f"--tuned {run}: alpha_reference {reference!r} in {path}; "
                                  f"allowed: {', '.join(REFERENCES)}")
        if variant == "II" and alpha is not None and isinstance(scaled, int | float) and (
                math.isfinite(scaled) and scaled > 0):
            # the protocol's unit: alpha_scaled / B at every batch size (sngrad.train.protocol)
            tuned[variant] = TunedAlpha(float(scaled), reference, per_batch_size=True)
        else:
            tuned[variant] = TunedAlpha(alpha, reference)
    return tuned


def parse_batch_sizes(text: str) -> list[int]:
    """``"8,16,32"`` -> ``[8, 16, 32]``: distinct integers >= 2, in increasing order."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SngradError(f"--batch-sizes {text!r}; allowed: comma-separated integers") from None
    if not sizes or min(sizes) < 2 or len(set(sizes)) != len(sizes):
        raise SngradError(f"--batch-sizes {text!r}; allowed: distinct integers >= 2")
    return sorted(sizes)

# ----------------------------------------------------------------------------- command line


def run_study(data_path, reference_dir, tuned, batch_sizes, batches, seed, out) -> dict:
    """Check every input, compute all checkpoints, write the CSV; returns timing facts."""
    from sngrad.data import load_splits

    ledger.watch_compilation()
    if batches < 2:
        raise SngradError(f"--batches {batches}; allowed: >= 2 (a standard error needs two)")
    splits = load_splits(data_path)
    reference = load_reference(reference_dir)
    n_train = len(splits.x_train)
    sizes = [b for b in batch_sizes if b <= n_train]
    if not sizes:
        raise SngradError(
            f"every batch size exceeds the {n_train} training examples; allowed: <= {n_train}"
        )
    for name, _, params in reference:
        if params[0][0].shape[0] != splits.x_train.shape[1]:
            raise SngradError(
                f"checkpoint {name} takes {params[0][0].shape[0]} features, the data has "
                f"{splits.x_train.shape[1]}"
            )
        if params[-1][0].shape[1] != splits.num_classes:
            raise SngradError(
                f"checkpoint {name} has {params[-1][0].shape[1]} outputs, the data "
                f"{splits.num_classes} classes"
            )
    start = time.perf_counter()
    rows = []
    for name, epoch, params in reference:
        for row in study_checkpoint(
            params, splits.x_train, splits.y_train, sizes, batches, seed, tuned
        ):
            rows.append({"checkpoint": name, "epoch": epoch, **row})
    seconds = time.perf_counter() - start
    write_csv(out, csv_columns(), rows)
    return {
        "seconds": seconds,
        "rows": len(rows),
        "checkpoints": len(reference),
        "batch_sizes": sizes,
        "n_train": n_train,
    }


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sngrad noise",
        description="Gradient noise against batch size at the reference run's checkpoints.",
    )
    parser.add_argument("--data", required=True, help="prepared splits (.npz)")
    parser.add_argument("--reference-dir", required=True, help="reference run directory")
    parser.add_argument("--tuned", nargs="*", default=[], metavar="RUN=best.json")
    parser.add_argument(
        "--batch-sizes",
        default=",".join(map(str, DEFAULT_BATCH_SIZES)),
        help="comma-separated; sizes above the training split are dropped",
    )
    parser.add_argument(
        "--batches",
        type=int,
        default=DEFAULT_BATCHES,
        help=f"random batches per batch size up to {FULL_DRAWS_UP_TO}",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="results/<profile>/noise/<dataset>.csv")
    args = parser.parse_args(argv)
    tuned = parse_tuned(args.tuned)
    sizes = parse_batch_sizes(args.batch_sizes)
    facts = run_study(
        args.data, args.reference_dir, tuned, sizes, args.batches, args.seed, args.out
    )
    print(
        f"noise: {facts['rows']} rows, {facts['checkpoints']} checkpoints, batch sizes "
        f"{facts['batch_sizes'][0]}..{facts['batch_sizes'][-1]}, {facts['n_train']} training "
        f"examples, {facts['seconds']:.1f} s -> {args.out}",
        file=sys.stderr,
    )
    return 0
