"""The commands that write result files: ``tune``, ``train``, ``reference``.

Every argument is checked (one-line :class:`SngradError`) before any training, and every file
is written atomically after training, so an interrupted job leaves no half-written result;
it leaves a checkpoint in ``<out-dir>/.checkpoint-<command>/`` that the same command resumes.

``tune`` (protocol: :mod:`sngrad.train.protocol`)
    tuning.csv (one row per setting and tuning seed; ``step`` is eta / alpha_scaled where that
    is the run's first axis, ``tied`` marks the settings within the tie margin of the best
    among those the final choice was made from, ``refine`` the refinement round), best.json
    (the pick in raw units; per tuned axis under ``axes``: the values tried, the pick, its
    status ``interior``/``bound`` and the final resolution), tuning_provenance.json.
``train``
    The chosen setting on every final seed: metrics.csv (per seed and epoch), diagnostics.csv
    (per seed, epoch and layer), budget.csv (per seed: loss and accuracy after the budget
    step k* of :func:`sngrad.costs.budget_step`, where the run's counted FLOPs reach its
    base's total; the equal-compute comparison reads it), provenance.json. If tuning found
    no valid setting, the rows are written with NaN metrics and ``diverged=True`` instead of
    training.
``reference``
    sgd at its tuned learning rate on the first final seed, for the noise study: the
    parameters at the checkpoints of :func:`reference_epochs` as ``<name>.npz`` (leaves
    ``w0, b0, w1, b1, ...``) and reference.json.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from sngrad import costs, ledger
from sngrad.errors import SngradError
from sngrad.io import atomic_write, write_csv, write_json, write_text
from sngrad.names import RunName, parse_run
from sngrad.provenance import provenance, sha256_file
from sngrad.spec import Hparams, TrainSpec, load_hparams
from sngrad.train import checkpoint as ckpt
from sngrad.train import protocol
from sngrad.train.diagnostics import STEP_COLUMNS
from sngrad.train.engine import (
    REFERENCE_MODE,
    TRAIN_MODE,
    TUNE_MODE,
    RunConfig,
    check_batch_size,
    model_architecture,
    run_sweep,
)
from sngrad.train.protocol import Trial

TUNING_COLUMNS = (
    "setting", "learning_rate", "momentum", "alpha", "seed",
    "val_accuracy", "val_loss", "train_loss", "diverged", "chosen", "alpha_scaled", "round",
    "step", "tied", "refine",
)
BEST_KEYS = (
    "optimizer", "run", "batch_size", "learning_rate", "momentum", "alpha", "alpha_scaled",
    "alpha_reference", "step", "val_accuracy", "val_loss", "all_diverged", "at_bound",
    "trials", "setting", "rounds", "tie_margin", "tied", "axes",
)
EDGE = "edge"  # an axis's pick at an end of what was tried with no bound there (never by tune)
METRICS_COLUMNS = (
    "dataset", "optimizer", "batch_size", "seed", "epoch", "learning_rate", "momentum", "alpha",
    "train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy", "wall_time",
    "diverged",
)
BUDGET_COLUMNS = (
    "dataset", "optimizer", "batch_size", "seed", "base", "budget_step", "steps",
    "budget_epochs", "budget_flops", "run_flops", "capped",
    "val_loss", "val_accuracy", "test_loss", "test_accuracy", "diverged",
)
DIAGNOSTICS_COLUMNS = (
    "dataset", "optimizer", "batch_size", "seed", "epoch", "layer", *STEP_COLUMNS,
)
REFERENCE_CHECKPOINTS = ("init", "epoch1", "p25", "p50", "p100")


# ============================================================================ shared checks


OUT_DIR_PROBE_BYTES = 4096  # a block: a full file system refuses it, an empty file it may not


def check_out_dir(out_dir) -> Path:
    """``out_dir`` as a Path, tried before any data is loaded or any program compiled: an
    existing non-directory is a one-line error, and so (an OSError naming the folder) is a
    read-only, full or failing file system. The try writes and removes a probe file in the
    folder, or in its nearest existing parent when it does not exist yet; nothing is left."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise SngradError(f"--out-dir {path} is an existing file; allowed: a directory "
                          "(created if missing)")
    existing = next((p for p in (path, *path.absolute().parents) if p.is_dir()), path)
    probe = existing / f".write-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"\0" * OUT_DIR_PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None
    finally:
        probe.unlink(missing_ok=True)
    return path


def own_schedule(spec: TrainSpec, run: RunName) -> TrainSpec:
    """The spec with the run's ``~schedule`` in place of the profile's (an arm of the study);
    the spec itself when the run has none."""
    return spec if run.schedule is None else replace(spec, schedule=run.schedule)


def _load(data_path, batch_size: int):
    from sngrad.data import load_splits

    splits = load_splits(data_path)
    check_batch_size(batch_size, splits)
    return splits


def _fingerprint(command, data_sha, run_name, batch_size, spec, configs, **extra) -> str:
    return ckpt.fingerprint({
        "command": command, "data_sha256": data_sha, "run": run_name, "batch_size": batch_size,
        "spec": spec.to_json(), "configs": [c.__dict__ for c in configs], **extra,
    })


def _f(x) -> float:
    return float(x)


# ============================================================================ tune


def _round_state_path(ckpt_dir: Path) -> Path:
    return ckpt_dir / "rounds.json"


def _load_rounds(ckpt_dir: Path, fp: str) -> list[dict]:
    """Finished rounds of an interrupted tune with the same fingerprint (else none)."""
    path = _round_state_path(ckpt_dir)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        print(f"sngrad: ignoring unreadable tuning rounds {path} ({err}); they are run again",
              file=sys.stderr)
        return []
    rounds = saved.get("rounds") if isinstance(saved, dict) else None
    if not isinstance(rounds, list) or not all(isinstance(r, dict) for r in rounds):
        print(f"sngrad: ignoring damaged tuning rounds {path}; they are run again",
              file=sys.stderr)
        return []
    return rounds if saved.get("fingerprint") == fp else []


def _save_rounds(ckpt_dir: Path, fp: str, rounds: list[dict]) -> None:
    # json.dumps keeps NaN (a diverged run's loss) as a token Python reads back exactly.
    write_text(_round_state_path(ckpt_dir), json.dumps({"fingerprint": fp, "rounds": rounds}))


def _train_round(splits, run: RunName, batch_size, spec, trials, seeds, ckpt_dir, data_sha):
    configs = [RunConfig(t.learning_rate, t.momentum, t.alpha, seed, spec.init_seed)
               for t in trials for seed in seeds]
    fp = _fingerprint("tune", data_sha, run.name, batch_size, spec, configs)
    result = run_sweep(splits, run, batch_size, spec, configs, TUNE_MODE,
                       checkpoint_dir=ckpt_dir / "sweep", fingerprint=fp,
                       progress=f"tune {run.name} bs{batch_size} round {trials[0].round}")
    shape = (len(trials), len(seeds))
    return {
        "trials": [t.to_json() for t in trials],
        "val_accuracy": result.final["val_accuracy"].reshape(shape).tolist(),
        "val_loss": result.final["val_loss"].reshape(shape).tolist(),
        "train_loss": result.records["train_loss"][-1].reshape(shape).tolist(),
        "diverged": result.records["diverged"][-1].reshape(shape).tolist(),
        "compile_s": result.compile_s, "train_s": result.train_s,
        "resumed_from_epoch": result.resumed_from,
    }


def tune(data_path, run: RunName, batch_size: int, spec: TrainSpec, out_dir, argv=()) -> dict:
    """Search the setting of one (dataset, run, batch size) by the protocol of
    :mod:`sngrad.train.protocol`; write tuning.csv, best.json and tuning_provenance.json into
    ``out_dir``; return best.json's content. ``run`` is parsed where it entered
    (:func:`sngrad.names.parse_run`, the command line)."""
    started = time.perf_counter()
    ledger.watch_compilation()
    spec = own_schedule(spec, run)
    out_dir = check_out_dir(out_dir)
    splits = _load(data_path, batch_size)
    data_sha = sha256_file(data_path)
    seeds = list(spec.tune.seeds)
    ckpt_dir = ckpt.checkpoint_dir(out_dir, "tune")
    fp = _fingerprint("tune-rounds", data_sha, run.name, batch_size, spec, [])

    rounds = _load_rounds(ckpt_dir, fp)
    resumed_rounds = len(rounds)
    trials = [Trial(**t) for r in rounds for t in r["trials"]]
    pending = protocol.initial_trials(run, spec.tune, batch_size)
    while True:
        if rounds:
            if any(t.refine for t in trials):
                break
            pick, _ = _select(_stacked(rounds, SCORES), trials, _grid(trials))
            pending, _ = protocol.extension(run, spec.tune, batch_size, trials, pick)
            if not pending and pick is not None:
                pending = protocol.refinement(run, spec.tune, batch_size, trials, pick)
            if not pending:
                break
        rounds.append(_train_round(splits, run, batch_size, spec, pending, seeds, ckpt_dir,
                                   data_sha))
        trials += pending
        _save_rounds(ckpt_dir, fp, rounds)
        ckpt.remove(ckpt_dir / "sweep")  # only after the round is saved: kill-safe

    best = _best(run, batch_size, spec, rounds, trials)
    chosen, tied = best["setting"], set(best.pop("tied_settings"))
    acc, loss, diverged, train_loss = _stacked(
        rounds, ("val_accuracy", "val_loss", "diverged", "train_loss"))
    rows = [
        {"setting": i, "learning_rate": t.learning_rate, "momentum": t.momentum,
         "alpha": t.alpha, "seed": seed, "val_accuracy": _f(acc[i, j]),
         "val_loss": _f(loss[i, j]), "train_loss": _f(train_loss[i, j]),
         "diverged": bool(diverged[i, j]), "chosen": i == chosen,
         "alpha_scaled": t.alpha_scaled, "round": t.round, "step": t.step, "tied": i in tied,
         "refine": t.refine}
        for i, t in enumerate(trials)
        for j, seed in enumerate(seeds)
    ]
    write_csv(out_dir / "tuning.csv", TUNING_COLUMNS, rows)
    write_json(out_dir / "best.json", {k: best[k] for k in BEST_KEYS})
    write_json(out_dir / "tuning_provenance.json", provenance(
        spec=spec.to_json(), seeds=seeds, argv=["tune", *argv],
        wall_time_s=time.perf_counter() - started, data=str(data_path), data_sha256=data_sha,
        compile_s=sum(r["compile_s"] for r in rounds),
        train_s=sum(r["train_s"] for r in rounds),
        resumed_rounds=resumed_rounds,
        resumed_from_epoch=max((r["resumed_from_epoch"] for r in rounds), default=0),
        selection=("final-epoch validation accuracy (mean over tune seeds); settings within one "
                   "standard error of the best are tied, the pick is the tied setting nearest "
                   "the tied set's mean grid position (sngrad.train.protocol)"),
    ))
    ckpt.remove(ckpt_dir)
    return {k: best[k] for k in BEST_KEYS}


SCORES = ("val_accuracy", "val_loss", "diverged")  # what the selection reads, per round


def _grid(trials: list[Trial]) -> list[int]:
    """The indices of the trials of the grid rounds (every round but the refinement)."""
    return [i for i, t in enumerate(trials) if not t.refine]


def _select(scores, trials: list[Trial], among: list[int]):
    """protocol.select over the trials ``among`` from the stacked ``scores``."""
    return protocol.select(*scores, [t.position for t in trials], among)


def _best(run: RunName, batch_size: int, spec: TrainSpec, rounds: list[dict],
          trials: list[Trial]) -> dict:
    """best.json's content (and ``tied_settings``): the grid pick, then the refinement's choice
    among it and its half-step neighbours; the status of every tuned axis."""
    tune = spec.tune
    scores = _stacked(rounds, SCORES)
    grid_pick, tied = _select(scores, trials, _grid(trials))
    pick = grid_pick
    refined = [i for i, t in enumerate(trials) if t.refine]
    if grid_pick is not None and refined:
        pick, tied = _select(scores, trials, [grid_pick, *refined])
    axes = protocol.tuned_axes(run, tune)
    grid = [t for t in trials if not t.refine]
    if grid_pick is None:
        status = {a: protocol.NO_PICK for a in axes}
        status[axes[0]] = protocol.BOUND
    else:
        status = {a: s if s in (protocol.INTERIOR, protocol.BOUND) else EDGE
                  for a, s in protocol.axis_status(run, tune, grid, trials[grid_pick]).items()}
    acc, loss, valid = protocol.valid_settings(*scores)
    margin = protocol.tie_margin(scores[0], valid)
    best = {"optimizer": run.optimizer, "run": run.name, "batch_size": batch_size,
            "alpha_reference": run.alpha_reference, "all_diverged": pick is None,
            "at_bound": protocol.BOUND in status.values(), "trials": len(trials),
            "rounds": len(rounds), "tie_margin": margin, "tied": len(tied),
            "tied_settings": tied, "setting": pick,
            "axes": {a: {"tried": sorted({_axis_value(t, a) for t in trials}),
                         "pick": None if pick is None else _axis_value(trials[pick], a),
                         "status": status[a],
                         "resolution": protocol.resolution(a, run, tune)}
                     for a in axes}}
    if pick is None:
        best.update(learning_rate=None, momentum=None, alpha=None, alpha_scaled=None,
                    step=None, val_accuracy=None, val_loss=None)
    else:
        t = trials[pick]
        best.update(learning_rate=t.learning_rate, momentum=t.momentum, alpha=t.alpha,
                    alpha_scaled=t.alpha_scaled, step=t.step,
                    val_accuracy=_f(acc[pick]), val_loss=_f(loss[pick]))
    return best


def _axis_value(trial: Trial, axis: str) -> float:
    """A trial's value on a tuned axis: eta, eta / alpha_scaled, alpha_scaled or 1 - m."""
    return {"learning_rate": trial.learning_rate, "step": trial.step,
            "alpha": trial.alpha_scaled,
            "momentum": None if trial.momentum is None else 1.0 - trial.momentum}[axis]


def _stacked(rounds: list[dict], names) -> list[np.ndarray]:
    """Per-round (trials, seeds) lists of each name, concatenated over rounds."""
    return [np.concatenate([np.asarray(r[n], float if n != "diverged" else bool)
                            for r in rounds]) for n in names]


# ============================================================================ train


def _checked_hparams(run: RunName, hp: Hparams) -> Hparams:
    """Reject a best.json whose setting does not fit the run."""
    if hp.all_diverged:
        return hp
    if run.has_momentum:
        if hp.momentum is None or not 0 <= hp.momentum < 1:
            raise SngradError(f"{run.name} needs a momentum in [0, 1) in best.json, got "
                              f"{hp.momentum!r}")
    elif hp.momentum is not None:
        raise SngradError(f"best.json gives momentum={hp.momentum} but {run.name} takes none")
    if run.variant is not None:
        if hp.alpha is None:
            raise SngradError(f"{run.name} needs an alpha in best.json, got none")
        if run.fixed_alpha is not None and not math.isclose(hp.alpha, run.fixed_alpha):
            raise SngradError(f"best.json gives alpha={hp.alpha} but {run.name} fixes "
                              f"{run.fixed_alpha}")
    elif hp.alpha is not None:
        raise SngradError(f"best.json gives alpha={hp.alpha} but {run.name} takes none")
    return hp


def _nan_records(epochs: int, k: int, layers: int) -> dict[str, np.ndarray]:
    nan = np.full((epochs, k), np.nan)
    rec = {f"{s}_{m}": nan for s in ("val", "test") for m in ("loss", "accuracy")}
    rec.update(train_loss=nan, wall_time=np.zeros(epochs), diverged=np.ones((epochs, k), bool))
    rec.update({c: np.full((epochs, k, layers), np.nan) for c in STEP_COLUMNS})
    return rec


def train(data_path, run: RunName, batch_size: int, spec: TrainSpec, hparams_path, out_dir,
          argv=()):
    """Retrain the chosen setting on ``spec.seeds``; write metrics.csv, diagnostics.csv and
    provenance.json into ``out_dir``. ``run`` is parsed where it entered
    (:func:`sngrad.names.parse_run`, the command line)."""
    started = time.perf_counter()
    ledger.watch_compilation()
    spec = own_schedule(spec, run)
    out_dir = check_out_dir(out_dir)
    hp = _checked_hparams(run, load_hparams(hparams_path, run.name, batch_size))
    splits = _load(data_path, batch_size)
    data_sha = sha256_file(data_path)
    seeds = list(spec.seeds)
    arch = model_architecture(spec, splits)
    layers = len(arch.parametrised)
    ckpt_dir = ckpt.checkpoint_dir(out_dir, "train")
    result = None
    budget = costs.budget_step(run, arch, len(splits.y_train), batch_size, spec.epochs,
                               spec.snapshot_every)
    if hp.all_diverged:
        rec = _nan_records(spec.epochs, len(seeds), layers)
        at_budget = {k: v[-1] for k, v in rec.items() if k.startswith(("val_", "test_"))}
    else:
        configs = [RunConfig(hp.learning_rate, hp.momentum, hp.alpha, s) for s in seeds]
        fp = _fingerprint("train", data_sha, run.name, batch_size, spec, configs)
        result = run_sweep(splits, run, batch_size, spec, configs, TRAIN_MODE,
                           checkpoint_dir=ckpt_dir, fingerprint=fp,
                           progress=f"train {run.name} bs{batch_size}",
                           budget_step=budget.step)
        rec, at_budget = result.records, result.budget

    common = {"dataset": splits.name, "optimizer": run.name, "batch_size": batch_size}
    metrics, diag = [], []
    for j, seed in enumerate(seeds):
        for i in range(spec.epochs):
            metrics.append({
                **common, "seed": seed, "epoch": i + 1, "learning_rate": hp.learning_rate,
                "momentum": hp.momentum, "alpha": hp.alpha,
                "train_loss": _f(rec["train_loss"][i, j]),
                **{f"{s}_{m}": _f(rec[f"{s}_{m}"][i, j]) for s in ("val", "test")
                   for m in ("loss", "accuracy")},
                "wall_time": _f(rec["wall_time"][i]), "diverged": bool(rec["diverged"][i, j]),
            })
            for layer in range(layers):
                diag.append({**common, "seed": seed, "epoch": i + 1, "layer": layer,
                             **{c: _f(rec[c][i, j, layer]) for c in STEP_COLUMNS}})
    write_csv(out_dir / "metrics.csv", METRICS_COLUMNS, metrics)
    write_csv(out_dir / "diagnostics.csv", DIAGNOSTICS_COLUMNS, diag)
    write_csv(out_dir / "budget.csv", BUDGET_COLUMNS,
              budget_rows(common, seeds, budget, at_budget, rec["diverged"]))
    write_json(out_dir / "provenance.json", provenance(
        spec=spec.to_json(), seeds=seeds, argv=["train", *argv],
        wall_time_s=time.perf_counter() - started, data=str(data_path), data_sha256=data_sha,
        hparams=hp.__dict__,
        compile_s=result.compile_s if result else 0.0,
        train_s=result.train_s if result else 0.0,
        resumed_from_epoch=result.resumed_from if result else 0,
        train_loss="mean of the epoch's batch losses",
        wall_time="training seconds of the K-seed program; compilation and evaluation excluded",
    ))
    ckpt.remove(ckpt_dir)


def budget_rows(common: dict, seeds, budget: costs.Budget, at_budget: dict,
                diverged: np.ndarray) -> list[dict]:
    """budget.csv's rows: per seed, the evaluation after k* steps; ``diverged`` is the
    run's flag at the end of the epoch that holds step k* (False at k* = 0)."""
    epoch = -(-budget.step // budget.steps_per_epoch)
    rows = []
    for j, seed in enumerate(seeds):
        rows.append({
            **common, "seed": seed, "base": budget.base, "budget_step": budget.step,
            "steps": budget.steps_total, "budget_epochs": budget.epochs,
            "budget_flops": budget.budget_flops, "run_flops": budget.run_flops,
            "capped": budget.capped,
            **{f"{s}_{m}": _f(at_budget[f"{s}_{m}"][j]) for s in ("val", "test")
               for m in ("loss", "accuracy")},
            "diverged": bool(diverged[epoch - 1, j]) if epoch else False,
        })
    return rows


# ============================================================================ reference


def reference_epochs(epochs: int) -> dict[str, int]:
    """Checkpoint name -> finished epochs: init 0, epoch1 1, pX ceil(X/100 * epochs)."""
    return {"init": 0, "epoch1": 1, "p25": math.ceil(epochs / 4), "p50": math.ceil(epochs / 2),
            "p100": epochs}


def params_arrays(params) -> dict[str, np.ndarray]:
    """``[(W, b), ...]`` as ``{"w0": W, "b0": b, ...}``."""
    out = {}
    for i, (w, b) in enumerate(params):
        out[f"w{i}"], out[f"b{i}"] = np.asarray(w), np.asarray(b)
    return out


def reference(data_path, spec: TrainSpec, hparams_path, batch_size: int, out_dir, argv=()):
    """Train sgd at its tuned learning rate on the first final seed and save its parameters
    at the checkpoints of :func:`reference_epochs` into ``out_dir``.

    If sgd's tuning found no valid setting the run uses ``tune.lr_min`` and reference.json
    says so (``learning_rate_source``), so that the noise study still has its parameters.
    """
    if spec.model is not None:
        raise SngradError(f"the reference run feeds the noise study, which measures MLPs only; "
                          f"this spec trains a {spec.model['kind']} model; allowed: a spec "
                          "with hidden widths")
    started = time.perf_counter()
    ledger.watch_compilation()
    out_dir = check_out_dir(out_dir)
    sgd = parse_run("sgd")  # the reference run, named here
    hp = _checked_hparams(sgd, load_hparams(hparams_path, sgd.name, batch_size))
    splits = _load(data_path, batch_size)
    lr, source = hp.learning_rate, "best.json"
    if hp.all_diverged:
        lr, source = spec.tune.lr_min, "tune.lr_min (every tuned setting diverged)"
    seed = spec.seeds[0]
    wanted = reference_epochs(spec.epochs)
    pending: dict[str, dict[str, np.ndarray]] = {}

    def keep(done: int, state) -> None:
        import jax

        for name, epoch in wanted.items():
            if epoch == done:
                first_run = jax.tree.map(lambda a: a[0], state["params"])
                pending[name] = params_arrays(jax.device_get(first_run))

    result = run_sweep(splits, sgd, batch_size, spec, [RunConfig(lr, None, None, seed)],
                       REFERENCE_MODE, on_epoch=keep, progress=f"reference bs{batch_size}")
    for name in REFERENCE_CHECKPOINTS:
        arrays = pending[name]
        atomic_write(out_dir / f"{name}.npz", lambda h, a=arrays: np.savez(h, **a), binary=True)
    write_json(out_dir / "reference.json", {
        "checkpoints": wanted, "seed": seed, "learning_rate": lr, "batch_size": batch_size,
        "learning_rate_source": source,
        "diverged": bool(result.records["diverged"][-1, 0]),
        "provenance": provenance(spec=spec.to_json(), seeds=[seed], argv=["reference", *argv],
                                 wall_time_s=time.perf_counter() - started,
                                 data=str(data_path), data_sha256=sha256_file(data_path)),
    })
