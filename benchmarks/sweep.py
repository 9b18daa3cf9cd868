"""Wall time of a vmapped K-run sweep against K sequential single runs.

    python benchmarks/sweep.py                      # small default problem
    python benchmarks/sweep.py --k 16 --epochs 3 --hidden 256,256 --n-train 8192

The engine's throughput (examples per second per core, K runs in one program) is measured by
``benchmarks/step_time.py --throughput``.

``sweep`` measures three ways of training K learning rates for the same epochs:

1. one process training all K side by side (``train.run_sweep`` with K configs): what
   ``sngrad tune`` does;
2. K processes one after another, each training one config: start-up, data transfer and
   compilation paid K times (the cost a one-job-per-setting workflow would have);
3. K single-config runs one after another inside one process (compiled once): isolates the
   gain of batching the K runs from the start-up and compilation savings.

Each wall time is the whole thing (process start to exit for 1 and 2).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np


def _splits(n_train: int, dim: int, classes: int, seed: int = 0):
    from sngrad.data import Splits

    rng = np.random.default_rng(seed)

    def part(n):
        x = rng.normal(size=(n, dim)).astype(np.float32)
        return x, rng.integers(0, classes, n).astype(np.int32)

    n_eval = max(n_train // 10, 1)
    return Splits(*part(n_train), *part(n_eval), *part(n_eval), num_classes=classes, name="random")


def _spec(hidden, epochs):
    from sngrad.spec import parse_spec

    tune = {"seeds": [0, 1], "lr_min": 1e-3, "lr_max": 0.1, "lr_per_decade": 2,
            "lr_bounds": [1e-5, 100.0], "axis_points": 3,
             "one_minus_momentum_bounds": [0.001, 1.0],
             "alpha_bounds": {"I": [1e-4, 1e4], "II": [1e-4, 1e4], "III": [1e-4, 100.0]},
             "one_minus_momentum": 0.1,
            "alpha": {"I": [0.5, 2.0], "II": [0.5, 2.0], "III": [0.05, 0.2]}}
    return parse_spec({"hidden": list(hidden), "init_seed": 0, "epochs": epochs, "seeds": [1],
                       "backend": "dense", "schedule": "constant", "checkpoint_every": 0,
                       "diverge_loss": 1e3, "snapshot_every": 1, "tune": tune})


def _learning_rates(k: int) -> list[float]:
    return [float(v) for v in np.geomspace(1e-3, 1e-1, k)]


def _sweep(args, lrs: list[float]) -> float:
    """Train one config per learning rate side by side; return the training seconds."""
    from sngrad.names import parse_run
    from sngrad.train.engine import TUNE_MODE, RunConfig, run_sweep

    splits = _splits(args.n_train, args.dim, args.classes)
    run = parse_run(args.optimizer)
    alpha = 1.0 if run.variant else None
    configs = [RunConfig(lr, None, alpha, 1, init_seed=0) for lr in lrs]
    result = run_sweep(splits, run, args.batch_size, _spec(args.hidden, args.epochs), configs,
                       TUNE_MODE)
    return result.train_s


def _worker(args) -> None:
    _sweep(args, json.loads(args.worker))


def _problem_argv(args) -> list[str]:
    return [
        "--optimizer", args.optimizer, "--batch-size", str(args.batch_size),
        "--epochs", str(args.epochs), "--hidden", ",".join(map(str, args.hidden)),
        "--n-train", str(args.n_train), "--dim", str(args.dim), "--classes", str(args.classes),
    ]


def _process(args, lrs) -> float:
    cmd = [sys.executable, __file__, *_problem_argv(args), "--worker", json.dumps(lrs)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def bench_sweep(args) -> None:
    lrs = _learning_rates(args.k)
    together = _process(args, lrs)
    separate = sum(_process(args, [lr]) for lr in lrs)
    start = time.perf_counter()
    for lr in lrs:  # in one process: the first call compiles, the others reuse it
        _sweep(args, [lr])
    in_process = time.perf_counter() - start
    widths = "-".join(map(str, [args.dim, *args.hidden, args.classes]))
    print(f"problem: {args.optimizer}, MLP {widths}, {args.n_train} examples, "
          f"B={args.batch_size}, {args.epochs} epochs")
    print(f"K={args.k} vmapped in one process:      {together:8.2f} s")
    print(f"K={args.k} separate processes:          {separate:8.2f} s  "
          f"(ratio {separate / together:.2f}x)")
    print(f"K={args.k} sequential, one process:     {in_process:8.2f} s  "
          f"(ratio {in_process / together:.2f}x, includes one compile)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--optimizer", default="sgd+sngrad1")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--hidden", type=lambda s: [int(v) for v in s.split(",")], default=[256, 256])
    p.add_argument("--n-train", type=int, default=4096)
    p.add_argument("--dim", type=int, default=784)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
    else:
        bench_sweep(args)


if __name__ == "__main__":
    main()
