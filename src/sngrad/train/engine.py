"""The training engine: K runs of one (dataset, optimizer, batch size) in one compiled program.

One epoch of one run
    The training split lives on the device. At epoch e a run permutes it with the key
    ``fold_in(shuffle_key, e)`` and takes ``S = N // B`` batches of B examples; the last
    ``N mod B`` examples of the permutation are dropped, so every step has the same shape and
    each epoch leaves out a different random remainder. The S steps of
    :func:`sngrad.train.step.make_step` are one ``lax.scan``.

K runs side by side
    The per-run inputs (initial parameters, shuffle key, learning rate, momentum, alpha) are
    arrays with a leading axis K and every program is ``jit(vmap(...))``: a grid of settings
    times the tuning seeds, or the final seeds, train as one program that is compiled once.
    How alpha is read (``alpha_reference``, absolute or relative to each step's RMS sigma) is
    the same for the K runs and part of the compiled program.

Seeds
    Final seed s gives ``init_key, shuffle_key = split(PRNGKey(s))`` for every optimizer, so
    per seed every optimizer starts from the same weights and sees the same batches. In tuning
    every setting starts from the network's initial parameters of ``PRNGKey(init_seed)``
    (:func:`sngrad.train.network.init`) and tuning seed s only sets the
    shuffle key (``split(PRNGKey(s))[1]``).

Per-epoch record
    ``train_loss``: the mean of the epoch's batch losses (no pass over the training split);
    the per-layer diagnostics of :mod:`sngrad.train.diagnostics` averaged over the epoch's
    steps 0, k, 2k, ... (k = ``Mode.diagnostics_every``: :data:`DIAGNOSTICS_EVERY` in
    training, :data:`SVRG_DIAGNOSTICS_EVERY` for ``sgd+svrg``; the other steps skip them) and
    ``lambda_median`` at its last step (the median taken on the host); with ``Mode.evaluate``,
    loss and accuracy on those splits with the parameters after the epoch (a separate
    program, not timed); ``wall_time``:
    seconds of training of the K-run program up to the end of the epoch (snapshots included;
    compilation and evaluation excluded; a resumed job continues the interrupted one's clock).

Control variates (``+cv``, ``+svrg``)
    Before epochs 0, m, 2m, ... (m = ``snapshot_every``) the snapshot becomes the current
    parameters and the anchor their mean gradient over the whole training split (chunks of
    :data:`EVAL_CHUNK`). Both are part of the checkpointed state.

Budget step
    With ``budget_step = k*`` (:func:`sngrad.costs.budget_step`, the step at which the run's
    counted FLOPs reach its base's total) the scan keeps a copy of the parameters after
    exactly k* steps (a ``lax.cond`` on the unbatched step count, so only that step copies),
    and the sweep evaluates them after training (``SweepResult.budget``).

Divergence
    A run is diverged from the first epoch in which a batch loss is NaN or Inf, or the epoch's
    training loss is not finite or exceeds ``diverge_loss``. The flag is sticky; the run keeps
    going (under vmap it cannot stop) and its later numbers are whatever they are.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sngrad import interrupt, ledger
from sngrad.architecture import Architecture, as_architecture
from sngrad.errors import SngradError
from sngrad.models import cross_entropy
from sngrad.names import RunName
from sngrad.spec import TrainSpec
from sngrad.train import checkpoint as ckpt
from sngrad.train import diagnostics, network
from sngrad.train.progress import EpochProgress
from sngrad.train.step import make_step

EVAL_CHUNK = 1024  # examples per evaluation step: bounds activation memory at K x 1024 x width


@dataclass(frozen=True)
class RunConfig:
    """One of the K runs. ``init_seed=None``: initial weights from ``seed``."""

    learning_rate: float
    momentum: float | None
    alpha: float | None
    seed: int
    init_seed: int | None = None


# Diagnostics are recorded on steps 0, k, 2k, ... of each epoch (k = DIAGNOSTICS_EVERY), to
# keep them under 5 % of a step (benchmarks/step_time.py measures it); 1 records every step.
DIAGNOSTICS_EVERY = 4
# sgd+svrg's diagnostics need the moments its lean step skips (about 1.75 SGD steps of
# products): recorded every 32nd step they add about 3 % to its step (at most this often)
SVRG_DIAGNOSTICS_EVERY = 32


@dataclass(frozen=True)
class Mode:
    """What a sweep measures: splits evaluated per epoch / after training, diagnostics (on
    every ``diagnostics_every``-th step of an epoch)."""

    evaluate: tuple[str, ...] = ()
    final: tuple[str, ...] = ()
    diagnostics: bool = False
    diagnostics_every: int = DIAGNOSTICS_EVERY


TRAIN_MODE = Mode(evaluate=("val", "test"), diagnostics=True)
TUNE_MODE = Mode(final=("val",))
REFERENCE_MODE = Mode()


@dataclass
class SweepResult:
    records: dict[str, np.ndarray]  # name -> (epochs, K, ...)
    final: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (K,)
    compile_s: float = 0.0
    train_s: float = 0.0
    resumed_from: int = 0
    budget: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (K,), at step k*


def run_keys(config: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """(init key, shuffle key) of a run, see "Seeds" in the module docstring."""
    init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(config.seed))
    if config.init_seed is not None:
        init_key = jax.random.PRNGKey(config.init_seed)
    return np.asarray(init_key), np.asarray(shuffle_key)


def hparam_arrays(run: RunName, configs: Sequence[RunConfig]) -> dict[str, jax.Array]:
    """The traced hyper-parameters, (K,) float32 each; only those the run's optimizer takes."""
    hp = {"learning_rate": [c.learning_rate for c in configs]}
    if run.has_momentum:
        hp["momentum"] = [c.momentum for c in configs]
    if run.variant is not None:
        hp["alpha"] = [c.alpha for c in configs]
    for name, values in hp.items():
        if any(v is None for v in values):
            raise SngradError(f"{run.optimizer} needs a {name} for every run; got {values}")
    return {k: jnp.asarray(v, jnp.float32) for k, v in hp.items()}


def check_batch_size(batch_size: Any, splits) -> int:
    n = len(splits.y_train)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise SngradError(f"batch size must be an integer, got {batch_size!r}")
    if not 1 <= batch_size <= n:
        raise SngradError(
            f"batch size {batch_size} is not allowed; it must be in [1, {n}] (training split)"
        )
    return int(batch_size)


# ============================================================================ device programs


def _chunk_index(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices 0..n-1 in chunks of EVAL_CHUNK (last one padded with 0) and the valid mask."""
    chunk = min(EVAL_CHUNK, n)
    count = -(-n // chunk)
    flat = np.zeros(count * chunk, np.int32)
    flat[:n] = np.arange(n)
    mask = np.arange(count * chunk) < n
    return flat.reshape(count, chunk), mask.reshape(count, chunk)


def _evaluate(arch, params, x, y, idx, mask):
    """Mean cross-entropy and accuracy over the rows ``idx[mask]`` of (x, y)."""

    def body(acc, chunk):
        rows, valid = chunk
        logits = network.apply(arch, params, x[rows])
        labels = y[rows]
        loss = jnp.sum(jnp.where(valid, cross_entropy(logits, labels), 0.0))
        hits = jnp.sum(valid & (jnp.argmax(logits, axis=-1) == labels))
        return (acc[0] + loss, acc[1] + hits), None

    (loss_sum, hits), _ = lax.scan(body, (jnp.float32(0.0), jnp.int32(0)), (idx, mask))
    n = jnp.sum(mask)
    return loss_sum / n, hits / n


def _full_gradient(arch, params, x, y, idx, mask):
    """Mean gradient of the cross-entropy over the rows ``idx[mask]`` (the SVRG anchor)."""

    def chunk_sum(p, rows, valid):
        losses = cross_entropy(network.apply(arch, p, x[rows]), y[rows])
        return jnp.sum(jnp.where(valid, losses, 0.0))

    def body(acc, chunk):
        g = jax.grad(chunk_sum)(params, *chunk)
        return jax.tree.map(jnp.add, acc, g), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    total, _ = lax.scan(body, zeros, (idx, mask))
    n = jnp.sum(mask).astype(jnp.float32)
    return jax.tree.map(lambda g: g / n, total)


def device_data(splits, mode: Mode, diverge_loss: float) -> dict[str, jax.Array]:
    """The arrays the programs read: the splits and their chunk indices."""
    data = {"x_train": splits.x_train, "y_train": splits.y_train,
            "diverge_loss": np.float32(diverge_loss)}
    data["idx_train"], data["mask_train"] = _chunk_index(len(splits.y_train))
    for name in {*mode.evaluate, *mode.final}:
        x, y = getattr(splits, f"x_{name}"), getattr(splits, f"y_{name}")
        if len(y) == 0:
            raise SngradError(f"the {name} split is empty; allowed: at least 1 example")
        data[f"x_{name}"], data[f"y_{name}"] = x, y
        data[f"idx_{name}"], data[f"mask_{name}"] = _chunk_index(len(y))
    return {k: jnp.asarray(v) for k, v in data.items()}


class Programs:
    """The jitted init / snapshot / epoch / evaluation functions of one sweep shape.

    Build them with :func:`programs` so that sweeps of the same shape in one process reuse
    the compiled code.
    """

    def __init__(self, run: RunName, backend, batch_size, n_train, arch, schedule, epochs,
                 diagnostics_on, diagnostics_every=1, budget=False):
        self.run, self.arch = run, as_architecture(arch)
        self.batch_size, self.n_train = batch_size, n_train
        self.steps = n_train // batch_size
        self.snapshots = run.needs_snapshot
        self.layers = len(self.arch.parametrised)
        self.diagnostics_on = diagnostics_on
        self.diagnostics_every = int(diagnostics_every)
        if self.diagnostics_every < 1:
            raise SngradError(f"diagnostics_every must be >= 1; got {diagnostics_every!r}")
        self.budget = budget
        self.step = make_step(run, backend=backend, batch_size=batch_size,
                              schedule=schedule, total_steps=self.steps * epochs,
                              diagnostics_on=diagnostics_on, arch=self.arch)
        if self.step.kind == "svrg" and self.diagnostics_every > 1:
            self.diagnostics_every = max(self.diagnostics_every, SVRG_DIAGNOSTICS_EVERY)
        self.init = jax.jit(jax.vmap(self._init_one))  # from K stacked initial parameters
        self.snapshot = jax.jit(jax.vmap(self._snapshot_one, in_axes=(0, None)))
        self.epoch = jax.jit(jax.vmap(self._epoch_one, in_axes=(0, 0, None, None, None)))
        self.evaluate = jax.jit(jax.vmap(self._evaluate_one, in_axes=(0, None, None)),
                                static_argnums=2)

    def _init_one(self, params, shuffle_key, hp):
        state = {"params": params, "opt": self.step.init(params, hp), "key": shuffle_key,
                 "diverged": jnp.zeros((), bool)}
        if self.snapshots:
            state["snap"] = params
            state["anchor"] = jax.tree.map(jnp.zeros_like, params)
        if self.budget:
            state["budget_params"] = params  # the parameters after k* steps, once reached
        return state

    def _snapshot_one(self, state, data):
        params = state["params"]
        anchor = _full_gradient(self.arch, params, data["x_train"], data["y_train"],
                                data["idx_train"], data["mask_train"])
        return {**state, "snap": params, "anchor": anchor}

    def _epoch_one(self, state, hp, epoch, data, budget_step):
        """One epoch; ``budget_step`` (unbatched): keep the parameters after that many steps
        of the run (counted from its start) in ``state["budget_params"]``."""
        order = jax.random.permutation(jax.random.fold_in(state["key"], epoch), self.n_train)
        order = order[: self.steps * self.batch_size].reshape(self.steps, self.batch_size)
        snapshot = (state["snap"], state["anchor"]) if self.snapshots else None
        every = self.diagnostics_every
        sparse = self.diagnostics_on and every > 1

        def body(carry, xs):
            params, opt_state, kept = carry
            rows, index = xs
            batch = (data["x_train"][rows], data["y_train"][rows])
            # the index is not batched, so under vmap the diagnostics' cond stays a branch
            diagnose = index % every == 0 if sparse else None
            params, opt_state, record = self.step(params, opt_state, batch, hp, snapshot,
                                                  diagnose)
            if self.budget:
                reached = epoch * self.steps + index + 1 == budget_step
                kept = lax.cond(reached, lambda: params, lambda: kept)
            return (params, opt_state, kept), record

        kept = state.get("budget_params", ())
        (params, opt_state, kept), records = lax.scan(
            body, (state["params"], state["opt"], kept),
            (order, jnp.arange(self.steps, dtype=jnp.int32)))
        losses = records.pop("loss")
        out = {"train_loss": jnp.mean(losses)}
        if self.diagnostics_on:
            if sparse:
                # averages over the recorded steps (0, k, 2k, ...) only
                recorded = np.arange(self.steps) % every == 0
                out.update({k: jnp.mean(v[recorded], axis=0) for k, v in records.items()})
            else:
                out.update({k: jnp.mean(v, axis=0) for k, v in records.items()})
            if self.snapshots:
                # the weights' lambdas go to the host, whose selection-based median is some
                # 20 times faster than the sort XLA's CPU backend runs for jnp.median
                out["lambda_weights"] = [w for w, _ in diagnostics.cv_lambda(opt_state)]
            else:
                out["lambda_median"] = jnp.full((self.layers,), jnp.nan, jnp.float32)
        diverged = (
            state["diverged"]
            | ~jnp.all(jnp.isfinite(losses))
            | ~jnp.isfinite(out["train_loss"])
            | (out["train_loss"] > data["diverge_loss"])
        )
        out["diverged"] = diverged
        new = {**state, "params": params, "opt": opt_state, "diverged": diverged}
        if self.budget:
            new["budget_params"] = kept
        return new, out

    def _evaluate_one(self, state, data, splits: tuple[str, ...]):
        out = {}
        for name in splits:
            out[f"{name}_loss"], out[f"{name}_accuracy"] = _evaluate(
                self.arch, state["params"], data[f"x_{name}"], data[f"y_{name}"],
                data[f"idx_{name}"], data[f"mask_{name}"],
            )
        return out


@functools.lru_cache(maxsize=16)
def programs(run: RunName, backend, batch_size, n_train, arch: Architecture | tuple, schedule,
             epochs, diagnostics_on, diagnostics_every=1, budget=False) -> Programs:
    # every argument is part of the cache key, the parsed run whole: its optimizer and its
    # alpha reference ("rms" and "absolute" compile different steps); ``arch`` an
    # Architecture or an MLP's widths tuple
    return Programs(run, backend, batch_size, n_train, arch, schedule, epochs,
                    diagnostics_on, diagnostics_every, budget)


# ============================================================================ the sweep loop


def _host_median(weights: list[np.ndarray]) -> np.ndarray:
    """(K, L) medians over each run's and layer's weights, as ``jnp.median`` gives them."""
    return np.stack([np.median(w.reshape(len(w), -1), axis=1) for w in weights], axis=1)


def _stack(records: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not records:
        return {}
    return {k: np.stack([r[k] for r in records]) for k in records[0]}


def _unstack(stacked: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    count = len(next(iter(stacked.values()))) if stacked else 0
    return [{k: v[i] for k, v in stacked.items()} for i in range(count)]


def initial_parameters(init_keys: Sequence[np.ndarray], arch: Architecture | Sequence[int]):
    """The K runs' initial parameters, those of each key (:func:`sngrad.train.network.init`)
    stacked on a leading axis; ``arch`` an Architecture or an MLP's widths.

    One unbatched program per architecture, shared by every optimizer and every K (a vmapped
    initialisation is compiled anew for each), bit for bit the same parameters."""
    arch = as_architecture(arch)
    each = [network.init(arch, jnp.asarray(key)) for key in init_keys]
    return jax.tree.map(lambda *leaves: jnp.asarray(np.stack(leaves)), *each)


def model_architecture(spec: TrainSpec, splits) -> Architecture:
    """The network ``spec`` trains on the dataset of ``splits``."""
    from sngrad.profile import data_architecture

    return data_architecture(spec.model_section(), splits.name, splits.x_train.shape[1],
                             splits.num_classes)


def run_sweep(
    splits,
    run: RunName,
    batch_size: int,
    spec: TrainSpec,
    configs: Sequence[RunConfig],
    mode: Mode,
    *,
    checkpoint_dir: str | Path | None = None,
    fingerprint: str = "",
    progress: str = "",
    on_epoch: Callable[[int, dict], None] | None = None,
    budget_step: int | None = None,
) -> SweepResult:
    """Train the K ``configs`` of the parsed ``run`` side by side for ``spec.epochs`` epochs.

    The run says how a +sngrad optimizer reads the configs' alpha
    (:attr:`sngrad.names.RunName.alpha_reference`): ``"absolute"`` (raw units: ``@alpha``
    runs, II) or ``"rms"`` (tuned I and III, relative to each step's RMS sigma); the
    diagnostics follow it. The engine trains ``spec.schedule`` (the caller puts a run's
    ``~schedule`` there, :func:`sngrad.train.commands.own_schedule`).

    With ``checkpoint_dir`` and ``spec.checkpoint_every > 0``, the state is saved every
    ``checkpoint_every`` epochs (not after the last, when the caller writes results instead)
    and a checkpoint there with the same ``fingerprint`` is resumed. Resuming is exact: the
    per-epoch shuffle is a function of (key, epoch) and the saved arrays are the device
    arrays, bit for bit. ``on_epoch(done, state)`` is called with the number of finished
    epochs (0 before the first) and the state (K-stacked pytree) after it.

    ``budget_step`` (k*, see :func:`sngrad.costs.budget_step`): also evaluate the splits of
    ``mode.evaluate`` with the parameters after exactly k* steps (0: the initial ones; at
    most ``spec.epochs`` epochs of steps), in ``SweepResult.budget``.
    """
    if not configs:
        raise SngradError("a sweep needs at least one run")
    check_batch_size(batch_size, splits)
    # the epoch count shapes only the cosine schedule: constant-rate sweeps of any length
    # share one compiled program
    epochs = spec.epochs if spec.schedule != "constant" else 0
    budget = budget_step is not None
    total_steps = spec.epochs * (len(splits.y_train) // batch_size)
    if budget and not 0 <= budget_step <= total_steps:
        raise SngradError(f"budget step {budget_step} is not allowed; it must be in "
                          f"[0, {total_steps}] (the run's steps)")
    progs = programs(run, spec.backend, batch_size, len(splits.y_train),
                     model_architecture(spec, splits), spec.schedule, epochs, mode.diagnostics,
                     mode.diagnostics_every if mode.diagnostics else 1, budget)
    k_star = jnp.int32(budget_step if budget else -1)
    data = device_data(splits, mode, spec.diverge_loss)
    hp = hparam_arrays(run, configs)
    keys = [run_keys(c) for c in configs]
    state = progs.init(initial_parameters([k[0] for k in keys], progs.arch),
                       jnp.asarray(np.stack([k[1] for k in keys])), hp)

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
    if on_epoch is not None and start == 0:
        on_epoch(0, state)

    t0 = time.perf_counter()
    epoch_fn = progs.epoch.lower(state, hp, jnp.int32(start), data, k_star).compile()
    snapshot_fn = progs.snapshot.lower(state, data).compile() if progs.snapshots else None
    compile_s = time.perf_counter() - t0

    train_s = elapsed
    bar = EpochProgress(progress, spec.epochs, start)  # a bar, or lines in a log
    try:
        for epoch in range(start, spec.epochs):
            interrupt.check()  # a Ctrl-C that a garbage-collection callback swallowed
            tick, tick_cpu = time.perf_counter(), time.process_time()
            if progs.snapshots and epoch % spec.snapshot_every == 0:
                state = snapshot_fn(state, data)
            state, out = epoch_fn(state, hp, jnp.int32(epoch), data, k_star)
            out = jax.device_get(out)  # waits for the epoch
            if "lambda_weights" in out:
                out["lambda_median"] = _host_median(out.pop("lambda_weights"))
            scan_s = time.perf_counter() - tick  # the clock stops here
            train_s += scan_s
            ledger.add_scan(scan_s, time.process_time() - tick_cpu)
            out["wall_time"] = np.float64(train_s)
            if mode.evaluate:
                out.update(jax.device_get(progs.evaluate(state, data, mode.evaluate)))
            records.append(out)
            bar.update(epoch + 1, out["train_loss"])
            done = epoch + 1
            if on_epoch is not None:
                on_epoch(done, state)
            every = spec.checkpoint_every
            if checkpoint_dir is not None and every and done % every == 0 and done < spec.epochs:
                leaves = jax.device_get(jax.tree.leaves(state))
                saved = ckpt.Checkpoint(done, train_s, leaves, _stack(records))
                ckpt.save(checkpoint_dir, fingerprint, saved)
    finally:
        bar.close()
    final = jax.device_get(progs.evaluate(state, data, mode.final)) if mode.final else {}
    at_budget = {}
    if budget and mode.evaluate:
        kept = {**state, "params": state["budget_params"]}
        at_budget = jax.device_get(progs.evaluate(kept, data, mode.evaluate))
    return SweepResult(_stack(records), final, compile_s, train_s, start, at_budget)
