"""``tune`` picks the setting the protocol says, from what training reports.

The selection function itself is tested in tests/test_protocol.py. Here the training of each
trial is replaced by a table of known outcomes, so that the command's own wiring is what is
tested: which numbers reach the selection (the final validation accuracy and loss, per tuning
seed), how they are aggregated (the mean over seeds), which settings are excluded (a diverged
seed) and how the choice reaches tuning.csv and best.json.
"""

import csv
import json
import math

import numpy as np
import pytest

from sngrad.data import Splits, save_splits
from sngrad.spec import parse_spec
from sngrad.train import commands, tune
from sngrad.train.engine import SweepResult

SEEDS = [100, 101]
LR_MIN, PER_DECADE = 0.01, 2
SPEC = {
    "hidden": [4], "init_seed": 0, "epochs": 2, "seeds": [1], "backend": "dense",
    "schedule": "constant", "checkpoint_every": 0, "diverge_loss": 1000.0, "snapshot_every": 1,
    "tune": {"seeds": SEEDS, "lr_min": LR_MIN, "lr_max": 1.0, "lr_per_decade": PER_DECADE,
             "lr_bounds": [LR_MIN, 1.0], "second_points": 1, "one_minus_momentum": [0.1, 0.5],
             "alpha": {"I": [0.3, 3.0], "II": [0.3, 30.0], "III": [0.1, 1.0]}},
}
# learning-rate index -> per tuning seed (val_accuracy, val_loss, diverged). Dyadic numbers,
# so that the means tie exactly. Each wrong rule picks another index:
#   the first seed alone -> 1 (or 4); the max over seeds -> 4; diverged seeds kept -> 4;
#   an accuracy tie broken by grid order or by the higher loss -> 2.
OUTCOMES = {
    0: [(0.5, 1.0, False), (0.5, 1.0, False)],
    1: [(0.96875, 0.25, False), (0.375, 1.25, False)],
    2: [(0.75, 0.5, False), (0.75, 0.5, False)],
    3: [(0.875, 0.375, False), (0.625, 0.375, False)],
    4: [(0.9921875, 0.0625, False), (0.9921875, 0.0625, True)],
}
EXPECTED = 3


def _fake_sweep(splits, optimizer, batch_size, spec, configs, mode, **kwargs):
    """The engine's result for ``configs`` read off OUTCOMES (final epoch of ``epochs``)."""
    rows = []
    for c in configs:
        k = round(math.log10(c.learning_rate / LR_MIN) * PER_DECADE)
        rows.append(OUTCOMES[k][SEEDS.index(c.seed)])
    acc, loss, diverged = (np.array(v) for v in zip(*rows, strict=True))
    epochs = spec.epochs
    return SweepResult(
        # one training loss for all: a tie broken by it instead of val_loss goes to grid order
        records={"train_loss": np.full((epochs, len(configs)), 2.0),
                 "diverged": np.tile(diverged, (epochs, 1))},  # sticky: set from epoch 1
        final={"val_accuracy": acc, "val_loss": loss},
    )


@pytest.fixture
def data_file(tmp_path):
    rng = np.random.default_rng(0)

    def part(n):
        x = rng.normal(size=(n, 3)).astype(np.float32)
        return x, (x[:, 0] > 0).astype(np.int32)

    path = tmp_path / "toy.npz"
    save_splits(Splits(*part(64), *part(16), *part(16), num_classes=2, name="toy"), path)
    return path


def test_tune_chooses_by_mean_over_seeds_excludes_diverged_and_breaks_ties_by_loss(
        data_file, tmp_path, monkeypatch):
    """Catches a tune that scores a setting by one seed or by the best seed, keeps a setting
    with a diverged seed, breaks an accuracy tie by grid order or the higher loss, or writes
    the chosen flag / best.json for another setting than the one selected."""
    monkeypatch.setattr(commands, "run_sweep", _fake_sweep)
    out = tmp_path / "run"
    best = tune(data_file, "sgd", 8, parse_spec(SPEC), out)

    with open(out / "tuning.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(OUTCOMES) * len(SEEDS)  # best interior: no extension round
    lrs = sorted({float(r["learning_rate"]) for r in rows})
    chosen = [r for r in rows if r["chosen"] == "True"]
    assert {float(r["learning_rate"]) for r in chosen} == {lrs[EXPECTED]}
    assert sorted(int(r["seed"]) for r in chosen) == SEEDS
    # every row carries the outcome of its own (setting, seed)
    for r in rows:
        k = lrs.index(float(r["learning_rate"]))
        acc, loss, diverged = OUTCOMES[k][SEEDS.index(int(r["seed"]))]
        assert (float(r["val_accuracy"]), float(r["val_loss"])) == (acc, loss)
        assert r["diverged"] == str(diverged)

    assert best["learning_rate"] == pytest.approx(lrs[EXPECTED])
    assert best["val_accuracy"] == 0.75 and best["val_loss"] == 0.375
    assert not best["all_diverged"] and not best["at_bound"]
    assert json.loads((out / "best.json").read_text()) == best


def _tune_with_bounds(lo, hi):
    tune_spec = {**SPEC["tune"], "lr_min": 0.1, "lr_max": 1.0, "lr_bounds": [lo, hi]}
    return parse_spec({**SPEC, "tune": tune_spec}).tune


@pytest.mark.parametrize(("end", "bound", "tried_past_it"), [
    ("top", 2.0, False),                            # next lr 3.16 is outside [., 2]
    ("top", 10**0.5 * (1 - 1e-12), True),           # next lr equals the bound up to rounding
    ("bottom", 0.05, False),                        # next lr 0.0316 is outside [0.05, .]
    ("bottom", 10**-1.5 * (1 + 1e-12), True),       # equal up to rounding
])
def test_extension_stops_exactly_at_the_learning_rate_bounds(end, bound, tried_past_it):
    """Catches a loosened or tightened bound check in ``protocol.extension`` (e.g. the upper
    bound doubled, a strict comparison, or the rounding tolerance applied with the wrong
    sign), which tests/test_protocol.py's bounds, a whole grid step away, let through."""
    from sngrad.names import parse_run
    from sngrad.train import protocol

    tune_spec = _tune_with_bounds(0.1, bound) if end == "top" else _tune_with_bounds(bound, 1.0)
    run = parse_run("sgd")
    tried = protocol.initial_trials(run, tune_spec, 8, 1.0)
    assert [t.learning_rate for t in tried] == pytest.approx([0.1, 10**-0.5, 1.0])
    pick = max if end == "top" else min
    best = pick(range(len(tried)), key=lambda i: tried[i].learning_rate)
    new, at_bound = protocol.extension(run, tune_spec, 8, 1.0, tried, best)
    if tried_past_it:
        expected = 10**0.5 if end == "top" else 10**-1.5
        assert [t.learning_rate for t in new] == pytest.approx([expected]) and not at_bound
    else:
        assert new == [] and at_bound


def test_sigma_ref_is_the_median_weight_sigma_on_the_contract_rows():
    """sigma_ref against an independent computation of its definition (module docstring of
    sngrad.train.protocol): per-example gradients by vmap(grad) at mlp_init(PRNGKey(init_seed)),
    population standard deviation over SIGMA_REF_EXAMPLES rows drawn by
    default_rng(SIGMA_REF_SEED) without replacement, weights only, zeros left out, median.
    Catches biases counted, a sample (n - 1) deviation, other rows (e.g. the first 1024),
    another network or seed, a mean instead of the median, and zero sigmas kept (feature 0 is
    constant, so the weights leaving it have sigma 0)."""
    import jax
    import jax.numpy as jnp

    from sngrad.models import cross_entropy, mlp_apply, mlp_init
    from sngrad.train import protocol

    rng = np.random.default_rng(1)
    n, sizes, init_seed = 1500, (5, 6, 3), 4
    x = rng.normal(size=(n, 5)).astype(np.float32) * np.linspace(0.2, 3.0, n)[:, None]
    x[:, 0] = 0.0
    y = rng.integers(0, 3, n).astype(np.int32)
    splits = Splits(x, y, x[:10], y[:10], x[:10], y[:10], num_classes=3, name="toy")

    rows = np.sort(np.random.default_rng(protocol.SIGMA_REF_SEED).choice(
        n, protocol.SIGMA_REF_EXAMPLES, replace=False))
    params = mlp_init(jax.random.PRNGKey(init_seed), list(sizes))

    def loss(p, xi, yi):
        return cross_entropy(mlp_apply(p, xi), yi)

    grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(params, jnp.asarray(x[rows]),
                                                            jnp.asarray(y[rows]))
    sigma = np.concatenate([np.asarray(w, np.float64).std(axis=0).ravel() for w, _ in grads])
    assert (sigma == 0).sum() == sizes[1]  # the weights out of the constant feature
    expected = float(np.median(sigma[sigma > 0]))
    got = protocol.sigma_ref(splits, sizes, init_seed)
    assert got == pytest.approx(expected, rel=1e-4)
    # the definition is not degenerate here: each wrong reading gives another number
    first = np.concatenate([np.asarray(w, np.float64).std(axis=0).ravel() for w, _ in
                            jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(
                                params, jnp.asarray(x[:1024]), jnp.asarray(y[:1024]))])
    for wrong in (np.median(sigma), np.mean(sigma[sigma > 0]), np.median(first[first > 0])):
        assert abs(wrong - expected) > 1e-3 * expected
