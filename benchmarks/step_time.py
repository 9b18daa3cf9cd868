"""Step time and memory of noise-informed SGD against plain SGD, per statistics backend.

A step of plain SGD is ``theta <- theta - lr * grad(mean loss)``. A step of sngrad computes
the batch loss, the mean mu and the population variance sigma^2 of the per-example gradients
(``sngrad.stats``), scales mu by the variant-I factor ``min(1 / (alpha sigma), 1)`` and takes
the same step. Both are one jitted function; a step is timed until ``block_until_ready``.

Every (method, batch size) runs in a fresh subprocess, so that its peak resident memory
(``ru_maxrss``, which includes the Python and XLA runtime itself) is its own. A sngrad
process times plain SGD as well, interleaved step by step with its own steps, and its ratio
is median(sngrad) / median(SGD) of that one process: on a shared machine a ratio of two
runs taken at different times would mostly measure the change of load in between. The SGD
row reports SGD timed in a process of its own. ``xla_temp_mb`` (printed, not in the CSV) is
the scratch memory XLA plans for the step (``compiled.memory_analysis()``).

    python benchmarks/step_time.py                       # the default table, a few minutes
    python benchmarks/step_time.py --batch-sizes 128 --backends dense --out step_time.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

BACKENDS = ("dense", "chunked", "vmap")
# glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh pages, so an XLA
# scratch buffer just above it costs thousands of page faults on every step. These settings
# keep such blocks on the heap for SGD and sngrad alike (--malloc-tuning).
MALLOC_TUNING = {
    "MALLOC_MMAP_THRESHOLD_": str(256 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(1024 * 2**20),
    "MALLOC_TOP_PAD_": str(256 * 2**20),
}
# sgd_same_ms: the SGD step timed interleaved with this method in the same process, the
# denominator of ratio_to_sgd (for the sgd row, its own median).
CSV_COLUMNS = (
    "batch_size",
    "method",
    "median_ms",
    "sgd_same_ms",
    "ratio_to_sgd",
    "peak_mem_mb",
    "sizes",
)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated positive integers")
    return values


def _backend_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in BACKENDS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown backend(s) {bad or text!r}; valid: {', '.join(BACKENDS)}"
        )
    return names


# ----------------------------------------------------------------------------- worker


def _make_steps(backend: str | None, chunk_size: int, alpha: float, lr: float = 0.01):
    """The jitted SGD step and, if ``backend`` is given, the jitted sngrad step."""
    import jax
    import jax.numpy as jnp

    from sngrad import stats

    try:
        from sngrad.transforms import scale_factor

        def factor(mu, var):
            return scale_factor("I", mu, var, alpha)
    except ImportError:  # transforms.py not there yet: variant I inline

        def factor(mu, var):
            return jnp.minimum(1.0 / (alpha * jnp.sqrt(var)), 1.0)

    @jax.jit
    def sgd_step(params, x, y):
        loss, grad = stats.loss_and_grad_core(params, x, y)
        return loss, jax.tree.map(lambda p, g: p - lr * g, params, grad)

    if backend is None:
        return sgd_step, None
    cores = {
        "dense": stats.dense_stats,
        "vmap": stats.vmap_stats,
        "chunked": lambda p, x, y: stats.chunked_stats(p, x, y, chunk_size=chunk_size),
    }
    core = cores[backend]

    @jax.jit
    def sngrad_step(params, x, y):
        loss, mean, var = core(params, x, y)
        return loss, jax.tree.map(lambda p, m, v: p - lr * m * factor(m, v), params, mean, var)

    return sgd_step, sngrad_step


def _compile(step, params, x, y):
    compiled = step.lower(params, x, y).compile()
    try:
        temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
    except Exception:  # not every backend reports it
        temp = float("nan")
    return compiled, temp


def _time_once(step, params, x, y) -> float:
    import jax

    start = time.perf_counter()
    jax.block_until_ready(step(params, x, y))
    return time.perf_counter() - start


def worker(args) -> dict:
    """Time one method at one batch size; print a JSON line with the result."""
    import jax
    import numpy as np

    from sngrad.models import mlp_init

    params = mlp_init(jax.random.PRNGKey(0), args.sizes)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.sizes[0])).astype(np.float32)
    y = rng.integers(0, args.sizes[-1], args.batch).astype(np.int32)
    backend = None if args.worker == "sgd" else args.worker
    sgd_step, sn_step = _make_steps(backend, args.chunk_size, args.alpha)
    main_step = sgd_step if sn_step is None else sn_step

    main, temp_mb = _compile(main_step, params, x, y)
    first = _time_once(main, params, x, y)  # warm-up: first call touches all buffers
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    # Slow methods get fewer repeats: stop when the time budget is spent (at least 3).
    repeats = max(3, min(args.repeats, int(args.budget_s / max(first, 1e-3))))
    times, sgd_times = [], []
    sgd = None if sn_step is None else _compile(sgd_step, params, x, y)[0]
    if sgd is not None:
        _time_once(sgd, params, x, y)
    for _ in range(repeats):
        times.append(_time_once(main, params, x, y))
        if sgd is not None:
            sgd_times.append(_time_once(sgd, params, x, y))
    result = {
        "median_ms": 1e3 * statistics.median(times),
        "peak_mem_mb": peak_mb,
        "xla_temp_mb": temp_mb,
        "repeats": repeats,
    }
    if sgd_times:
        result["sgd_median_ms"] = 1e3 * statistics.median(sgd_times)
        result["ratio_to_sgd"] = statistics.median(times) / statistics.median(sgd_times)
    return result


# ----------------------------------------------------------------------------- driver


def _run_worker(method: str, batch: int, args) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        method,
        "--batch",
        str(batch),
        "--sizes",
        ",".join(map(str, args.sizes)),
        "--repeats",
        str(args.repeats),
        "--chunk-size",
        str(args.chunk_size),
        "--alpha",
        str(args.alpha),
        "--budget-s",
        str(args.budget_s),
    ]
    env = dict(os.environ)
    if args.malloc_tuning:
        env.update(MALLOC_TUNING)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s, env=env)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _write_csv(rows: list[dict], path: str) -> None:
    """Write atomically: a temporary file in the same folder, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _fmt(value, spec: str) -> str:
    return "" if value is None or value != value else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_int_list, default=[784, 1024, 1024, 1024, 10])
    parser.add_argument("--batch-sizes", type=_int_list, default=[128, 1024])
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per method")
    parser.add_argument("--backends", type=_backend_list, default=list(BACKENDS))
    parser.add_argument(
        "--vmap-max-batch",
        type=int,
        default=128,
        help="skip the vmap backend above this batch size (it holds B copies of the gradient)",
    )
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument(
        "--budget-s", type=float, default=20.0, help="time budget per method (min 3 repeats)"
    )
    parser.add_argument("--timeout-s", type=float, default=600.0, help="per subprocess")
    parser.add_argument(
        "--malloc-tuning",
        action="store_true",
        help="run the workers with glibc's mmap threshold raised (see MALLOC_TUNING)",
    )
    parser.add_argument("--out", help="CSV file to write (optional)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.chunk_size < 1 or args.alpha <= 0:
        parser.error("--repeats and --chunk-size must be >= 1 and --alpha > 0")

    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    sizes_text = "-".join(map(str, args.sizes))
    print(
        f"MLP {sizes_text}, variant I (alpha={args.alpha}), chunk size {args.chunk_size}, "
        f"malloc tuning {'on' if args.malloc_tuning else 'off'}"
    )
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    header = (
        f"{'B':>6} {'method':<14} {'median_ms':>10} {'ratio_to_sgd':>13} {'sgd_ms(same)':>13} "
        f"{'peak_rss_mb':>12} {'xla_temp_mb':>12} {'n':>3}"
    )
    print(header)
    rows, failures = [], 0
    for batch in args.batch_sizes:
        for method in ["sgd", *args.backends]:
            label = "sgd" if method == "sgd" else f"sngrad-{method}"
            if method == "vmap" and batch > args.vmap_max_batch:
                print(f"{batch:>6} {label:<14} skipped (>{args.vmap_max_batch})")
                continue
            res = _run_worker(method, batch, args)
            if "error" in res:
                print(f"{batch:>6} {label:<14} failed: {res['error']}")
                failures += 1
                continue
            ratio = 1.0 if method == "sgd" else res["ratio_to_sgd"]
            print(
                f"{batch:>6} {label:<14} {res['median_ms']:>10.1f} {ratio:>13.3f} "
                f"{_fmt(res.get('sgd_median_ms'), '.1f'):>13} {res['peak_mem_mb']:>12.0f} "
                f"{_fmt(res['xla_temp_mb'], '.1f'):>12} {res['repeats']:>3}",
                flush=True,
            )
            rows.append(
                {
                    "batch_size": batch,
                    "method": label,
                    "median_ms": round(res["median_ms"], 3),
                    "sgd_same_ms": round(res.get("sgd_median_ms", res["median_ms"]), 3),
                    "ratio_to_sgd": round(ratio, 4),
                    "peak_mem_mb": round(res["peak_mem_mb"], 1),
                    "sizes": sizes_text,
                }
            )
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if failures:
        print(f"{failures} measurement(s) failed; no CSV written", file=sys.stderr)
        return 1
    if args.out:
        _write_csv(rows, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
