"""Training engine: spec checks, tuning protocol, the vmapped sweep, outputs, diagnostics."""

import csv
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

import sngrad.train as train_mod
from sngrad import cli
from sngrad.data import Splits, save_splits
from sngrad.diagnostics import layer_diagnostics
from sngrad.errors import SngradError
from sngrad.io import write_csv, write_json
from sngrad.spec import parse_spec
from sngrad.train import (
    ALPHA_COLUMNS,
    DIAGNOSTICS_COLUMNS,
    METRICS_COLUMNS,
    TRAIN_MODE,
    TUNE_MODE,
    TUNING_COLUMNS,
    Programs,
    RunConfig,
    run_sweep,
    select_setting,
    tuning_settings,
)


def _toy_splits(n_train=192, dim=6, seed=0):
    """Three linearly separable-ish classes, learnable in a few epochs."""
    rng = np.random.default_rng(seed)

    def part(n):
        x = rng.normal(size=(n, dim)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.8).astype(np.int32)
        return x, y

    return Splits(*part(n_train), *part(48), *part(48), num_classes=3, name="toy")


@pytest.fixture(scope="module")
def splits():
    return _toy_splits()


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, splits):
    path = tmp_path_factory.mktemp("data") / "toy.npz"
    save_splits(splits, path)
    return path


def _spec(**over):
    base = {"hidden": [8], "epochs": 3, "seeds": [1, 2], "checkpoint_every": 0,
            "tune": {"budget": 3, "lr_min": 0.01, "lr_max": 0.5, "seeds": [0]}}
    base.update(over)
    return parse_spec(json.dumps(base))


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- the spec


def test_spec_fills_defaults_and_reads_files(tmp_path):
    spec = parse_spec('{"epochs": 4}')
    assert spec.epochs == 4 and spec.hidden == (256, 256) and spec.alpha is None
    assert spec.tune.budget == 8 and spec.tune.seeds == (0,)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec.to_json()))
    assert parse_spec(f"@{path}") == spec


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"epoch": 3}', "unknown key 'epoch'"),
        ('{"tune": {"budgets": 3}}', "unknown key tune.'budgets'"),
        ('{"epochs": 0}', "epochs must be >= 1"),
        ('{"epochs": 2.5}', "epochs must be an integer"),
        ('{"epochs": true}', "epochs must be an integer"),
        ('{"hidden": [16, -1]}', "hidden[1] must be >= 1"),
        ('{"hidden": 16}', "'hidden' must be a list"),
        ('{"seeds": []}', "seeds must be a non-empty list"),
        ('{"seeds": [1, 1]}', "must not repeat"),
        ('{"tune": {"seeds": []}}', "tune.seeds must be a non-empty list"),
        ('{"backend": "fast"}', "unknown backend 'fast'; valid: dense, vmap, chunked"),
        ('{"alpha": -1}', "alpha must be a finite number > 0"),
        ('{"diverge_loss": "big"}', "diverge_loss must be a number"),
        ('{"tune": {"lr_min": 1, "lr_max": 0.1}}', "tune.lr_max (0.1) must be >= tune.lr_min"),
        ('{"tune": {"momentum_max": 1.0}}', "0 <= min <= max < 1"),
        ("[1, 2]", "must be a JSON object"),
        ("{not json", "not valid JSON"),
        ("@/nonexistent/spec.json", "cannot read training spec file"),
    ],
)
def test_bad_specs_name_the_key(text, needle):
    with pytest.raises(SngradError) as err:
        parse_spec(text)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_rejects_bad_input_with_one_line_and_status_2(data_file, tmp_path, capsys):
    spec = json.dumps({"hidden": [8], "epochs": 1})
    base = ["tune", "--data", str(data_file), "--optimizer", "sgd", "--spec", spec,
            "--out-dir", str(tmp_path / "out")]
    cases = [
        (["--batch-size", "1000"], "batch size 1000 is not allowed; it must be in [1, 192]"),
        (["--batch-size", "0"], "must be a positive integer"),
        (["--batch-size", "8", "--optimizer", "sgdd"], "unknown optimizer 'sgdd'"),
        (["--batch-size", "8", "--spec", '{"seeds": "1"}'], "seeds must be a non-empty list"),
    ]
    for extra, needle in cases:
        assert cli.main(base + extra) == 2
        message = capsys.readouterr().err.strip()
        assert needle in message and "\n" not in message, message
    assert not (tmp_path / "out").exists()
    assert cli.main(["train", "--data", str(data_file)]) == 2
    assert "required" in capsys.readouterr().err


# ----------------------------------------------------------------------------- tuning protocol


def test_one_hyperparameter_optimizers_get_a_log_grid_with_fixed_alpha():
    spec = _spec(tune={"budget": 5, "lr_min": 1e-3, "lr_max": 10.0})
    grid = tuning_settings("sgd", spec)
    assert [s["learning_rate"] for s in grid] == pytest.approx([1e-3, 1e-2, 1e-1, 1.0, 10.0])
    assert all(s["momentum"] is None and s["alpha"] is None for s in grid)
    sn = tuning_settings("adam+sngrad2", spec)
    assert [s["learning_rate"] for s in sn] == [s["learning_rate"] for s in grid]
    assert {s["alpha"] for s in sn} == {1.0}  # DEFAULT_ALPHA["II"]
    assert {s["alpha"] for s in tuning_settings("sgd+sngrad1", _spec(alpha=3.0))} == {3.0}


def test_momentum_methods_get_a_seeded_random_search_of_the_same_budget():
    spec = _spec(tune={"budget": 16, "lr_min": 1e-4, "lr_max": 1.0, "momentum_min": 0.5,
                       "momentum_max": 0.99, "search_seed": 7})
    draws = tuning_settings("nesterov+sngrad3", spec)
    assert len(draws) == len(tuning_settings("adam", spec)) == 16
    assert draws == tuning_settings("nesterov+sngrad3", spec)
    lrs = np.array([d["learning_rate"] for d in draws])
    moms = np.array([d["momentum"] for d in draws])
    assert np.all((lrs >= 1e-4) & (lrs <= 1.0)) and np.all((moms >= 0.5) & (moms < 0.99))
    assert len(set(lrs)) == 16 and np.ptp(np.log10(lrs)) > 1.5  # spread over decades
    other = _spec(tune={"budget": 16, "search_seed": 8})
    assert tuning_settings("momentum", other) != tuning_settings("momentum", spec)


def test_selection_prefers_accuracy_then_loss_and_never_a_diverged_setting():
    acc = np.array([[0.9, 0.9], [0.95, 0.95], [0.95, 0.95], [0.99, 0.99]])
    loss = np.array([[0.3, 0.3], [0.5, 0.5], [0.4, 0.4], [0.1, 0.1]])
    diverged = np.array([[0, 0], [0, 0], [0, 0], [0, 1]], bool)
    assert select_setting(acc, loss, diverged) == 2
    assert select_setting(acc, loss, np.ones_like(diverged)) is None
    nan_loss = loss.copy()
    nan_loss[2, 0] = np.nan
    assert select_setting(acc, nan_loss, diverged) == 1


# ----------------------------------------------------------------------------- the engine
# The tests share two program shapes (momentum+sngrad2 and sgd, batch 16, two runs) so that
# the whole file compiles only a handful of XLA programs.

OPT = "momentum+sngrad2"


def test_every_optimizer_starts_from_the_same_weights_and_the_last_batch_is_dropped():
    hp = {"learning_rate": jnp.array([0.1, 0.1])}
    keys = [train_mod._keys(RunConfig(0.1, None, None, s)) for s in (1, 2)]
    init_keys = jnp.asarray(np.stack([k[0] for k in keys]))
    shuffle_keys = jnp.asarray(np.stack([k[1] for k in keys]))
    states = []
    extras = {"sgd": {}, OPT: {"momentum": jnp.array([0.9, 0.5]), "alpha": jnp.array([1.0, 2.0])}}
    for name, extra in extras.items():
        progs = train_mod.programs(name, "dense", 16, 192, (6, 8, 3), TRAIN_MODE)
        states.append(progs.init(init_keys, shuffle_keys, {**hp, **extra}))
    for a, b in zip(states[0]["params"], states[1]["params"], strict=True):
        np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(states[0]["params"][0][0][0], states[0]["params"][0][0][1])
    # tuning runs share init_seed's weights whatever their shuffle seed
    t0, t1 = (train_mod._keys(RunConfig(0.1, None, None, s, init_seed=0))[0] for s in (1, 2))
    np.testing.assert_array_equal(t0, t1)
    assert Programs("sgd", "dense", 32, 200, [6, 8, 3], TUNE_MODE).steps == 6  # 8 left out


def test_sweeps_are_bit_reproducible_and_runs_do_not_interact(splits):
    spec = _spec(epochs=2)
    configs = [RunConfig(0.05, 0.5, 1.0, 1), RunConfig(0.2, 0.9, 3.0, 2)]
    first = run_sweep(splits, OPT, 16, spec, configs, TRAIN_MODE)
    again = run_sweep(splits, OPT, 16, spec, configs, TRAIN_MODE)
    for name, values in first.records.items():
        if name != "wall_time":
            np.testing.assert_array_equal(values, again.records[name], err_msg=name)
    swapped = run_sweep(splits, OPT, 16, spec, configs[::-1], TRAIN_MODE)
    np.testing.assert_allclose(
        swapped.records["val_loss"][:, ::-1], first.records["val_loss"], rtol=1e-6
    )
    assert first.records["val_loss"].shape == (2, 2)
    assert first.records["diag_snr_mean"].shape == (2, 2, 2)  # epochs, runs, layers
    assert not np.allclose(first.records["val_loss"][:, 0], first.records["val_loss"][:, 1])


def test_plain_optimizers_never_compute_gradient_statistics(splits, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("per-example statistics computed for a plain optimizer")

    # batch size 24 is used by no other test, so these programs are traced here, with the stub
    monkeypatch.setattr(train_mod, "dense_stats", forbidden)
    spec = _spec(epochs=1)
    run_sweep(splits, "sgd", 24, spec, [RunConfig(0.1, None, None, 1)], TUNE_MODE)
    with pytest.raises(AssertionError, match="per-example"):
        run_sweep(splits, "sgd+sngrad1", 24, spec, [RunConfig(0.1, None, 1.0, 1)], TUNE_MODE)


def test_training_learns_and_a_diverging_run_does_not_spoil_the_others(splits):
    spec = _spec(epochs=8, diverge_loss=50.0)
    configs = [RunConfig(0.3, None, None, 3), RunConfig(1e5, None, None, 3)]
    result = run_sweep(splits, "sgd", 16, spec, configs, TRAIN_MODE)
    rec = result.records
    loss, acc = rec["train_loss"][:, 0], rec["val_accuracy"][:, 0]
    # the majority class is about half of the examples
    assert loss[-1] < 0.6 * loss[0] and acc[-1] > 0.7
    assert np.all(np.diff(rec["wall_time"]) > 0)
    assert rec["diverged"][:, 1].all() and not rec["diverged"][:, 0].any()


# ----------------------------------------------------------------------------- commands


def test_tune_train_alpha_sweep_write_the_contract_files(data_file, tmp_path):
    spec = _spec()
    out = tmp_path / "run"
    best = train_mod.tune(data_file, OPT, 16, spec, out)
    rows = _read_csv(out / "tuning.csv")
    assert tuple(rows[0]) == TUNING_COLUMNS and len(rows) == 3
    assert [r["chosen"] for r in rows].count("True") == 1
    on_disk = json.loads((out / "best.json").read_text())
    assert on_disk == best and not best["all_diverged"]
    assert set(on_disk) >= {"optimizer", "batch_size", "learning_rate", "momentum", "alpha",
                            "val_accuracy", "val_loss"}
    assert best["alpha"] == 1.0 and 0.5 <= best["momentum"] < 0.99
    chosen = next(r for r in rows if r["chosen"] == "True")
    assert float(chosen["val_accuracy"]) == max(float(r["val_accuracy"]) for r in rows)

    train_mod.train(data_file, OPT, 16, spec, out / "best.json", out)
    metrics = _read_csv(out / "metrics.csv")
    assert tuple(metrics[0]) == METRICS_COLUMNS and len(metrics) == 2 * 3
    assert {(r["seed"], r["epoch"]) for r in metrics} == {(s, e) for s in "12" for e in "123"}
    assert {r["dataset"] for r in metrics} == {"toy"}
    assert float(metrics[0]["learning_rate"]) == best["learning_rate"]
    diag = _read_csv(out / "diagnostics.csv")
    assert tuple(diag[0]) == DIAGNOSTICS_COLUMNS and len(diag) == 2 * 3 * 2
    prov = json.loads((out / "provenance.json").read_text())
    assert {"spec", "seeds", "versions", "git_commit", "device", "wall_time_s", "argv"} <= set(prov)
    assert set(prov["versions"]) == {"jax", "jaxlib", "optax", "numpy", "sngrad"}
    assert prov["seeds"] == [1, 2] and prov["spec"]["epochs"] == 3

    train_mod.alpha_sweep(data_file, OPT, 16, spec, out / "best.json", [0.5, 2.0], out)
    sweep = _read_csv(out / "alpha_sweep.csv")
    assert tuple(sweep[0]) == ALPHA_COLUMNS and len(sweep) == 4
    assert sorted({r["alpha"] for r in sweep}) == ["0.5", "2.0"]
    assert not list(out.glob(".checkpoint-*")) and not list(out.glob(".*.tmp"))


def test_divergence_is_recorded_not_raised_and_all_diverged_flows_to_train(data_file, tmp_path):
    # lr >= 1e6 blows up within the first epoch for every setting.
    spec = _spec(tune={"budget": 3, "lr_min": 1e6, "lr_max": 1e7, "seeds": [0]})
    out = tmp_path / "run"
    best = train_mod.tune(data_file, OPT, 16, spec, out)
    assert best["all_diverged"] and best["learning_rate"] is None
    rows = _read_csv(out / "tuning.csv")
    assert {r["diverged"] for r in rows} == {"True"} and {r["chosen"] for r in rows} == {"False"}
    train_mod.train(data_file, OPT, 16, spec, out / "best.json", out)
    metrics = _read_csv(out / "metrics.csv")
    assert len(metrics) == 6 and {r["diverged"] for r in metrics} == {"True"}
    assert all(math.isnan(float(r["test_accuracy"])) for r in metrics)


def test_hparams_must_match_the_run(data_file, tmp_path):
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"optimizer": "adam", "batch_size": 16, "learning_rate": 0.1}))
    with pytest.raises(SngradError, match="optimizer='adam'; this run needs 'sgd'"):
        train_mod.train(data_file, "sgd", 16, _spec(), path, tmp_path)
    path.write_text(json.dumps({"optimizer": "sgd", "batch_size": 16, "learning_rate": 0.1,
                                "momentum": 0.9}))
    with pytest.raises(SngradError, match="takes none"):
        train_mod.train(data_file, "sgd", 16, _spec(), path, tmp_path)
    with pytest.raises(SngradError, match=r"needs a \+sngrad optimizer"):
        train_mod.alpha_sweep(data_file, "sgd", 16, _spec(), path, [1.0], tmp_path)
    with pytest.raises(SngradError, match="--alphas values must be finite and > 0"):
        train_mod.parse_alphas("1,-2")
    assert not (tmp_path / "metrics.csv").exists()


# ----------------------------------------------------------------------------- pieces


def test_layer_diagnostics_on_known_statistics():
    mu = jnp.array([[1.0, -2.0], [0.0, 3.0]])
    var = jnp.array([[4.0, 1.0], [0.0, 9.0]])  # the zero-variance weight is left out of SNR
    d = {k: float(v) for k, v in layer_diagnostics(mu, var).items()}
    snr = [0.5, 2.0, 1.0]
    assert d["snr_mean"] == pytest.approx(np.mean(snr))
    assert d["snr_median"] == pytest.approx(1.0)
    assert d["grad_norm"] == pytest.approx(math.sqrt(14.0))
    assert d["noise_norm"] == pytest.approx(math.sqrt(14.0))
    assert d["noise_scale"] == pytest.approx(1.0)
    # alpha = 1: I = 1/max(sigma, 1); II = min(mu^2/sigma^2, 1); III = 1 - min(sigma, 1)
    assert d["factor_I"] == pytest.approx((0.5 + 1 + 1 + 1 / 3) / 4)
    assert d["factor_II"] == pytest.approx((0.25 + 1 + 1 + 1) / 4)
    assert d["factor_III"] == pytest.approx((0 + 0 + 1 + 0) / 4)


def test_atomic_writers_leave_nothing_behind_on_failure(tmp_path):
    path = tmp_path / "t.csv"
    write_csv(path, ["a", "b"], [{"a": 0.1, "b": None}, {"a": True, "b": float("nan")}])
    assert path.read_text() == "a,b\n0.1,\nTrue,nan\n"
    with pytest.raises(KeyError):
        write_csv(path, ["a", "c"], [{"a": 1}])
    assert path.read_text() == "a,b\n0.1,\nTrue,nan\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]
    write_json(tmp_path / "b.json", {"x": float("inf"), "y": [1.5]})
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": None, "y": [1.5]}


def test_statistics_backends_train_the_same_runs(splits):
    configs = [RunConfig(0.1, 0.9, 1.0, s, init_seed=0) for s in (0, 1, 2)]
    results = [
        run_sweep(splits, OPT, 16, _spec(epochs=2, backend=backend), configs, TUNE_MODE)
        for backend in ("dense", "vmap")
    ]
    np.testing.assert_allclose(results[0].final["val_loss"], results[1].final["val_loss"],
                               rtol=1e-4)
