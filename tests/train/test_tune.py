"""``tune`` picks the setting the protocol says, from what training reports.

The selection function itself is tested in tests/train/test_protocol.py. Here the training of
each trial is replaced by a table of known outcomes, so that the command's own wiring is what is
tested: which numbers reach the selection (the final validation accuracy and loss, per tuning
seed), how they are aggregated (the mean over seeds), which settings are excluded (a diverged
seed) and how the choice reaches tuning.csv and best.json.
"""

import csv
import json
import math

import numpy as np
import pytest
from conftest import spec_dict

from sngrad.data import Splits, save_splits
from sngrad.names import parse_run
from sngrad.spec import parse_spec
from sngrad.train import commands, tune
from sngrad.train.engine import SweepResult

SEEDS = [100, 101]
LR_MIN, PER_DECADE = 0.01, 2
SPEC = spec_dict(hidden=[4], epochs=2, seeds=[1], tune={
    "seeds": SEEDS, "lr_min": LR_MIN, "lr_max": 1.0, "lr_per_decade": PER_DECADE,
    "lr_bounds": [LR_MIN, 1.0]})
# learning-rate grid index (halves: the refinement) -> per tuning seed (val_accuracy, val_loss,
# diverged). Dyadic numbers, so that the means are exact. The seed variance is zero for every
# valid setting but 1, so the median gives a tie margin of 0. Each wrong rule picks another
# setting: the first seed alone -> 1; the max over seeds -> 1; diverged seeds kept -> 4; the
# refinement ignored -> 2 (its half step 2.5 scores higher).
OUTCOMES = {
    0: [(0.5, 1.0, False), (0.5, 1.0, False)],
    1: [(0.90625, 0.25, False), (0.59375, 1.25, False)],
    1.5: [(0.75, 0.5, False), (0.75, 0.5, False)],
    2: [(0.8125, 0.5, False), (0.8125, 0.5, False)],
    2.5: [(0.84375, 0.375, False), (0.84375, 0.375, False)],
    3: [(0.6875, 0.375, False), (0.6875, 0.375, False)],
    4: [(0.9921875, 0.0625, False), (0.9921875, 0.0625, True)],
}
EXPECTED = 2.5


def _index(learning_rate: float) -> float:
    return round(2 * math.log10(learning_rate / LR_MIN) * PER_DECADE) / 2


def _fake_sweep(splits, optimizer, batch_size, spec, configs, mode, **kwargs):
    """The engine's result for ``configs`` read off OUTCOMES (final epoch of ``epochs``)."""
    rows = [OUTCOMES[_index(c.learning_rate)][SEEDS.index(c.seed)] for c in configs]
    acc, loss, diverged = (np.array(v) for v in zip(*rows, strict=True))
    epochs = spec.epochs
    return SweepResult(
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


def test_tune_chooses_by_mean_over_seeds_excludes_diverged_and_refines(
        data_file, tmp_path, monkeypatch):
    """Catches a tune that scores a setting by one seed or by the best seed, keeps a setting
    with a diverged seed, skips or ignores the refinement round, or writes the chosen flag /
    best.json for another setting than the one selected."""
    monkeypatch.setattr(commands, "run_sweep", _fake_sweep)
    out = tmp_path / "run"
    best = tune(data_file, parse_run("sgd"), 8, parse_spec(SPEC), out)

    with open(out / "tuning.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # grid pick interior: no extension round; the refinement adds 1.5 and 2.5
    assert len(rows) == len(OUTCOMES) * len(SEEDS)
    assert sorted({_index(float(r["learning_rate"])) for r in rows if r["refine"] == "True"}
                  ) == [1.5, 2.5]
    chosen = [r for r in rows if r["chosen"] == "True"]
    assert {_index(float(r["learning_rate"])) for r in chosen} == {EXPECTED}
    assert sorted(int(r["seed"]) for r in chosen) == SEEDS
    # every row carries the outcome of its own (setting, seed)
    for r in rows:
        acc, loss, diverged = OUTCOMES[_index(float(r["learning_rate"]))][
            SEEDS.index(int(r["seed"]))]
        assert (float(r["val_accuracy"]), float(r["val_loss"])) == (acc, loss)
        assert r["diverged"] == str(diverged)

    assert best["learning_rate"] == pytest.approx(LR_MIN * 10 ** (EXPECTED / PER_DECADE))
    assert best["val_accuracy"] == 0.84375 and best["val_loss"] == 0.375
    assert not best["all_diverged"] and not best["at_bound"] and best["tie_margin"] == 0.0
    lr_axis = best["axes"]["learning_rate"]
    assert lr_axis["status"] == "interior" and lr_axis["pick"] == best["learning_rate"]
    assert len(lr_axis["tried"]) == 7 and lr_axis["resolution"] == pytest.approx(10 ** 0.25)
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
    sign), which tests/train/test_protocol.py's bounds, a whole grid step away, let through."""
    from sngrad.names import parse_run
    from sngrad.train import protocol

    tune_spec = _tune_with_bounds(0.1, bound) if end == "top" else _tune_with_bounds(bound, 1.0)
    run = parse_run("sgd")
    tried = protocol.initial_trials(run, tune_spec, 8)
    assert [t.learning_rate for t in tried] == pytest.approx([0.1, 10**-0.5, 1.0])
    pick = max if end == "top" else min
    best = pick(range(len(tried)), key=lambda i: tried[i].learning_rate)
    new, status = protocol.extension(run, tune_spec, 8, tried, best)
    at_bound = status.get("learning_rate") == protocol.BOUND
    if tried_past_it:
        expected = 10**0.5 if end == "top" else 10**-1.5
        assert [t.learning_rate for t in new] == pytest.approx([expected]) and not at_bound
    else:
        assert new == [] and at_bound


def _peaked_sweep(splits, optimizer, batch_size, spec, configs, mode, **kwargs):
    """Every seed scores 0.9 - 0.01 * (log10(eta / 2)^2 + log10(alpha / 20)^2), in float32
    steps, so the optimum (eta 2, raw alpha 20, step 0.1) lies past the top of the alpha
    range."""
    acc = np.array([0.9 - 0.01 * (math.log10(c.learning_rate / 2.0) ** 2
                                  + math.log10(c.alpha / 20.0) ** 2) for c in configs])
    acc = acc.astype(np.float32).astype(float)
    k = len(configs)
    return SweepResult(records={"train_loss": np.full((spec.epochs, k), 2.0),
                                "diverged": np.zeros((spec.epochs, k), bool)},
                       final={"val_accuracy": acc, "val_loss": 1 - acc})


def test_tune_extends_alpha_records_every_axis_and_trains_variant_one_at_step_times_alpha(
        data_file, tmp_path, monkeypatch):
    """Catches an alpha axis left at its edge, a best.json without the per-axis record, a
    tuning.csv whose step column is not eta / alpha, and a variant I run handed eta = step."""
    monkeypatch.setattr(commands, "run_sweep", _peaked_sweep)
    out = tmp_path / "run"
    best = tune(data_file, parse_run("sgd+sngrad1"), 8, parse_spec(SPEC), out)
    axes = best["axes"]
    assert set(axes) == {"step", "alpha"}
    assert axes["alpha"]["status"] == axes["step"]["status"] == "interior"
    assert max(axes["alpha"]["tried"]) > 3.0  # past the configured range [0.3, 3]
    assert min(axes["alpha"]["tried"]) < best["alpha_scaled"] < max(axes["alpha"]["tried"])
    assert best["alpha_reference"] == "rms" and best["alpha"] == best["alpha_scaled"]
    assert best["learning_rate"] == pytest.approx(best["step"] * best["alpha_scaled"])
    with open(out / "tuning.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for r in rows:
        assert float(r["step"]) == pytest.approx(float(r["learning_rate"])
                                                 / float(r["alpha_scaled"]))
    assert len({r["setting"] for r in rows}) == best["trials"]
    assert sum(r["chosen"] == "True" for r in rows) == len(SEEDS)
