"""Training engine and commands: seeds, the step record, divergence, the contract files."""

import csv
import json
import math

import jax
import numpy as np
import pytest
from conftest import spec_dict, toy_splits

from sngrad import cli
from sngrad.data import save_splits
from sngrad.errors import SngradError
from sngrad.names import parse_run
from sngrad.spec import parse_spec
from sngrad.train import (
    DIAGNOSTICS_COLUMNS,
    METRICS_COLUMNS,
    TRAIN_MODE,
    TUNE_MODE,
    TUNING_COLUMNS,
    RunConfig,
    engine,
    programs,
    reference,
    run_sweep,
    train,
    tune,
)
from sngrad.train.commands import BEST_KEYS, reference_epochs

SPEC = spec_dict()
B = 16


def _spec(**over):
    return parse_spec({**SPEC, **over})


@pytest.fixture(scope="module")
def splits():
    return toy_splits(n_train=192, dim=6, n_eval=48)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, splits):
    path = tmp_path_factory.mktemp("data") / "toy.npz"
    save_splits(splits, path)
    return path


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- seeds


def test_per_seed_every_optimizer_starts_from_the_same_weights_and_batches():
    keys = [engine.run_keys(RunConfig(0.1, None, None, s)) for s in (1, 2)]
    states = []
    for name, extra in (("sgd", {}), ("adam+sngrad2", {"alpha": [0.01, 0.02]})):
        progs = programs(parse_run(name), "dense", B, 192, (6, 8, 3), "constant", 1, True)
        hp = {"learning_rate": np.array([0.1, 0.1], np.float32),
              **{k: np.asarray(v, np.float32) for k, v in extra.items()}}
        params = engine.initial_parameters([k[0] for k in keys], progs.arch)
        states.append(progs.init(params, np.stack([k[1] for k in keys]), hp))
    for a, b in zip(jax.tree.leaves(states[0]["params"]), jax.tree.leaves(states[1]["params"]),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(states[0]["key"], states[1]["key"])
    assert not np.array_equal(states[0]["params"][0][0][0], states[0]["params"][0][0][1])
    # tuning runs share init_seed's weights whatever their shuffle seed
    t1, t2 = (engine.run_keys(RunConfig(0.1, None, None, s, init_seed=0)) for s in (1, 2))
    np.testing.assert_array_equal(t1[0], t2[0])
    assert not np.array_equal(t1[1], t2[1])
    sgd = parse_run("sgd")
    assert programs(sgd, "dense", 32, 200, (6, 8, 3), "constant", 1, False).steps == 6


# ----------------------------------------------------------------------------- the engine


def test_sweeps_are_reproducible_and_runs_do_not_interact(splits):
    spec = _spec(epochs=2)
    configs = [RunConfig(0.05, None, 0.01, 1), RunConfig(0.2, None, 0.05, 2)]
    first = run_sweep(splits, parse_run("sgd+sngrad2"), B, spec, configs, TRAIN_MODE)
    again = run_sweep(splits, parse_run("sgd+sngrad2"), B, spec, configs, TRAIN_MODE)
    for name, values in first.records.items():
        if name != "wall_time":
            np.testing.assert_array_equal(values, again.records[name], err_msg=name)
    swapped = run_sweep(splits, parse_run("sgd+sngrad2"), B, spec, configs[::-1], TRAIN_MODE)
    np.testing.assert_allclose(swapped.records["val_loss"][:, ::-1], first.records["val_loss"],
                               rtol=1e-6)
    rec = first.records
    assert rec["factor_mean"].shape == rec["shrink_share"].shape == (2, 2, 2)  # epoch, run, layer
    assert np.all((rec["factor_mean"] > 0) & (rec["factor_mean"] <= 1))
    assert np.all((rec["shrink_share"] >= 0) & (rec["shrink_share"] <= 1))
    assert np.isnan(rec["lambda_median"]).all() and np.isnan(rec["variance_ratio"]).all()
    assert set(rec) >= {"train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy"}
    assert "train_accuracy" not in rec  # no pass over the training split per epoch


def test_sngrad_differs_from_its_base_and_alpha_changes_the_run(splits):
    spec = _spec(epochs=2)
    base = run_sweep(splits, parse_run("sgd"), B, spec, [RunConfig(0.1, None, None, 1)], TRAIN_MODE)
    runs = run_sweep(splits, parse_run("sgd+sngrad1"), B, spec,
                     [RunConfig(0.1, None, a, 1) for a in (1e-6, 2.0, 20.0)], TRAIN_MODE)
    loss = runs.records["train_loss"]
    # a tiny alpha shrinks nothing: the same as sgd up to rounding
    np.testing.assert_allclose(loss[:, 0], base.records["train_loss"][:, 0], rtol=1e-5)
    assert runs.records["shrink_share"][:, 0].max() == 0
    assert not np.allclose(loss[:, 1], loss[:, 0]) and not np.allclose(loss[:, 2], loss[:, 1])
    share = runs.records["shrink_share"].mean(axis=(0, 2))
    assert share[0] < share[1] < share[2]
    assert np.isnan(base.records["factor_mean"]).all()


def test_plain_optimizers_never_compute_gradient_statistics(splits, monkeypatch):
    from sngrad import stats

    def forbidden(*args, **kwargs):
        raise AssertionError("per-example statistics computed for a plain optimizer")

    # batch size 24 is used by no other test, so these programs are traced here, with the stub
    monkeypatch.setattr(stats, "dense_stats", forbidden)
    spec = _spec(epochs=1)
    run_sweep(splits, parse_run("sgd"), 24, spec, [RunConfig(0.1, None, None, 1)], TUNE_MODE)
    with pytest.raises(AssertionError, match="per-example"):
        run_sweep(splits, parse_run("sgd+sngrad1"), 24, spec, [RunConfig(0.1, None, 1.0, 1)],
                  TUNE_MODE)


def test_divergence_is_sticky_and_set_by_a_finite_loss_above_the_bound(splits):
    # diverge_loss below the initial loss (~log 3): finite losses above it flag the run
    low = run_sweep(splits, parse_run("sgd"), B, _spec(epochs=3, diverge_loss=0.5),
                    [RunConfig(1e-4, None, None, 1)], TRAIN_MODE).records
    assert np.isfinite(low["train_loss"]).all() and low["diverged"][:, 0].all()
    spec = _spec(epochs=4, diverge_loss=50.0)
    from time import perf_counter

    started = perf_counter()
    result = run_sweep(splits, parse_run("sgd"), B, spec,
                       [RunConfig(0.3, None, None, 3), RunConfig(1e5, None, None, 3)], TRAIN_MODE)
    outside = perf_counter() - started
    rec = result.records
    assert rec["diverged"][:, 1].all() and not rec["diverged"][:, 0].any()
    assert rec["val_accuracy"][-1, 0] > 0.7 and rec["train_loss"][-1, 0] < rec["train_loss"][0, 0]
    # wall_time: the running total of training seconds (compilation and evaluation left out),
    # so it rises, ends at the sweep's train_s and fits in the call's time less compilation
    wall = rec["wall_time"]
    assert np.all(np.diff(wall) > 0) and wall[-1] == pytest.approx(result.train_s)
    assert wall[-1] <= outside - result.compile_s
    # sticky: with a bound between epoch 1's loss and epoch 2's lower one, the run is flagged
    # in epoch 1 and stays flagged although epoch 2 is below the bound
    loss = rec["train_loss"][:2, 0]
    assert loss[0] > loss[1]
    bound = float(loss.mean())
    again = run_sweep(splits, parse_run("sgd"), B, _spec(epochs=4, diverge_loss=bound),
                      [RunConfig(0.3, None, None, 3), RunConfig(1e5, None, None, 3)], TRAIN_MODE)
    np.testing.assert_array_equal(again.records["train_loss"][:, 0], rec["train_loss"][:, 0])
    assert again.records["diverged"][:, 0].tolist() == [True] * 4


def test_cosine_schedule_reaches_zero_and_differs_from_constant(splits):
    const = run_sweep(splits, parse_run("sgd"), B, _spec(epochs=2), [RunConfig(0.2, None, None, 1)],
                      TUNE_MODE)
    cos = run_sweep(splits, parse_run("sgd"), B, _spec(epochs=2, schedule="cosine"),
                    [RunConfig(0.2, None, None, 1)], TUNE_MODE)
    assert const.records["train_loss"][0, 0] != cos.records["train_loss"][0, 0]
    from sngrad.train.step import learning_rate_schedule

    sched = learning_rate_schedule(0.2, "cosine", 10)
    assert float(sched(0)) == pytest.approx(0.2) and float(sched(10)) == pytest.approx(0.0)
    assert float(sched(5)) == pytest.approx(0.1)


def test_control_variates_refresh_the_snapshot_and_record_lambda_and_variance(splits):
    from sngrad.stats import loss_and_grad_core

    spec = _spec(epochs=2, snapshot_every=1)
    seen = {}

    def keep(done, state):
        seen[done] = jax.device_get(state)

    rec = {}
    for name in ("sgd+cv", "sgd+svrg"):
        rec[name] = run_sweep(splits, parse_run(name), B, spec, [RunConfig(0.1, None, None, 1)],
                              TRAIN_MODE, on_epoch=keep).records
    svrg, cv = rec["sgd+svrg"], rec["sgd+cv"]
    assert (svrg["lambda_median"] == 1.0).all()
    assert np.all((cv["lambda_median"] >= 0) & (cv["lambda_median"] <= 2))
    assert np.isfinite(cv["variance_ratio"]).all() and (cv["variance_ratio"] > 0).all()
    assert np.isnan(cv["factor_mean"]).all()
    # the optimal coefficient never does worse than the raw batch mean on average
    assert (cv["variance_ratio"] <= 1.0 + 1e-6).all()
    # the snapshot taken before epoch 2 is the parameters after epoch 1, and the anchor their
    # full training-split gradient
    after_first = jax.tree.map(lambda a: a[0], seen[1]["params"])
    snap = jax.tree.map(lambda a: a[0], seen[2]["snap"])
    anchor = jax.tree.map(lambda a: a[0], seen[2]["anchor"])
    for a, b in zip(jax.tree.leaves(after_first), jax.tree.leaves(snap), strict=True):
        np.testing.assert_array_equal(a, b)
    _, full = loss_and_grad_core(after_first, splits.x_train, splits.y_train)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(anchor), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- commands


def test_tune_train_reference_write_the_contract_files(data_file, tmp_path):
    # bounds equal to the ranges: round 0 and the refinement (extension: test_protocol)
    spec = _spec(tune={**SPEC["tune"], "lr_bounds": [0.03, 0.3],
                       "one_minus_momentum_bounds": [0.1, 0.5]})
    out = tmp_path / "run"
    best = tune(data_file, parse_run("momentum"), B, spec, out)
    rows = _read_csv(out / "tuning.csv")
    assert tuple(rows[0]) == TUNING_COLUMNS
    assert len(rows) == best["trials"] * 2 and best["rounds"] == 2
    assert sum(r["round"] == "0" for r in rows) == 3 * 3 * 2  # n_lr x axis_points x seeds
    refined = [r for r in rows if r["refine"] == "True"]
    assert 1 <= len(refined) // 2 <= 2 and {r["round"] for r in refined} == {"1"}
    assert set(best["axes"]) == {"learning_rate", "momentum"}
    assert tuple(json.loads((out / "best.json").read_text())) == tuple(sorted(BEST_KEYS))
    chosen = [r for r in rows if r["chosen"] == "True"]
    assert len(chosen) == 2 and {r["seed"] for r in chosen} == {"100", "101"}
    assert float(chosen[0]["learning_rate"]) == best["learning_rate"]
    assert best["val_accuracy"] == pytest.approx(np.mean([float(r["val_accuracy"])
                                                          for r in chosen]))
    assert 0.5 <= best["momentum"] <= 0.9 and best["alpha"] is None and best["run"] == "momentum"

    train(data_file, parse_run("momentum"), B, spec, out / "best.json", out)
    metrics = _read_csv(out / "metrics.csv")
    assert tuple(metrics[0]) == METRICS_COLUMNS and len(metrics) == 2 * 3
    assert {(r["seed"], r["epoch"]) for r in metrics} == {(s, e) for s in "12" for e in "123"}
    diag = _read_csv(out / "diagnostics.csv")
    assert tuple(diag[0]) == DIAGNOSTICS_COLUMNS and len(diag) == 2 * 3 * 2
    assert {r["factor_mean"] for r in diag} == {"nan"}
    prov = json.loads((out / "provenance.json").read_text())
    assert {"git_commit", "git_dirty", "versions", "wall_time_s"} <= set(prov)

    ref = tmp_path / "ref"
    sgd = tmp_path / "sgd"
    tune(data_file, parse_run("sgd"), B, spec, sgd)
    reference(data_file, spec, sgd / "best.json", B, ref)
    meta = json.loads((ref / "reference.json").read_text())
    assert meta["checkpoints"] == {"init": 0, "epoch1": 1, "p25": 1, "p50": 2, "p100": 3}
    assert meta["seed"] == 1 and meta["batch_size"] == B
    with np.load(ref / "init.npz") as init, np.load(ref / "p100.npz") as last:
        assert sorted(init.files) == ["b0", "b1", "w0", "w1"]
        assert init["w0"].shape == (6, 8) and not np.array_equal(init["w0"], last["w0"])
        start = jax.random.split(jax.random.PRNGKey(1))[0]
        from sngrad.models import mlp_init

        np.testing.assert_array_equal(init["w0"], mlp_init(start, [6, 8, 3])[0][0])
    assert reference_epochs(20) == {"init": 0, "epoch1": 1, "p25": 5, "p50": 10, "p100": 20}
    for d in (out, ref, sgd):
        assert not list(d.glob(".*")), list(d.glob(".*"))


def test_fixed_alpha_run_keeps_its_alpha_and_gets_the_same_trials(data_file, tmp_path):
    spec = _spec(epochs=1)
    best = tune(data_file, parse_run("sgd+sngrad1@0.1"), B, spec, tmp_path / "a")
    assert best["alpha"] == 0.1 and best["run"] == "sgd+sngrad1@0.1"
    assert best["optimizer"] == "sgd+sngrad1"
    assert best["alpha_scaled"] == 0.1 and best["alpha_reference"] == "absolute"
    rows = _read_csv(tmp_path / "a" / "tuning.csv")
    assert sum(r["round"] == "0" for r in rows) == 3 * 2  # n_lr x seeds, as sgd
    assert set(best["axes"]) == {"learning_rate"}


def test_all_diverged_tuning_flows_to_train_as_nan_rows(data_file, tmp_path):
    spec = _spec(epochs=1, diverge_loss=1e-3)  # nothing can stay below this
    out = tmp_path / "run"
    best = tune(data_file, parse_run("sgd"), B, spec, out)
    assert best["all_diverged"] and best["learning_rate"] is None
    # the next rate down, 0.03 / sqrt(10) = 0.0095, leaves lr_bounds' 0.01: no extension
    assert best["rounds"] == 1 and best["at_bound"]
    assert best["axes"]["learning_rate"]["status"] == "bound"
    assert {r["chosen"] for r in _read_csv(out / "tuning.csv")} == {"False"}
    train(data_file, parse_run("sgd"), B, spec, out / "best.json", out)
    metrics = _read_csv(out / "metrics.csv")
    assert len(metrics) == 2 and {r["diverged"] for r in metrics} == {"True"}
    assert all(math.isnan(float(r["test_accuracy"])) for r in metrics)


def test_bad_arguments_fail_before_any_work(data_file, tmp_path, capsys):
    spec = json.dumps(SPEC)
    afile = tmp_path / "a-file"
    afile.write_text("x")
    base = ["tune", "--data", str(data_file), "--spec", spec]
    cases = [
        (["--optimizer", "sgd", "--batch-size", "1000", "--out-dir", str(tmp_path / "o")],
         "batch size 1000 is not allowed; it must be in [1, 192]"),
        (["--optimizer", "sgdd", "--batch-size", "8", "--out-dir", str(tmp_path / "o")],
         "unknown optimizer 'sgdd'"),
        (["--optimizer", "sgd", "--batch-size", "8", "--out-dir", str(afile)],
         "is an existing file"),
        (["--optimizer", "sgd", "--batch-size", "0", "--out-dir", str(tmp_path / "o")],
         "must be a positive integer"),
    ]
    for extra, needle in cases:
        assert cli.main(base + extra) == 2
        message = capsys.readouterr().err.strip()
        assert needle in message and "\n" not in message, message
    assert not (tmp_path / "o").exists()
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"run": "adam", "batch_size": B, "learning_rate": 0.1}))
    with pytest.raises(SngradError, match="run='adam'; this run needs 'sgd'"):
        train(data_file, parse_run("sgd"), B, _spec(), path, tmp_path / "t")
    path.write_text(json.dumps({"run": "sgd", "batch_size": B, "learning_rate": 0.1,
                                "momentum": 0.9}))
    with pytest.raises(SngradError, match="takes none"):
        train(data_file, parse_run("sgd"), B, _spec(), path, tmp_path / "t")
    assert not (tmp_path / "t").exists()


# A run name is parsed once, where it enters: the command line. The rest of a training run
# (commands, cost model, engine, step, optimizer registry, diagnostics) asks the parsed value.
_COUNT_PARSES = """
import collections, json, sys
import sngrad.names as names

calls = collections.Counter()

def counted(fn):
    def wrapper(*args, **kwargs):
        calls[fn.__name__] += 1
        return fn(*args, **kwargs)
    return wrapper

# before anything imports them by name
names.parse_run = counted(names.parse_run)
names.parse_optimizer = counted(names.parse_optimizer)
from sngrad.cli import main

assert main(sys.argv[1:]) == 0
print(json.dumps(calls))
"""


@pytest.mark.parametrize(("run", "hparams"), [
    ("sgd+sngrad1", {"alpha": 1.0}), ("momentum", {"momentum": 0.9}), ("sgd+svrg", {})])
def test_a_training_run_parses_its_name_once(data_file, tmp_path, run, hparams):
    import subprocess
    import sys

    best = tmp_path / "best.json"
    best.write_text(json.dumps({"run": run, "batch_size": B, "learning_rate": 0.1,
                                "momentum": None, "alpha": None, "all_diverged": False,
                                **hparams}))
    spec = json.dumps({**SPEC, "epochs": 1, "seeds": [1]})
    argv = ["train", "--data", str(data_file), "--optimizer", run, "--batch-size", str(B),
            "--spec", spec, "--hparams", str(best), "--out-dir", str(tmp_path / "out")]
    out = subprocess.run([sys.executable, "-c", _COUNT_PARSES, *argv], capture_output=True,
                         text=True, check=True).stdout.strip().splitlines()[-1]
    # parse_run once, at the command line, and the parse_optimizer inside it: no re-parse
    assert json.loads(out) == {"parse_run": 1, "parse_optimizer": 1}
