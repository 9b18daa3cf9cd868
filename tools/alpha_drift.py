"""How the unit of alpha drifts during training: the share of weights each reference shrinks.

    python tools/alpha_drift.py REFERENCE_DIR DATA_NPZ [--batch-size 128] [--batches 8]
                                [--alpha 1 3.16]

REFERENCE_DIR holds the parameters the ``reference`` command saves (``init.npz``,
``epoch1.npz``, ``p25.npz``, ``p50.npz``, ``p100.npz``: sgd at its tuned rate on the first
final seed). At each checkpoint the per-example gradient moments of ``--batches`` training
batches of ``--batch-size`` (drawn by ``numpy.random.default_rng(0)``) are taken with
:func:`sngrad.stats.dense_stats`, and the script prints, averaged over the batches, over the
weights of every layer (biases left out, as in the training diagnostics):

- the median sigma and the step's root-mean-square sigma s over all coordinates
  (:func:`sngrad.transforms.rms_sigma`);
- for each ``--alpha`` a: the share of weights variant I shrinks (a sigma_i > 1 in its units)
  when a is read relative to s (``rms``, the protocol's reference), and when it is read in
  units of the initial median sigma (the earlier protocol's ``sigma_ref``, fixed at init).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

CHECKPOINTS = ("init", "epoch1", "p25", "p50", "p100")


def _params(path: Path):
    with np.load(path) as arrays:
        layers = len(arrays.files) // 2
        return [(arrays[f"w{i}"], arrays[f"b{i}"]) for i in range(layers)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference_dir", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--alpha", type=float, nargs="+", default=[1.0])
    args = parser.parse_args(argv)

    import jax.numpy as jnp

    from sngrad.data import load_splits
    from sngrad.stats import dense_stats
    from sngrad.transforms import rms_sigma

    splits = load_splits(args.data)
    rng = np.random.default_rng(0)
    rows = [rng.choice(len(splits.y_train), args.batch_size, replace=False)
            for _ in range(args.batches)]
    measured = {}
    for name in CHECKPOINTS:
        params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in
                  _params(args.reference_dir / f"{name}.npz")]
        measured[name] = []
        for r in rows:
            _, _, var = dense_stats(params, jnp.asarray(splits.x_train[r]),
                                    jnp.asarray(splits.y_train[r]))
            sigma = np.sqrt(np.maximum(np.concatenate(
                [np.asarray(w, np.float64).ravel() for w, _ in var]), 0.0))
            measured[name].append((sigma, float(rms_sigma(var))))
    # the earlier protocol's sigma_ref: the median non-zero weight sigma at initialisation
    sigma_ref = float(np.mean([np.median(sig[sig > 0]) for sig, _ in measured["init"]]))
    print(f"{'checkpoint':>10} {'median sigma':>13} {'rms s':>10}  " + "  ".join(
        f"I shrinks at a={a:g} (rms | sigma_ref)" for a in args.alpha))
    for name, batches in measured.items():
        median = np.mean([np.median(sig[sig > 0]) for sig, _ in batches])
        scale = np.mean([s for _, s in batches])
        text = "  ".join(
            f"{100 * np.mean([np.mean(a * sig / s > 1) for sig, s in batches]):17.1f} % | "
            f"{100 * np.mean([np.mean(a * sig / sigma_ref > 1) for sig, _ in batches]):5.1f} %"
            for a in args.alpha)
        print(f"{name:>10} {median:13.3g} {scale:10.3g}  {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
