"""The training engine: K runs of one (dataset, optimizer, batch size) in one compiled program.

One epoch of one run
    The training split lives on the device. At epoch e a run permutes it with the key
    ``fold_in(shuffle_key, e)`` and takes ``S = N // B`` batches of B examples; the last
    ``N mod B`` examples of the permutation are dropped, so every step has the same shape and
    each epoch leaves out a different random remainder. The S steps are one ``lax.scan``.
    Optimizers with a ``+sngrad`` variant get ``(loss, mean, var)`` from the spec's gradient
    statistics backend; the others pay only for ``stats.loss_and_grad_core``.

K runs side by side
    The per-run inputs (initial parameters, shuffle key, learning rate, momentum, alpha) are
    arrays with a leading axis K and the epoch is ``jit(vmap(epoch))``: a learning-rate grid
    times the tuning seeds, or the final seeds, train as one program that is compiled once.
    The optimizer is built inside the vmapped function from the traced hyper-parameters.

Seeds
    Seed s gives ``init_key, shuffle_key = split(PRNGKey(s))``, identical across optimizers,
    so every optimizer starts from the same weights and sees the same batches. In tuning all
    settings start from ``mlp_init(PRNGKey(init_seed))`` and tuning seed s only sets the
    shuffle key (``split(PRNGKey(s))[1]``).

Per-epoch record (train command)
    At the end of every epoch: loss and accuracy on the full train, validation and test
    splits (the parameters after the epoch, not a running mean over it), the divergence flag,
    the wall time since the start of training (compilation excluded; a resumed job continues
    the clock of the interrupted one) and the gradient-noise diagnostics of
    :mod:`sngrad.diagnostics` on a fixed diagnostic batch of B training examples (chosen once
    with numpy seed 0, the same for every optimizer and seed) with the dense backend.
    ``tune`` and ``alpha-sweep`` record only the running mean of the batch losses per epoch and
    evaluate validation (and test for alpha-sweep) after the last epoch.

Divergence
    A run is diverged from the first epoch in which a batch loss is NaN or Inf, or the epoch's
    training loss (full split for train, running mean otherwise) is not finite or exceeds
    ``diverge_loss``. The flag is sticky; the run keeps going (under vmap it cannot stop) and
    its later numbers are whatever they are, typically NaN.

Tuning protocol
    Every optimizer gets the same budget of ``tune.budget`` settings. One-hyper-parameter
    optimizers: a log-spaced learning-rate grid over [lr_min, lr_max]. Momentum methods
    (``has_momentum``): ``budget`` random (log-uniform lr, uniform momentum) pairs from
    ``numpy.random.default_rng(search_seed)``. sngrad variants keep alpha fixed at the spec's
    alpha (null: ``DEFAULT_ALPHA``). Each setting trains once per tuning seed; it is scored by
    the validation accuracy after the final epoch (no early stopping, matching the fixed-epoch
    protocol of the study), averaged over tuning seeds, ties broken by the lower mean
    validation loss, then by the order of the grid. A setting with any diverged seed cannot be
    chosen. If every setting diverged, best.json says ``"all_diverged": true`` with null
    hyper-parameters, and ``train`` / ``alpha-sweep`` then write their rows with NaN metrics and
    ``diverged=True`` instead of training.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from sngrad import checkpoint as ckpt
from sngrad.diagnostics import COLUMNS as DIAG_COLUMNS
from sngrad.diagnostics import network_diagnostics
from sngrad.errors import SngradError
from sngrad.io import write_csv, write_json
from sngrad.models import cross_entropy, mlp_apply, mlp_init
from sngrad.optimizers import build_optimizer, has_momentum, needs_variance, parse_optimizer
from sngrad.provenance import provenance, sha256_file
from sngrad.spec import Hparams, TrainSpec, load_hparams, parse_spec
from sngrad.stats import chunked_stats, dense_stats, loss_and_grad_core, vmap_stats
from sngrad.transforms import DEFAULT_ALPHA

EVAL_CHUNK = 1024  # examples per evaluation step: bounds activation memory at K x 1024 x width
DIAG_SEED = 0
CHUNKED_STATS_SIZE = 32

TUNING_COLUMNS = (
    "setting", "learning_rate", "momentum", "alpha", "seed",
    "val_accuracy", "val_loss", "train_loss", "diverged", "chosen",
)
METRICS_COLUMNS = (
    "dataset", "optimizer", "batch_size", "seed", "epoch", "learning_rate", "momentum", "alpha",
    "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy",
    "wall_time", "diverged",
)
DIAGNOSTICS_COLUMNS = (
    "dataset", "optimizer", "batch_size", "seed", "epoch", "layer", *DIAG_COLUMNS,
)
ALPHA_COLUMNS = (
    "alpha", "seed", "val_accuracy", "val_loss", "test_accuracy", "test_loss", "diverged",
)


# ============================================================================ runs and modes


@dataclass(frozen=True)
class RunConfig:
    """One of the K runs of a sweep. ``init_seed=None``: initial weights from ``seed``."""

    learning_rate: float
    momentum: float | None
    alpha: float | None
    seed: int
    init_seed: int | None = None


@dataclass(frozen=True)
class Mode:
    """What a sweep measures: per-epoch evaluation, diagnostics, evaluation after training."""

    per_epoch: tuple[str, ...] = ()
    diagnostics: bool = False
    final: tuple[str, ...] = ()


TRAIN_MODE = Mode(per_epoch=("train", "val", "test"), diagnostics=True)
TUNE_MODE = Mode(final=("val",))
ALPHA_MODE = Mode(final=("val", "test"))


@dataclass
class SweepResult:
    records: dict[str, np.ndarray]  # name -> (epochs, K, ...)
    final: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (K,)
    compile_s: float = 0.0
    train_s: float = 0.0
    resumed_from: int = 0


def _keys(config: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(config.seed))
    if config.init_seed is not None:
        init_key = jax.random.PRNGKey(config.init_seed)
    return np.asarray(init_key), np.asarray(shuffle_key)


def _hparam_arrays(optimizer: str, configs: Sequence[RunConfig]) -> dict[str, jax.Array]:
    """The traced hyper-parameters, (K,) float32 each; only those the optimizer takes."""
    hp = {"learning_rate": [c.learning_rate for c in configs]}
    if has_momentum(optimizer):
        hp["momentum"] = [c.momentum for c in configs]
    if needs_variance(optimizer):
        hp["alpha"] = [c.alpha for c in configs]
    for name, values in hp.items():
        if any(v is None for v in values):
            raise SngradError(f"{optimizer} needs a {name} for every run; got {values}")
    return {k: jnp.asarray(v, jnp.float32) for k, v in hp.items()}


# ============================================================================ device programs


def _eval_index(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices 0..n-1 in chunks of EVAL_CHUNK (last one padded with 0) and the valid mask."""
    chunk = min(EVAL_CHUNK, n)
    count = -(-n // chunk)
    flat = np.zeros(count * chunk, np.int32)
    flat[:n] = np.arange(n)
    mask = np.arange(count * chunk) < n
    return flat.reshape(count, chunk), mask.reshape(count, chunk)


def _evaluate(params, x, y, idx, mask):
    """Mean cross-entropy and accuracy over the rows ``idx[mask]`` of (x, y)."""

    def body(acc, chunk):
        rows, valid = chunk
        logits = mlp_apply(params, x[rows])
        labels = y[rows]
        loss = jnp.sum(jnp.where(valid, cross_entropy(logits, labels), 0.0))
        hits = jnp.sum(valid & (jnp.argmax(logits, axis=-1) == labels))
        return (acc[0] + loss, acc[1] + hits), None

    (loss_sum, hits), _ = lax.scan(body, (jnp.float32(0.0), jnp.int32(0)), (idx, mask))
    n = jnp.sum(mask)
    return loss_sum / n, hits / n


def device_data(splits, batch_size: int, mode: Mode) -> dict[str, jax.Array]:
    """The arrays the programs read: splits, evaluation chunk indices, diagnostic batch."""
    data = {"x_train": splits.x_train, "y_train": splits.y_train}
    for name in {*mode.per_epoch, *mode.final}:
        x, y = getattr(splits, f"x_{name}"), getattr(splits, f"y_{name}")
        if len(y) == 0:
            raise SngradError(f"the {name} split is empty; allowed: at least 1 example")
        data[f"x_{name}"], data[f"y_{name}"] = x, y
        data[f"idx_{name}"], data[f"mask_{name}"] = _eval_index(len(y))
    if mode.diagnostics:
        rows = np.sort(
            np.random.default_rng(DIAG_SEED).choice(len(splits.y_train), batch_size, replace=False)
        )
        data["x_diag"], data["y_diag"] = splits.x_train[rows], splits.y_train[rows]
    return {k: jnp.asarray(v) for k, v in data.items()}


def _stats(backend: str):
    """The jit-friendly statistics core of ``backend`` (looked up when a program is traced)."""
    if backend == "chunked":
        return functools.partial(chunked_stats, chunk_size=CHUNKED_STATS_SIZE)
    return {"dense": dense_stats, "vmap": vmap_stats}[backend]


def _build(optimizer: str, hp: dict):
    """The optimizer with traced hyper-parameters (absent keys: the optimizer takes none)."""
    return build_optimizer(
        optimizer, hp["learning_rate"], momentum=hp.get("momentum"), alpha=hp.get("alpha")
    )


@functools.lru_cache(maxsize=8)
def _init_program(optimizer: str, sizes: tuple[int, ...]):
    """jit(vmap(init)): per run (init key, shuffle key, hparams) -> the initial state."""

    def init_one(init_key, shuffle_key, hp):
        params = mlp_init(init_key, list(sizes))
        return {
            "params": params,
            "opt": _build(optimizer, hp).init(params),
            "key": shuffle_key,
            "diverged": jnp.zeros((), bool),
        }

    return jax.jit(jax.vmap(init_one))


class Programs:
    """The jitted init / epoch / final-evaluation functions of one sweep shape.

    Build them with :func:`programs` so that runs of the same shape in one process (tests,
    the benchmark's sequential baseline) reuse the compiled code instead of compiling again.
    """

    def __init__(self, optimizer, backend, batch_size, n_train, sizes, mode):
        self.optimizer, self.mode = optimizer, mode
        self.variant = parse_optimizer(optimizer).variant
        self.batch_size, self.n_train, self.sizes = batch_size, n_train, list(sizes)
        self.steps = n_train // batch_size
        self.backend = backend
        self.init = _init_program(optimizer, tuple(sizes))
        self.epoch = jax.jit(jax.vmap(self._epoch_one, in_axes=(0, 0, None, None)))
        self.final = jax.jit(jax.vmap(self._final_one, in_axes=(0, None)))

    def _optimizer(self, hp):
        return _build(self.optimizer, hp)

    def _epoch_one(self, state, hp, epoch, data):
        opt = self._optimizer(hp)
        order = jax.random.permutation(jax.random.fold_in(state["key"], epoch), self.n_train)
        order = order[: self.steps * self.batch_size].reshape(self.steps, self.batch_size)

        def step(carry, rows):
            params, opt_state = carry
            xb, yb = data["x_train"][rows], data["y_train"][rows]
            if self.variant is None:
                loss, grad = loss_and_grad_core(params, xb, yb)
                updates, opt_state = opt.update(grad, opt_state, params)
            else:
                loss, grad, var = _stats(self.backend)(params, xb, yb)
                updates, opt_state = opt.update(grad, opt_state, params, grad_var=var)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = lax.scan(step, (state["params"], state["opt"]), order)
        out = {"train_loss_running": jnp.mean(losses)}
        for name in self.mode.per_epoch:
            out[f"{name}_loss"], out[f"{name}_accuracy"] = _evaluate(
                params, data[f"x_{name}"], data[f"y_{name}"], data[f"idx_{name}"],
                data[f"mask_{name}"],
            )
        watched = out.get("train_loss", out["train_loss_running"])
        diverged = (
            state["diverged"]
            | ~jnp.all(jnp.isfinite(losses))
            | ~jnp.isfinite(watched)
            | (watched > data["diverge_loss"])
        )
        out["diverged"] = diverged
        if self.mode.diagnostics:
            _, mu, var = dense_stats(params, data["x_diag"], data["y_diag"])
            for name, values in network_diagnostics(mu, var).items():
                out[f"diag_{name}"] = values
        new_state = {**state, "params": params, "opt": opt_state, "diverged": diverged}
        return new_state, out

    def _final_one(self, state, data):
        out = {}
        for name in self.mode.final:
            out[f"{name}_loss"], out[f"{name}_accuracy"] = _evaluate(
                state["params"], data[f"x_{name}"], data[f"y_{name}"], data[f"idx_{name}"],
                data[f"mask_{name}"],
            )
        return out


@functools.lru_cache(maxsize=8)
def programs(optimizer, backend, batch_size, n_train, sizes: tuple, mode) -> Programs:
    return Programs(optimizer, backend, batch_size, n_train, sizes, mode)


# ============================================================================ the sweep loop


def _stack(records: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not records:
        return {}
    return {k: np.stack([r[k] for r in records]) for k in records[0]}


def _unstack(stacked: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    count = len(next(iter(stacked.values()))) if stacked else 0
    return [{k: v[i] for k, v in stacked.items()} for i in range(count)]


def _progress(total: int, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="epoch",
                disable=not sys.stderr.isatty(), leave=False)


def run_sweep(
    splits,
    optimizer: str,
    batch_size: int,
    spec: TrainSpec,
    configs: Sequence[RunConfig],
    mode: Mode,
    *,
    checkpoint_dir: str | Path | None = None,
    fingerprint: str = "",
    progress: str = "",
) -> SweepResult:
    """Train the K ``configs`` side by side for ``spec.epochs`` epochs.

    With ``checkpoint_dir``, the state is saved every ``spec.checkpoint_every`` epochs (not
    after the last, when the caller writes results instead) and a checkpoint there with the
    same ``fingerprint`` is resumed. Resuming is exact: the per-epoch shuffle is a function of
    (key, epoch) and the saved arrays are the device arrays, bit for bit.
    """
    if not configs:
        raise SngradError("a sweep needs at least one run")
    check_batch_size(batch_size, splits)
    sizes = (splits.x_train.shape[1], *spec.hidden, splits.num_classes)
    progs = programs(optimizer, spec.backend, batch_size, len(splits.y_train), sizes, mode)
    data = device_data(splits, batch_size, mode)
    data["diverge_loss"] = jnp.float32(spec.diverge_loss)
    hp = _hparam_arrays(optimizer, configs)
    keys = [_keys(c) for c in configs]
    state = progs.init(
        jnp.asarray(np.stack([k[0] for k in keys])), jnp.asarray(np.stack([k[1] for k in keys])),
        hp,
    )

    records: list[dict[str, np.ndarray]] = []
    start, elapsed = 0, 0.0
    saved = ckpt.load(checkpoint_dir, fingerprint) if checkpoint_dir is not None else None
    if saved is not None:
        leaves, treedef = jax.tree.flatten(state)
        if [(a.shape, a.dtype) for a in saved.leaves] == [(a.shape, a.dtype) for a in leaves]:
            state = jax.tree.unflatten(treedef, [jnp.asarray(a) for a in saved.leaves])
            records, start, elapsed = _unstack(saved.records), saved.epoch, saved.elapsed_s
        else:
            print(f"sngrad: ignoring checkpoint {checkpoint_dir}: other shapes", file=sys.stderr)

    t0 = time.perf_counter()
    epoch_fn = progs.epoch.lower(state, hp, jnp.int32(start), data).compile()
    compile_s = time.perf_counter() - t0

    clock = time.perf_counter() - elapsed
    bar = _progress(spec.epochs, start, progress)
    try:
        for epoch in range(start, spec.epochs):
            state, out = epoch_fn(state, hp, jnp.int32(epoch), data)
            out = jax.device_get(out)
            out["wall_time"] = np.float64(time.perf_counter() - clock)
            records.append(out)
            bar.update(1)
            done = epoch + 1
            every = spec.checkpoint_every
            if checkpoint_dir is not None and every and done % every == 0 and done < spec.epochs:
                leaves = jax.device_get(jax.tree.leaves(state))
                saved = ckpt.Checkpoint(done, float(out["wall_time"]), leaves, _stack(records))
                ckpt.save(checkpoint_dir, fingerprint, saved)
    finally:
        bar.close()
    train_s = time.perf_counter() - clock
    final = jax.device_get(progs.final(state, data)) if mode.final else {}
    return SweepResult(_stack(records), final, compile_s, train_s, start)


def check_batch_size(batch_size: Any, splits) -> int:
    n = len(splits.y_train)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise SngradError(f"batch size must be an integer, got {batch_size!r}")
    if not 1 <= batch_size <= n:
        raise SngradError(
            f"batch size {batch_size} is not allowed; it must be in [1, {n}] (training split)"
        )
    return int(batch_size)


# ============================================================================ tuning protocol


def effective_alpha(optimizer: str, spec_alpha: float | None) -> float | None:
    variant = parse_optimizer(optimizer).variant
    if variant is None:
        return None
    return DEFAULT_ALPHA[variant] if spec_alpha is None else spec_alpha


def tuning_settings(optimizer: str, spec: TrainSpec) -> list[dict[str, float | None]]:
    """The ``tune.budget`` settings searched for ``optimizer`` (see the module docstring)."""
    t = spec.tune
    alpha = effective_alpha(optimizer, spec.alpha)
    if has_momentum(optimizer):
        rng = np.random.default_rng(t.search_seed)
        lrs = np.exp(rng.uniform(math.log(t.lr_min), math.log(t.lr_max), t.budget))
        moms = rng.uniform(t.momentum_min, t.momentum_max, t.budget)
        return [
            {"learning_rate": float(lr), "momentum": float(m), "alpha": alpha}
            for lr, m in zip(lrs, moms, strict=True)
        ]
    lrs = np.geomspace(t.lr_min, t.lr_max, t.budget)
    return [{"learning_rate": float(lr), "momentum": None, "alpha": alpha} for lr in lrs]


def select_setting(val_accuracy, val_loss, diverged) -> int | None:
    """Index of the best setting from (settings, seeds) arrays, or None if all diverged.

    Highest mean validation accuracy, then lowest mean validation loss, then first index.
    """
    acc = np.mean(val_accuracy, axis=1)
    loss = np.mean(val_loss, axis=1)
    ok = ~np.any(diverged, axis=1) & np.isfinite(acc) & np.isfinite(loss)
    candidates = [i for i in range(len(acc)) if ok[i]]
    if not candidates:
        return None
    return min(candidates, key=lambda i: (-acc[i], loss[i], i))


# ============================================================================ commands


def _fingerprint(command, data_sha, optimizer, batch_size, spec, configs) -> str:
    return ckpt.fingerprint({
        "command": command,
        "data_sha256": data_sha,
        "optimizer": optimizer,
        "batch_size": batch_size,
        "spec": spec.to_json(),
        "configs": [c.__dict__ for c in configs],
    })


def _load(data_path: str | Path, batch_size: int):
    from sngrad.data import load_splits

    splits = load_splits(data_path)
    check_batch_size(batch_size, splits)
    return splits


def _f(x) -> float:
    return float(x)


def tune(data_path, optimizer, batch_size, spec: TrainSpec, out_dir, argv=()) -> dict:
    """Search the setting for one (dataset, optimizer, batch size); write tuning.csv,
    best.json and tuning_provenance.json into ``out_dir``; return best.json's content."""
    started = time.perf_counter()
    parse_optimizer(optimizer)
    splits = _load(data_path, batch_size)
    data_sha = sha256_file(data_path)
    settings = tuning_settings(optimizer, spec)
    seeds = spec.tune.seeds
    configs = [
        RunConfig(s["learning_rate"], s["momentum"], s["alpha"], seed, spec.init_seed)
        for s in settings
        for seed in seeds
    ]
    ckpt_dir = ckpt.checkpoint_dir(out_dir, "tune")
    fp = _fingerprint("tune", data_sha, optimizer, batch_size, spec, configs)
    result = run_sweep(splits, optimizer, batch_size, spec, configs, TUNE_MODE,
                       checkpoint_dir=ckpt_dir, fingerprint=fp,
                       progress=f"tune {optimizer} bs{batch_size}")

    shape = (len(settings), len(seeds))
    acc = result.final["val_accuracy"].reshape(shape)
    loss = result.final["val_loss"].reshape(shape)
    diverged = result.records["diverged"][-1].reshape(shape)
    train_loss = result.records["train_loss_running"][-1].reshape(shape)
    chosen = select_setting(acc, loss, diverged)

    rows = [
        {
            "setting": i, **settings[i], "seed": seed,
            "val_accuracy": _f(acc[i, j]), "val_loss": _f(loss[i, j]),
            "train_loss": _f(train_loss[i, j]), "diverged": bool(diverged[i, j]),
            "chosen": i == chosen,
        }
        for i in range(len(settings))
        for j, seed in enumerate(seeds)
    ]
    best = {"optimizer": optimizer, "batch_size": batch_size, "all_diverged": chosen is None}
    if chosen is None:
        best.update(setting=None, learning_rate=None, momentum=None, alpha=None,
                    val_accuracy=None, val_loss=None)
    else:
        best.update(setting=chosen, **settings[chosen], val_accuracy=_f(acc[chosen].mean()),
                    val_loss=_f(loss[chosen].mean()))
    out_dir = Path(out_dir)
    write_csv(out_dir / "tuning.csv", TUNING_COLUMNS, rows)
    write_json(out_dir / "best.json", best)
    write_json(out_dir / "tuning_provenance.json", provenance(
        spec=spec.to_json(), seeds=list(seeds), argv=["tune", *argv],
        wall_time_s=time.perf_counter() - started, data=str(data_path),
        data_sha256=data_sha, compile_s=result.compile_s,
        train_s=result.train_s, resumed_from_epoch=result.resumed_from,
        selection="final-epoch validation accuracy (mean over tune seeds), ties: lower loss",
    ))
    ckpt.remove(ckpt_dir)
    return best


def _checked_hparams(optimizer: str, hp: Hparams, spec: TrainSpec) -> Hparams:
    """Fill what best.json may leave out and reject what does not fit the optimizer."""
    if hp.all_diverged:
        return hp
    momentum, alpha = hp.momentum, hp.alpha
    if has_momentum(optimizer):
        if momentum is None or not 0 <= momentum < 1:
            raise SngradError(f"{optimizer} needs a momentum in [0, 1) in best.json, got "
                              f"{momentum!r}")
    elif momentum is not None:
        raise SngradError(f"best.json gives momentum={momentum} but {optimizer} takes none")
    if needs_variance(optimizer):
        alpha = effective_alpha(optimizer, spec.alpha) if alpha is None else alpha
    elif alpha is not None:
        raise SngradError(f"best.json gives alpha={alpha} but {optimizer} takes none")
    return Hparams(hp.learning_rate, momentum, alpha, False)


def train(data_path, optimizer, batch_size, spec: TrainSpec, hparams_path, out_dir, argv=()):
    """Retrain the chosen setting on ``spec.seeds``; write metrics.csv, diagnostics.csv and
    provenance.json into ``out_dir``."""
    started = time.perf_counter()
    parse_optimizer(optimizer)
    hp = _checked_hparams(optimizer, load_hparams(hparams_path, optimizer, batch_size), spec)
    splits = _load(data_path, batch_size)
    data_sha = sha256_file(data_path)
    seeds = list(spec.seeds)
    epochs = np.arange(1, spec.epochs + 1)
    layers = len(spec.hidden) + 1
    ckpt_dir = ckpt.checkpoint_dir(out_dir, "train")
    result = None
    if hp.all_diverged:
        # Nothing to retrain: every tuned setting diverged. NaN rows keep the tables complete.
        k, e = len(seeds), spec.epochs
        nan = np.full((e, k), np.nan)
        rec = {f"{s}_{m}": nan for s in ("train", "val", "test") for m in ("loss", "accuracy")}
        rec.update(wall_time=np.zeros(e), diverged=np.ones((e, k), bool))
        rec.update({f"diag_{c}": np.full((e, k, layers), np.nan) for c in DIAG_COLUMNS})
    else:
        configs = [RunConfig(hp.learning_rate, hp.momentum, hp.alpha, s) for s in seeds]
        fp = _fingerprint("train", data_sha, optimizer, batch_size, spec, configs)
        result = run_sweep(splits, optimizer, batch_size, spec, configs, TRAIN_MODE,
                           checkpoint_dir=ckpt_dir, fingerprint=fp,
                           progress=f"train {optimizer} bs{batch_size}")
        rec = result.records

    common = {"dataset": splits.name, "optimizer": optimizer, "batch_size": batch_size}
    metrics, diagnostics = [], []
    for j, seed in enumerate(seeds):
        for i, epoch in enumerate(epochs):
            metrics.append({
                **common, "seed": seed, "epoch": int(epoch), "learning_rate": hp.learning_rate,
                "momentum": hp.momentum, "alpha": hp.alpha,
                **{f"{s}_{m}": _f(rec[f"{s}_{m}"][i, j]) for s in ("train", "val", "test")
                   for m in ("loss", "accuracy")},
                "wall_time": _f(rec["wall_time"][i]), "diverged": bool(rec["diverged"][i, j]),
            })
            for layer in range(layers):
                diagnostics.append({
                    **common, "seed": seed, "epoch": int(epoch), "layer": layer,
                    **{c: _f(rec[f"diag_{c}"][i, j, layer]) for c in DIAG_COLUMNS},
                })
    out_dir = Path(out_dir)
    write_csv(out_dir / "metrics.csv", METRICS_COLUMNS, metrics)
    write_csv(out_dir / "diagnostics.csv", DIAGNOSTICS_COLUMNS, diagnostics)
    write_json(out_dir / "provenance.json", provenance(
        spec=spec.to_json(), seeds=seeds, argv=["train", *argv],
        wall_time_s=time.perf_counter() - started, data=str(data_path),
        data_sha256=data_sha, hparams=hp.__dict__,
        compile_s=result.compile_s if result else 0.0,
        train_s=result.train_s if result else 0.0,
        resumed_from_epoch=result.resumed_from if result else 0,
        train_metrics="full training split after each epoch",
    ))
    ckpt.remove(ckpt_dir)


def parse_alphas(text: str) -> list[float]:
    alphas = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise SngradError(f"--alphas must be comma-separated numbers, got {part!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise SngradError(f"--alphas values must be finite and > 0, got {part!r}")
        alphas.append(value)
    if len(set(alphas)) != len(alphas):
        raise SngradError(f"--alphas must not repeat a value, got {text!r}")
    return alphas


def alpha_sweep(data_path, optimizer, batch_size, spec: TrainSpec, hparams_path, alphas,
                out_dir, argv=()):
    """Train the chosen setting at every alpha on ``spec.seeds``; write alpha_sweep.csv (and
    alpha_sweep_provenance.json) into ``out_dir``."""
    started = time.perf_counter()
    if not needs_variance(optimizer):
        raise SngradError(
            f"alpha-sweep needs a +sngrad optimizer (e.g. sgd+sngrad1), got {optimizer!r}"
        )
    hp = _checked_hparams(optimizer, load_hparams(hparams_path, optimizer, batch_size), spec)
    splits = _load(data_path, batch_size)
    data_sha = sha256_file(data_path)
    seeds = list(spec.seeds)
    grid = [(a, s) for a in alphas for s in seeds]
    ckpt_dir = ckpt.checkpoint_dir(out_dir, "alpha-sweep")
    result = None
    if hp.all_diverged:
        nan = np.full(len(grid), np.nan)
        final = {f"{s}_{m}": nan for s in ("val", "test") for m in ("loss", "accuracy")}
        diverged = np.ones(len(grid), bool)
    else:
        configs = [RunConfig(hp.learning_rate, hp.momentum, a, s) for a, s in grid]
        fp = _fingerprint("alpha-sweep", data_sha, optimizer, batch_size, spec, configs)
        result = run_sweep(splits, optimizer, batch_size, spec, configs, ALPHA_MODE,
                           checkpoint_dir=ckpt_dir, fingerprint=fp,
                           progress=f"alpha-sweep {optimizer} bs{batch_size}")
        final, diverged = result.final, result.records["diverged"][-1]
    rows = [
        {"alpha": a, "seed": s, **{k: _f(final[k][i]) for k in ALPHA_COLUMNS[2:6]},
         "diverged": bool(diverged[i])}
        for i, (a, s) in enumerate(grid)
    ]
    out_dir = Path(out_dir)
    write_csv(out_dir / "alpha_sweep.csv", ALPHA_COLUMNS, rows)
    write_json(out_dir / "alpha_sweep_provenance.json", provenance(
        spec=spec.to_json(), seeds=seeds, argv=["alpha-sweep", *argv],
        wall_time_s=time.perf_counter() - started, data=str(data_path),
        data_sha256=data_sha, hparams=hp.__dict__, alphas=list(alphas),
        compile_s=result.compile_s if result else 0.0,
        resumed_from_epoch=result.resumed_from if result else 0,
    ))
    ckpt.remove(ckpt_dir)


# ============================================================================ command line


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments as SngradError (one line, exit status 2)."""

    def error(self, message):
        raise SngradError(f"{self.prog}: {message}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _parser(command: str, *, hparams: bool = False, alphas: bool = False) -> _Parser:
    p = _Parser(prog=f"python -m sngrad {command}")
    p.add_argument("--data", required=True, help="splits file written by `sngrad data prepare`")
    p.add_argument("--optimizer", required=True, help="e.g. sgd, adam+sngrad2")
    p.add_argument("--batch-size", required=True, type=_positive_int)
    p.add_argument("--spec", required=True, help="training spec: JSON text or @file.json")
    if hparams:
        p.add_argument("--hparams", required=True, help="best.json written by `sngrad tune`")
    if alphas:
        p.add_argument("--alphas", required=True, help="comma-separated, e.g. 0.1,1,10")
    p.add_argument("--out-dir", required=True)
    return p


def cli_tune(argv: list[str]) -> int:
    args = _parser("tune").parse_args(argv)
    tune(args.data, args.optimizer, args.batch_size, parse_spec(args.spec), args.out_dir, argv)
    return 0


def cli_train(argv: list[str]) -> int:
    args = _parser("train", hparams=True).parse_args(argv)
    train(args.data, args.optimizer, args.batch_size, parse_spec(args.spec), args.hparams,
          args.out_dir, argv)
    return 0


def cli_alpha_sweep(argv: list[str]) -> int:
    args = _parser("alpha-sweep", hparams=True, alphas=True).parse_args(argv)
    alpha_sweep(args.data, args.optimizer, args.batch_size, parse_spec(args.spec), args.hparams,
                parse_alphas(args.alphas), args.out_dir, argv)
    return 0
