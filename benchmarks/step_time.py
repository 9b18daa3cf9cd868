"""Cost of THE train step of every method against plain SGD, and the engine's throughput.

Step mode (default): for every network, batch size and method, a fresh subprocess builds the
step the engine trains with (:func:`sngrad.train.step.make_step`, dense statistics backend,
constant learning rate, per-step diagnostics off as in tuning) and SGD's step, and times them
interleaved: repeat i times ``inner`` method steps, then ``inner`` SGD steps, each block one
jitted ``fori_loop`` on a fixed batch, so that Python dispatch is not part of a step. A
sample is the block time / inner; the row gives the median over repeats and the spread
(interquartile range) of each, ``ratio = median / sgd_ms`` of the same process, and the
process's peak resident memory (``ru_maxrss``, which includes Python and the XLA runtime).

Methods: ``sgd``, ``sgd+sngrad1|2|3``, ``svag``, ``sgd+cv``, ``sgd+svrg`` and the peer a user
would otherwise pick, ``vmap+aggregating``: per-example gradients by ``vmap(grad)`` fed to
``optax.experimental.aggregating.process`` with its ``get_per_element_mean_and_sum_sq_diff_grads``
aggregator, whose mean and variance go through variant I and SGD.

Consistency: a row whose same-process SGD time differs from the ``sgd`` row's median by more
than the larger of the two spreads, or a variance method faster than its SGD, is measured
again in a fresh process (at most ``--retries`` times); if it still disagrees it is written
with the reason in ``flag`` rather than silently.

Throughput mode (``--throughput``): the engine itself (``run_sweep``) trains K runs in one
program on random data for a few epochs; examples per second = K * steps * B * epochs /
training seconds (compilation and evaluation excluded), in a subprocess limited to
``--threads`` cores, so ``examples_per_s_per_core`` = examples_per_s / threads.

    python benchmarks/step_time.py --networks 784-64-10,784-1024-1024-1024-10 \\
        --batch-sizes 128 --repeats 15 --out step_time.csv
    python benchmarks/step_time.py --throughput --networks 784-64-10 --runs 10,36 --out tp.csv

Engine mode (``--engine``): the engine's own compiled epoch program (``jit(vmap(scan(step)))``
of :class:`sngrad.train.engine.Programs`, as ``train`` builds it: K runs vmapped, K = the
number of final seeds of config/default.yaml unless ``--runs`` says otherwise, diagnostics
every ``--diagnostics-every`` steps (0: off; default: the engine's
``DIAGNOSTICS_EVERY``), the budget-step tracking on) is timed for every method in ONE
process, the methods interleaved round by round so that they share the machine's load. The
snapshot (anchor) program is not part of an epoch call and is not timed. A method's step time
is the fastest of its repeats (contention on a shared machine only adds time; the median is
shown beside it); its noise check asks the two fastest repeats to agree within ``--noise``,
else the methods that fail are timed again in the same process (``--retries`` more rounds)
and, still failing, written with the gap in ``flag``. Per method: seconds per step, examples
per second per core (K B / step time / threads), ``ratio`` to sgd's vmapped step, the
counted ratio of :mod:`sngrad.costs` and ``measured / counted``, the counted GFLOP/s and its
share of the best sustained rate of ``jnp.dot`` on the network's
layer shapes (B x d_in times d_in x d_out, timed in the same process).

    python benchmarks/step_time.py --engine --networks 784-64-10 --out engine.csv

In engine mode a network may also be a profile's on a dataset, ``PROFILE.yaml:DATASET`` (any
kind of :mod:`sngrad.architecture`, e.g. the flax CNN of ``config/smoke-cnn.yaml:digits``); its
peak rate is then :func:`sngrad.costs.calibrate_flops` on its own convolutions and products.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

STEP_METHODS = ("sgd", "sgd+sngrad1", "sgd+sngrad2", "sgd+sngrad3", "svag", "sgd+cv",
                "sgd+svrg", "vmap+aggregating")
THROUGHPUT_METHODS = ("sgd", "sgd+sngrad1", "sgd+sngrad2", "sgd+sngrad3", "sgd+cv")
VARIANCE_METHODS = tuple(m for m in STEP_METHODS if m != "sgd")
STEP_COLUMNS = ("network", "batch_size", "method", "median_ms", "spread", "sgd_ms", "ratio",
                "peak_rss_mb", "repeats", "attempts", "flag")
THROUGHPUT_COLUMNS = ("network", "batch_size", "method", "runs", "mode", "examples_per_s",
                      "examples_per_s_per_core", "threads", "steps_per_epoch", "epochs",
                      "train_s", "compile_s")
ENGINE_METHODS = ("sgd", "sgd+sngrad1", "sgd+sngrad2", "sgd+sngrad3", "svag", "msvag",
                  "sgd+cv", "sgd+svrg", "momentum", "adam")
ENGINE_COLUMNS = ("network", "batch_size", "method", "runs", "diagnostics_every", "step_ms",
                  "median_ms", "spread", "examples_per_s_per_core", "ratio", "counted_ratio",
                  "measured_over_counted", "counted_gflops", "matmul_gflops", "of_matmul",
                  "threads", "attempts", "flag")
LEARNING_RATE = 0.01
ALPHA = {"sgd+sngrad1": 1.0, "sgd+sngrad2": 1.0 / 128, "sgd+sngrad3": 0.1}
SAMPLE_S = 0.02  # wall time of one timed block


def _networks(text: str) -> list[list[int] | str]:
    """MLP widths ``784-64-10``, or (engine mode) a profile's network on a dataset,
    ``config/smoke-cnn.yaml:digits``; comma-separated."""
    nets = []
    for net in (n.strip() for n in text.split(",") if n.strip()):
        if ":" in net:
            nets.append(net)
            continue
        try:
            widths = [int(v) for v in net.split("-")]
        except ValueError:
            widths = []
        if len(widths) < 2 or min(widths) < 1:
            nets = []
            break
        nets.append(widths)
    if not nets:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected comma-separated networks like 784-64-10,784-1024-10 or "
            "PROFILE.yaml:DATASET (engine mode)")
    return nets


def _architecture(net):
    """The Architecture of a ``--network``: MLP widths or ``PROFILE.yaml:DATASET``."""
    from sngrad.architecture import as_architecture
    from sngrad.profile import architecture, read_yaml

    if isinstance(net, str):
        path, dataset = net.rsplit(":", 1)
        return architecture(read_yaml(path), dataset)
    return as_architecture(net)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated positive integers")
    return values


def _methods(allowed):
    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"unknown method(s) {bad or text!r}; valid: {', '.join(allowed)}")
        return names
    return parse


# ============================================================================ step worker


def _peer_step(batch_size: int):
    """vmap(grad) -> optax.experimental.aggregating -> variant I -> SGD, as a step."""
    import jax
    import optax
    from optax.experimental import aggregating

    from sngrad.models import cross_entropy, mlp_apply
    from sngrad.transforms import noise_informed

    inner = optax.chain(noise_informed("I", ALPHA["sgd+sngrad1"]), optax.sgd(LEARNING_RATE))

    def post_init(params):
        return inner.init(params)

    def post_update(updates, state, params=None, *, sum_sq_diff_grads, sample_size, **extra):
        var = jax.tree.map(lambda s: s / sample_size, sum_sq_diff_grads)
        return inner.update(updates, state, params, grad_var=var)

    opt = aggregating.process(
        optax.identity(), aggregating.get_per_element_mean_and_sum_sq_diff_grads(),
        optax.GradientTransformationExtraArgs(post_init, post_update), aggregator_has_aux=True)
    per_example = jax.vmap(jax.value_and_grad(
        lambda p, x1, y1: cross_entropy(mlp_apply(p, x1), y1)), in_axes=(None, 0, 0))

    def step(params, opt_state, batch, hparams, snapshot=None):
        losses, grads = per_example(params, *batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": losses.mean()}

    step.init = lambda params, hparams: opt.init(params)
    return step


def _step_of(method: str, batch_size: int):
    from sngrad.names import parse_run
    from sngrad.train.step import make_step

    if method == "vmap+aggregating":
        return _peer_step(batch_size)
    return make_step(parse_run(method), backend="dense", batch_size=batch_size, schedule="constant",
                     total_steps=1, diagnostics_on=False)


def _block(method: str, params, batch, inner: int):
    """jit: ``inner`` steps of ``method`` from (params, opt_state) on one batch."""
    import jax
    import jax.numpy as jnp

    step = _step_of(method, batch[0].shape[0])
    hp = {"learning_rate": jnp.float32(LEARNING_RATE)}
    if method in ALPHA:
        hp["alpha"] = jnp.float32(ALPHA[method])
    snap = None
    if method in ("sgd+cv", "sgd+svrg"):
        # a snapshot a little away from the parameters, as after some steps of training
        snap_params = jax.tree.map(lambda p: p * 0.99, params)
        snap = (snap_params, jax.tree.map(jnp.zeros_like, params))

    @jax.jit
    def run(params, opt_state):
        def body(_, carry):
            p, s = carry
            p, s, _ = step(p, s, batch, hp, snap)
            return p, s

        return jax.lax.fori_loop(0, inner, body, (params, opt_state))

    return run, step.init(params, hp)


def _timed(run, params, state, inner: int) -> float:
    import jax

    start = time.perf_counter()
    jax.block_until_ready(run(params, state))
    return (time.perf_counter() - start) / inner


def _quartiles(samples: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return q[1], q[2] - q[0]


def step_worker(args) -> dict:
    """Time one method against SGD at one (network, batch size); return the row's numbers."""
    import jax
    import numpy as np

    from sngrad.models import mlp_init

    sizes = args.network
    params = mlp_init(jax.random.PRNGKey(0), sizes)
    rng = np.random.default_rng(0)
    batch = (rng.standard_normal((args.batch, sizes[0])).astype(np.float32),
             rng.integers(0, sizes[-1], args.batch).astype(np.int32))

    def calibrated(method):
        run1, state = _block(method, params, batch, 1)
        _timed(run1, params, state, 1)  # compile and warm
        one = min(_timed(run1, params, state, 1) for _ in range(3))
        inner = max(1, min(1000, int(SAMPLE_S / max(one, 1e-6))))
        run, state = _block(method, params, batch, inner)
        _timed(run, params, state, inner)
        return run, state, inner

    main = calibrated(args.worker)
    sgd = calibrated("sgd") if args.worker != "sgd" else None
    times, sgd_times = [], []
    for _ in range(args.repeats):
        times.append(_timed(*_unpack(main, params)))
        if sgd is not None:
            sgd_times.append(_timed(*_unpack(sgd, params)))
    median, spread = _quartiles(times)
    out = {"median_ms": 1e3 * median, "spread": 1e3 * spread, "repeats": args.repeats,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if sgd_times:
        sgd_median, sgd_spread = _quartiles(sgd_times)
        out.update(sgd_ms=1e3 * sgd_median, sgd_spread=1e3 * sgd_spread)
    else:
        out.update(sgd_ms=out["median_ms"], sgd_spread=out["spread"])
    out["ratio"] = out["median_ms"] / out["sgd_ms"]
    return out


def _unpack(block, params):
    run, state, inner = block
    return run, params, state, inner


# ============================================================================ throughput worker


def throughput_worker(args) -> dict:
    """Examples per second of the engine training K runs of one method in one program."""
    import numpy as np

    from sngrad.data import Splits
    from sngrad.names import parse_run
    from sngrad.spec import parse_spec
    from sngrad.train.engine import TRAIN_MODE, TUNE_MODE, RunConfig, run_sweep

    sizes, batch, k = args.network, args.batch, args.runs_one
    rng = np.random.default_rng(0)

    def part(n):
        return (rng.standard_normal((n, sizes[0])).astype(np.float32),
                rng.integers(0, sizes[-1], n).astype(np.int32))

    n_train = args.steps * batch
    splits = Splits(*part(n_train), *part(256), *part(256), num_classes=sizes[-1], name="random")
    tune = {"seeds": [0, 1], "lr_min": 0.01, "lr_max": 0.1, "lr_per_decade": 2,
            "lr_bounds": [1e-5, 100.0], "axis_points": 3,
             "one_minus_momentum_bounds": [0.001, 1.0],
             "alpha_bounds": {"I": [1e-4, 1e4], "II": [1e-4, 1e4], "III": [1e-4, 100.0]},
             "one_minus_momentum": 0.1,
            "alpha": {"I": [0.5, 2.0], "II": [0.5, 2.0], "III": [0.05, 0.2]}}
    spec = parse_spec({"hidden": sizes[1:-1], "init_seed": 0, "epochs": args.epochs,
                       "seeds": [1], "backend": "dense", "schedule": "constant",
                       "checkpoint_every": 0, "diverge_loss": 1e3, "snapshot_every": 1,
                       "tune": tune})
    alpha = ALPHA.get(args.worker)
    configs = [RunConfig(LEARNING_RATE * (1 + 0.01 * i), None, alpha, 1 + i, init_seed=0)
               for i in range(k)]
    mode = TRAIN_MODE if args.mode == "train" else TUNE_MODE
    result = run_sweep(splits, parse_run(args.worker), batch, spec, configs, mode)
    examples = k * args.steps * batch * args.epochs
    return {"examples_per_s": examples / result.train_s, "train_s": result.train_s,
            "compile_s": result.compile_s}


# ============================================================================ engine worker


def _default_runs() -> int:
    """K of the study: the number of final seeds of config/default.yaml."""
    import yaml

    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    with open(os.path.join(root, "config", "default.yaml"), encoding="utf-8") as handle:
        return len(yaml.safe_load(handle)["train"]["seeds"])


def _matmul_rate(sizes, batch, seconds=1.0) -> float:
    """Best sustained FLOP/s of jnp.dot over the layer shapes (B x a) . (a x b)."""
    import jax
    import jax.numpy as jnp

    pairs = list(itertools.pairwise(sizes))
    keys = jax.random.split(jax.random.PRNGKey(1), 2 * len(pairs))
    mats = [(jax.random.normal(keys[2 * i], (batch, a)),
             jax.random.normal(keys[2 * i + 1], (a, b))) for i, (a, b) in enumerate(pairs)]
    dots = jax.jit(lambda ms: [jnp.dot(x, w) for x, w in ms])
    flops = sum(2 * batch * a * b for a, b in pairs)
    jax.block_until_ready(dots(mats))
    best, reps, deadline = 0.0, 1, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        tick = time.perf_counter()
        for _ in range(reps):
            out = dots(mats)
        jax.block_until_ready(out)
        elapsed = time.perf_counter() - tick
        best = max(best, reps * flops / elapsed)
        reps = reps * 2 if elapsed < 0.02 else reps
    return best


def _peak_rate(arch, batch) -> float:
    """The best sustained FLOP/s of the network's own products: ``jnp.dot`` on an MLP's
    layer shapes, :func:`sngrad.costs.calibrate_flops` (its convolutions) on another."""
    from sngrad import costs

    if arch.kind == "mlp":
        return _matmul_rate(arch.widths, batch)
    return costs.calibrate_flops(arch, batch)


def engine_worker(args) -> dict:
    """Time every method's compiled epoch program in one process, interleaved."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sngrad import costs
    from sngrad.data import Splits
    from sngrad.names import parse_run
    from sngrad.train import engine

    arch, batch, k = _architecture(args.network), args.batch, args.runs_one
    every = args.diagnostics_every_one
    rng = np.random.default_rng(0)
    n_train = args.steps * batch
    x = rng.standard_normal((n_train, math.prod(arch.input_shape))).astype(np.float32)
    y = rng.integers(0, arch.classes, n_train).astype(np.int32)
    splits = Splits(x, y, x[:64], y[:64], x[:64], y[:64], num_classes=arch.classes,
                    name="random")
    mode = engine.Mode(evaluate=("val", "test"), diagnostics=every > 0,
                       diagnostics_every=max(every, 1))
    data = engine.device_data(splits, mode, 1e3)
    calls = {}
    runs = {method: parse_run(method) for method in args.methods}  # the methods, parsed once
    for method in args.methods:
        progs = engine.Programs(runs[method], "dense", batch, n_train, arch, "constant", 0,
                                mode.diagnostics, mode.diagnostics_every, True)
        hp = {"learning_rate": jnp.full((k,), LEARNING_RATE, jnp.float32)}
        if method in ALPHA:
            hp["alpha"] = jnp.full((k,), ALPHA[method], jnp.float32)
        if method == "momentum":
            hp["momentum"] = jnp.full((k,), 0.9, jnp.float32)
        keys = [engine.run_keys(engine.RunConfig(LEARNING_RATE, None, None, 1 + i))
                for i in range(k)]
        state = progs.init(engine.initial_parameters([a for a, _ in keys], arch),
                           jnp.asarray(np.stack([b for _, b in keys])), hp)
        if progs.snapshots:
            state = progs.snapshot(state, data)
        k_star = jnp.int32(10 ** 9)  # tracked, never reached: the cond runs every step
        fn = progs.epoch.lower(state, hp, jnp.int32(0), data, k_star).compile()
        jax.device_get(fn(state, hp, jnp.int32(0), data, k_star))
        calls[method] = (fn, state, hp, k_star)
    matmul = _peak_rate(arch, batch)
    per_step = {m: [] for m in args.methods}
    attempts = dict.fromkeys(args.methods, 0)

    def spread(samples):
        # best-of estimate: contention only adds time, so the fastest repeat is the machine's
        # rate; it is trusted when the second fastest agrees with it within --noise
        fast = sorted(samples)[:2]
        return fast[1] / fast[0] - 1 if len(fast) == 2 else float("inf")

    pending = list(args.methods)
    for _ in range(args.retries + 1):
        timed = ["sgd", *[m for m in pending if m != "sgd"]] if "sgd" in calls else pending
        for m in timed:
            attempts[m] += 1
        for _ in range(args.repeats):
            for method in timed:
                fn, state, hp, k_star = calls[method]
                tick = time.perf_counter()
                record = jax.device_get(fn(state, hp, jnp.int32(1), data, k_star)[1])
                if "lambda_weights" in record:  # the host's share of the epoch, as trained
                    engine._host_median(record["lambda_weights"])
                per_step[method].append((time.perf_counter() - tick) / args.steps)
        pending = [m for m in args.methods if spread(per_step[m]) > args.noise]
        if not pending:
            break
    matmul = max(matmul, _peak_rate(arch, batch))
    out = {"matmul": matmul, "rows": {}}
    for method, samples in per_step.items():
        out["rows"][method] = {"step_s": min(samples), "median_s": statistics.median(samples),
                               "spread": spread(samples), "attempts": attempts[method],
                               "counted_flops": k * costs.step_flops(runs[method], arch, batch)}
    return out


def run_engine(args) -> list[dict]:
    rows = []
    for net in args.networks:
        for batch in args.batch_sizes:
            for every in args.diagnostics_every:
                # sgd is always timed alongside: every ratio is within one process
                methods = ["sgd", *[m for m in args.methods if m != "sgd"]]
                res = _run_worker(["--worker", ",".join(methods), "--engine-worker",
                                   "--network", _net_text(net), "--batch", str(batch),
                                   "--runs-one", str(args.runs[0]), "--steps",
                                   str(args.steps), "--repeats", str(args.repeats),
                                   "--retries", str(args.retries), "--noise", str(args.noise),
                                   "--diagnostics-every-one", str(every)], args)
                if "error" in res:
                    raise SystemExit(f"{_net_text(net)} B={batch}: {res['error']}")
                sgd = res["rows"]["sgd"]
                for m in args.methods:
                    r = res["rows"][m]
                    ratio = r["step_s"] / sgd["step_s"]
                    counted = r["counted_flops"] / sgd["counted_flops"]
                    rate = r["counted_flops"] / r["step_s"]
                    row = {"network": _net_text(net), "batch_size": batch, "method": m,
                           "runs": args.runs[0], "diagnostics_every": every,
                           "step_ms": round(1e3 * r["step_s"], 4),
                           "median_ms": round(1e3 * r["median_s"], 4),
                           "spread": round(r["spread"], 4),
                           "examples_per_s_per_core": round(
                               args.runs[0] * batch / r["step_s"] / args.threads),
                           "ratio": round(ratio, 4), "counted_ratio": round(counted, 4),
                           "measured_over_counted": round(ratio / counted, 4),
                           "counted_gflops": round(rate / 1e9, 2),
                           "matmul_gflops": round(res["matmul"] / 1e9, 2),
                           "of_matmul": round(rate / res["matmul"], 4),
                           "threads": args.threads, "attempts": r["attempts"],
                           "flag": (f"best two repeats {r['spread']:.0%} apart after "
                                    f"{r['attempts']} rounds" if r["spread"] > args.noise
                                    else "")}
                    rows.append(row)
                    print(f"{row['network']:>24} B={batch} K={row['runs']} diag/{every} "
                          f"{m:<12} {row['step_ms']:>9.3f} ms (median {row['median_ms']:.3f}) "
                          f"{row['examples_per_s_per_core']:>8} ex/s/core x{row['ratio']:.3f} "
                          f"(counted x{row['counted_ratio']:.3f}, measured/counted "
                          f"{row['measured_over_counted']:.3f}) {row['counted_gflops']:.1f} "
                          f"GFLOP/s = {row['of_matmul']:.0%} of matmul {flag_text(row)}",
                          flush=True)
    return rows


def flag_text(row: dict) -> str:
    return f"[{row['flag']}]" if row["flag"] else ""


# ============================================================================ driver


def _thread_env(threads: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (f"--xla_cpu_multi_thread_eigen=false "
                        f"intra_op_parallelism_threads={threads}")
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    return env


def _run_worker(extra: list[str], args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *extra, "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s,
                          env=_thread_env(args.threads))
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _net_text(net: list[int] | str) -> str:
    return net if isinstance(net, str) else "-".join(map(str, net))


def _disagreement(method: str, res: dict, sgd_row: dict | None) -> str:
    """Why a row contradicts the table ('' if it does not)."""
    if method in VARIANCE_METHODS and res["ratio"] < 1.0:
        return "faster than sgd"
    if sgd_row is not None and method != "sgd":
        tolerance = max(res["sgd_spread"], sgd_row["spread"])
        if abs(res["sgd_ms"] - sgd_row["median_ms"]) > tolerance:
            return "sgd reference off by more than the spread"
    return ""


def run_steps(args) -> list[dict]:
    rows = []
    for net in args.networks:
        for batch in args.batch_sizes:
            sgd_row = None
            for method in args.methods:
                base = ["--worker", method, "--network", _net_text(net), "--batch", str(batch),
                        "--repeats", str(args.repeats)]
                attempts, flag = 0, "not measured"
                while flag and attempts <= args.retries:
                    if attempts:
                        print(f"  re-measuring {method} ({flag})", flush=True)
                    res = _run_worker(base, args)
                    attempts += 1
                    if "error" in res:
                        raise SystemExit(f"{_net_text(net)} B={batch} {method}: {res['error']}")
                    flag = _disagreement(method, res, sgd_row)
                if method == "sgd":
                    sgd_row = res
                row = {"network": _net_text(net), "batch_size": batch, "method": method,
                       **{k: round(res[k], 4) for k in ("median_ms", "spread", "sgd_ms",
                                                         "ratio", "peak_rss_mb")},
                       "repeats": res["repeats"], "attempts": attempts, "flag": flag}
                rows.append(row)
                print(f"{row['network']:>24} {batch:>5} {method:<17} {row['median_ms']:>9.3f} "
                      f"+-{row['spread']:<7.3f} sgd {row['sgd_ms']:>8.3f} x{row['ratio']:<6.2f} "
                      f"{row['peak_rss_mb']:>7.0f} MB {flag}", flush=True)
    return rows


def run_throughput(args) -> list[dict]:
    rows = []
    for net in args.networks:
        for batch in args.batch_sizes:
            for k in args.runs:
                for method in args.methods:
                    res = _run_worker(["--worker", method, "--network", _net_text(net),
                                       "--batch", str(batch), "--runs-one", str(k),
                                       "--steps", str(args.steps), "--epochs",
                                       str(args.epochs), "--mode", args.mode], args)
                    if "error" in res:
                        raise SystemExit(f"{_net_text(net)} K={k} {method}: {res['error']}")
                    row = {"network": _net_text(net), "batch_size": batch, "method": method,
                           "runs": k, "mode": args.mode,
                           "examples_per_s": round(res["examples_per_s"]),
                           "examples_per_s_per_core": round(res["examples_per_s"] / args.threads),
                           "threads": args.threads, "steps_per_epoch": args.steps,
                           "epochs": args.epochs, "train_s": round(res["train_s"], 3),
                           "compile_s": round(res["compile_s"], 2)}
                    rows.append(row)
                    print(f"{row['network']:>12} B={batch} K={k:<3} {method:<12} "
                          f"{row['examples_per_s_per_core']:>9} examples/s/core "
                          f"({row['train_s']} s, compile {row['compile_s']} s)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", type=_networks, default=_networks("784-64-10"))
    p.add_argument("--batch-sizes", type=_int_list, default=[128])
    p.add_argument("--repeats", type=int, default=15, help="timed samples per method")
    p.add_argument("--retries", type=int, default=2, help="re-measurements of a bad row")
    p.add_argument("--threads", type=int, default=1, help="cores per worker process")
    p.add_argument("--throughput", action="store_true", help="engine throughput mode")
    p.add_argument("--engine", action="store_true",
                   help="time the engine's vmapped epoch program, all methods in one process")
    p.add_argument("--diagnostics-every", type=lambda t: [int(v) for v in t.split(",")],
                   default=None, help="engine: diagnostics every k steps, 0 = off (list)")
    p.add_argument("--noise", type=float, default=0.05,
                   help="engine: largest spread (IQR / median) accepted without a re-measure")
    p.add_argument("--methods", help="comma-separated; default: all of the mode")
    p.add_argument("--runs", type=_int_list, default=[10, 36], help="throughput: K values")
    p.add_argument("--steps", type=int, default=60, help="throughput: steps per epoch")
    p.add_argument("--epochs", type=int, default=3, help="throughput: epochs")
    p.add_argument("--mode", choices=("tune", "train"), default="tune",
                   help="throughput: engine mode (train adds per-step diagnostics)")
    p.add_argument("--timeout-s", type=float, default=900.0, help="per worker process")
    p.add_argument("--out", help="CSV file to write")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--network", type=lambda t: _networks(t)[0], help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--runs-one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--engine-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--diagnostics-every-one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 2 or args.retries < 0 or args.threads < 1:
        p.error("--repeats must be >= 2, --retries >= 0, --threads >= 1")
    if args.worker and args.engine_worker:
        args.methods = args.worker.split(",")
        print(json.dumps(engine_worker(args)))
        return 0
    if args.worker:
        work = throughput_worker if args.runs_one else step_worker
        print(json.dumps(work(args)))
        return 0
    if args.engine:
        from sngrad.train.engine import DIAGNOSTICS_EVERY

        args.methods = (_methods(ENGINE_METHODS)(args.methods) if args.methods
                        else list(ENGINE_METHODS))
        args.runs = [_default_runs()] if "--runs" not in (argv or sys.argv) else args.runs
        args.diagnostics_every = args.diagnostics_every or [DIAGNOSTICS_EVERY]
        if args.steps == 60:
            args.steps = 16  # a shorter epoch call: the machine is shared
        print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}",
              flush=True)
        rows = run_engine(args)
        print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        if args.out:
            from sngrad.io import write_csv

            write_csv(args.out, ENGINE_COLUMNS, rows)
            print(f"wrote {args.out}")
        return 0
    allowed = THROUGHPUT_METHODS if args.throughput else STEP_METHODS
    args.methods = _methods(allowed)(args.methods) if args.methods else list(allowed)
    if not args.throughput and args.methods[0] != "sgd":
        args.methods = ["sgd", *[m for m in args.methods if m != "sgd"]]
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    rows = run_throughput(args) if args.throughput else run_steps(args)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.out:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
        from sngrad.io import write_csv

        write_csv(args.out, THROUGHPUT_COLUMNS if args.throughput else STEP_COLUMNS, rows)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
