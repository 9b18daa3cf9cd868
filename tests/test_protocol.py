"""The tuning protocol: run names, grids, extension, alpha units, selection; the spec checks."""

import json
import math

import numpy as np
import pytest

from sngrad.errors import SngradError
from sngrad.names import parse_run
from sngrad.spec import parse_spec, read_json_arg
from sngrad.train import protocol
from sngrad.train.protocol import second_axis, select_setting

SPEC = {
    "hidden": [8], "init_seed": 0, "epochs": 3, "seeds": [1, 2], "backend": "dense",
    "schedule": "constant", "checkpoint_every": 0, "diverge_loss": 1000.0, "snapshot_every": 1,
    "tune": {"seeds": [100, 101], "lr_min": 0.001, "lr_max": 1.0, "lr_per_decade": 2,
             "lr_bounds": [1e-5, 100.0], "second_points": 3,
             "one_minus_momentum": [0.01, 0.3],
             "alpha": {"I": [0.1, 10.0], "II": [0.3, 30.0], "III": [0.03, 1.0]}},
}


def _tune(**over):
    return parse_spec({**SPEC, "tune": {**SPEC["tune"], **over}}).tune


# ----------------------------------------------------------------------------- the spec


def test_spec_round_trips_and_reads_files(tmp_path):
    spec = parse_spec(json.dumps(SPEC))
    assert spec.tune.alpha["II"] == (0.3, 30.0) and spec.schedule == "constant"
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec.to_json()))
    assert parse_spec(f"@{path}") == spec
    assert read_json_arg(f"@{path}", "x") == spec.to_json()


def _without(key):
    return {k: v for k, v in SPEC.items() if k != key}


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (_without("schedule"), "lacks key 'schedule'"),
        ({**SPEC, "tune": {k: v for k, v in SPEC["tune"].items() if k != "lr_bounds"}},
         "lacks key tune.'lr_bounds'"),
        ({**SPEC, "epoch": 3}, "unknown key 'epoch'"),
        ({**SPEC, "schedule": "step"}, "unknown schedule 'step'; valid: constant, cosine"),
        ({**SPEC, "epochs": 0}, "epochs must be >= 1"),
        ({**SPEC, "snapshot_every": 0}, "snapshot_every must be >= 1"),
        ({**SPEC, "tune": {**SPEC["tune"], "seeds": [1]}}, "at least 2 integer seed"),
        ({**SPEC, "tune": {**SPEC["tune"], "lr_min": 2.0}}, "tune.lr_min (2.0) must be <"),
        ({**SPEC, "tune": {**SPEC["tune"], "lr_bounds": [0.01, 100]}}, "must contain"),
        ({**SPEC, "tune": {**SPEC["tune"], "one_minus_momentum": [0.3, 0.01]}}, "ordered"),
        ({**SPEC, "tune": {**SPEC["tune"], "alpha": {"I": [1, 2]}}}, "keys I, II, III"),
        ({**SPEC, "tune": {**SPEC["tune"], "lr_max": 0.0012}}, "at least one grid step"),
    ],
)
def test_bad_specs_are_one_line_errors_naming_the_key(raw, needle):
    with pytest.raises(SngradError) as err:
        parse_spec(raw)
    assert needle in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- run names


def test_the_second_axis_follows_the_run_name():
    assert second_axis(parse_run("adam")) is None
    assert second_axis(parse_run("momentum")) == "momentum"
    assert second_axis(parse_run("momentum+sngrad2")) == "alpha"
    assert second_axis(parse_run("sgd+sngrad2")) == "alpha"
    assert second_axis(parse_run("sgd+sngrad2@0.05")) is None


# ----------------------------------------------------------------------------- grids


@pytest.mark.parametrize("name", ["sgd", "momentum", "sgd+sngrad1", "adam+sngrad2",
                                  "sgd+sngrad3@0.1", "svag", "sgd+cv"])
def test_every_run_gets_the_same_number_of_trials_over_the_same_range(name):
    tune = _tune()
    trials = protocol.initial_trials(parse_run(name), tune, 128, sigma_ref=0.02)
    assert protocol.lr_count(tune) == 7  # 1e-3 .. 1 at 2 per decade
    assert len(trials) == 7 * 3 == protocol.trials_per_round(tune)[0]
    lrs = sorted({t.learning_rate for t in trials})
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1.0)
    assert len({(t.learning_rate, t.momentum, t.alpha) for t in trials}) == 21  # all distinct


def test_second_axes_are_log_spaced_and_alpha_is_converted_per_run():
    tune = _tune()
    mom = protocol.initial_trials(parse_run("momentum"), tune, 128, 0.02)
    assert sorted({round(1 - t.momentum, 9) for t in mom}) == pytest.approx(
        [0.01, math.sqrt(0.01 * 0.3), 0.3])
    two = protocol.initial_trials(parse_run("sgd+sngrad2"), tune, 128, 0.02)
    assert sorted({t.alpha_scaled for t in two}) == pytest.approx([0.3, 3.0, 30.0])
    assert sorted({t.alpha for t in two}) == pytest.approx([0.3 / 128, 3.0 / 128, 30.0 / 128])
    one = protocol.initial_trials(parse_run("sgd+sngrad1"), tune, 64, 0.02)
    assert sorted({t.alpha for t in one}) == pytest.approx([0.1 / 0.02, 1 / 0.02, 10 / 0.02])
    # momentum+sngrad keeps the documented momentum and tunes alpha
    assert {t.momentum for t in protocol.initial_trials(
        parse_run("momentum+sngrad3"), tune, 64, 0.02)} == {protocol.SNGRAD_MOMENTUM}
    fixed = protocol.initial_trials(parse_run("sgd+sngrad1@0.1"), tune, 64, 0.02)
    assert {t.alpha for t in fixed} == {0.1}
    assert [t.alpha_scaled for t in fixed] == pytest.approx([0.1 * 0.02] * len(fixed))


def test_extension_adds_the_same_trials_until_interior_or_bound():
    tune = _tune(lr_bounds=[1e-3, 10.0])
    for name in ("sgd", "sgd+sngrad2"):
        run = parse_run(name)
        tried = protocol.initial_trials(run, tune, 128, 0.02)
        top = max(range(len(tried)), key=lambda i: tried[i].learning_rate)
        new, at_bound = protocol.extension(run, tune, 128, 0.02, tried, top)
        assert len(new) == protocol.trials_per_round(tune)[1] == 3 and not at_bound
        assert min(t.learning_rate for t in new) > tried[top].learning_rate
        assert {t.round for t in new} == {1}
        # interior best: done
        mid = next(i for i, t in enumerate(tried) if 0.01 < t.learning_rate < 0.1)
        assert protocol.extension(run, tune, 128, 0.02, tried, mid) == ([], False)
        # at lr_min = the lower bound: stopped by the bound
        bottom = min(range(len(tried)), key=lambda i: tried[i].learning_rate)
        assert protocol.extension(run, tune, 128, 0.02, tried, bottom) == ([], True)
        # no valid setting, lr_min already the lower bound: stopped there
        assert protocol.extension(run, tune, 128, 0.02, tried, None) == ([], True)
    # the upper bound stops an upward search after the last grid point that fits
    run, tried = parse_run("momentum"), []
    tried = protocol.initial_trials(run, tune, 128, 0.02)
    rounds = 0
    while True:
        top = max(range(len(tried)), key=lambda i: tried[i].learning_rate)
        new, at_bound = protocol.extension(run, tune, 128, 0.02, tried, top)
        if not new:
            break
        tried += new
        rounds += 1
    assert at_bound and rounds == 2  # 3.16 and 10 fit, 31.6 does not
    assert max(t.learning_rate for t in tried) == pytest.approx(10.0)


# ----------------------------------------------------------------------------- selection


def test_selection_uses_the_mean_over_seeds_then_loss_then_order_and_skips_diverged():
    # setting 0 wins one seed, setting 1 wins on the mean
    acc = np.array([[0.99, 0.80], [0.95, 0.95], [0.95, 0.95], [0.99, 0.99]])
    loss = np.array([[0.1, 0.1], [0.5, 0.5], [0.4, 0.4], [0.1, 0.1]])
    diverged = np.zeros((4, 2), bool)
    diverged[3, 1] = True  # the best mean, but one seed diverged
    assert select_setting(acc, loss, diverged) == 2  # tie on accuracy: lower loss
    assert select_setting(acc, np.ones_like(loss), diverged) == 1  # full tie: grid order
    assert select_setting(acc, loss, np.ones_like(diverged)) is None
    nan_loss = loss.copy()
    nan_loss[2, 0] = np.nan
    assert select_setting(acc, nan_loss, diverged) == 1
