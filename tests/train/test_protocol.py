"""The tuning protocol: run names, grids, extension, alpha units, selection; the spec checks."""

import json
import math

import numpy as np
import pytest
from conftest import spec_dict

from sngrad.errors import SngradError
from sngrad.names import parse_run
from sngrad.spec import parse_spec, read_json_arg
from sngrad.train import protocol
from sngrad.train.protocol import BOUND, INTERIOR, tuned_axes

SPEC = spec_dict(tune={
    "lr_min": 0.001, "lr_max": 1.0, "lr_bounds": [1e-5, 100.0], "axis_points": 5,
    "one_minus_momentum": [0.01, 0.3],
    "alpha": {"I": [0.1, 10.0], "II": [0.3, 30.0], "III": [0.03, 1.0]},
    "alpha_bounds": {"I": [0.001, 1000.0], "II": [0.01, 1000.0], "III": [0.001, 10.0]}})


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
        ({**SPEC, "tune": {**SPEC["tune"], "one_minus_momentum": [0.1, 0.1]}}, "low < high"),
        ({**SPEC, "tune": {**SPEC["tune"], "one_minus_momentum": 1.5}}, "(0, 1]"),
        ({**SPEC, "tune": {**SPEC["tune"], "one_minus_momentum_bounds": [0.05, 1.0]}},
         "tune.one_minus_momentum_bounds [0.05, 1.0] must contain"),
        ({**SPEC, "tune": {**SPEC["tune"], "alpha_bounds": {
            "I": [1.0, 5.0], "II": [0.01, 1000.0], "III": [0.001, 10.0]}}},
         "tune.alpha_bounds.I [1.0, 5.0] must contain tune.alpha.I [0.1, 10.0]"),
        ({**SPEC, "tune": {**SPEC["tune"], "axis_points": 2}}, "tune.axis_points must be >= 3"),
        ({**SPEC, "tune": {**SPEC["tune"], "alpha": {"I": [1, 2]}}}, "keys I, II, III"),
        ({**SPEC, "tune": {**SPEC["tune"], "lr_max": 0.0012}}, "at least one grid step"),
    ],
)
def test_bad_specs_are_one_line_errors_naming_the_key(raw, needle):
    with pytest.raises(SngradError) as err:
        parse_spec(raw)
    assert needle in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- axes


def test_every_run_of_a_family_searches_the_same_axes():
    tune = _tune()
    assert tuned_axes(parse_run("sgd"), tune) == ("learning_rate",)
    assert tuned_axes(parse_run("adam"), tune) == ("learning_rate",)
    assert tuned_axes(parse_run("momentum"), tune) == ("learning_rate", "momentum")
    # the sngrad runs on momentum tune the momentum as momentum itself does
    assert tuned_axes(parse_run("momentum+sngrad3"), tune) == (
        "learning_rate", "alpha", "momentum")
    assert tuned_axes(parse_run("momentum+sngrad1"), tune) == ("step", "alpha", "momentum")
    # I and II tune eta / alpha; III tunes eta; a fixed alpha tunes the learning rate alone
    assert tuned_axes(parse_run("sgd+sngrad1"), tune) == ("step", "alpha")
    assert tuned_axes(parse_run("adam+sngrad2"), tune) == ("step", "alpha")
    assert tuned_axes(parse_run("sgd+sngrad3"), tune) == ("learning_rate", "alpha")
    assert tuned_axes(parse_run("sgd+sngrad2@0.05"), tune) == ("learning_rate",)
    # a fixed momentum: one stated value for every momentum run, no momentum axis
    fixed = _tune(one_minus_momentum=0.1)
    for name in ("momentum", "momentum+sngrad1"):
        run = parse_run(name)
        assert "momentum" not in tuned_axes(run, fixed)
        assert [t.momentum for t in protocol.initial_trials(run, fixed, 64)] == pytest.approx(
            [0.9] * len(protocol.initial_trials(run, fixed, 64)))


# ----------------------------------------------------------------------------- grids


def test_round_zero_is_the_product_of_log_grids_of_at_least_five_points():
    tune = _tune()
    assert protocol.lr_count(tune) == 7  # 1e-3 .. 1 at 2 per decade
    sgd = protocol.initial_trials(parse_run("sgd"), tune, 128)
    assert sorted(t.learning_rate for t in sgd) == pytest.approx(
        [10 ** (-3 + k / 2) for k in range(7)])
    mom = protocol.initial_trials(parse_run("momentum"), tune, 128)
    assert len(mom) == 7 * 5
    assert sorted({round(1 - t.momentum, 12) for t in mom}) == pytest.approx(
        list(np.geomspace(0.01, 0.3, 5)))
    two = protocol.initial_trials(parse_run("sgd+sngrad2"), tune, 128)
    assert sorted({t.alpha_scaled for t in two}) == pytest.approx(list(np.geomspace(0.3, 30, 5)))
    assert sorted({t.alpha for t in two}) == pytest.approx(list(np.geomspace(0.3, 30, 5) / 128))
    # I and III: the raw alpha is the scale-free one (read relative to the step's RMS sigma)
    three = protocol.initial_trials(parse_run("sgd+sngrad3"), tune, 64)
    assert all(t.alpha == t.alpha_scaled for t in three) and len(three) == 35
    assert parse_run("sgd+sngrad3").alpha_reference == "rms"
    fixed = protocol.initial_trials(parse_run("sgd+sngrad2@0.05"), tune, 64)
    assert {t.alpha for t in fixed} == {0.05} and len(fixed) == 7
    assert [t.alpha_scaled for t in fixed] == pytest.approx([0.05 * 64] * 7)


def test_variant_one_searches_eta_over_alpha_and_trains_at_their_product():
    """On the step axis eta = step * alpha_scaled, so a step grid crossed with the alpha grid
    holds, for a fixed step, the same eta / alpha at every alpha (the shrunk coordinates'
    step), which is what removes the diagonal ridge of the (eta, alpha) plane."""
    tune = _tune()
    trials = protocol.initial_trials(parse_run("sgd+sngrad1"), tune, 128)
    assert len(trials) == 7 * 5
    for t in trials:
        assert t.learning_rate == pytest.approx(t.step * t.alpha_scaled)
    steps = sorted({round(t.step, 12) for t in trials})
    assert steps == pytest.approx([10 ** (-3 + k / 2) for k in range(7)])


def _run_search(name, tune, score, batch=64):
    """The extension loop of ``tune`` on a synthetic score of each trial; returns (trials,
    status, rounds)."""
    run = parse_run(name)
    tried = protocol.initial_trials(run, tune, batch)
    rounds = 0
    while True:
        acc = np.array([[score(t)] * 2 for t in tried])
        pick, _ = protocol.select(acc, 1 - acc, np.zeros_like(acc, bool),
                                  [t.position for t in tried])
        new, status = protocol.extension(run, tune, batch, tried, pick)
        if not new:
            return tried, status, pick, rounds
        assert {t.round for t in new} == {rounds + 1}
        tried += new
        rounds += 1


def _peak(lr=None, alpha=None, m=None):
    """A smooth score peaked at the given values (log distance), no noise."""
    def score(t):
        d = 0.0
        if lr is not None:
            d += math.log10(t.learning_rate / lr) ** 2
        if alpha is not None:
            d += math.log10(t.alpha_scaled / alpha) ** 2
        if m is not None:
            d += math.log10((1 - t.momentum) / m) ** 2
        return 0.9 - 0.01 * d
    return score


@pytest.mark.parametrize(("alpha", "past", "expected_rounds"),
                         [(3.0, "top", 2), (0.005, "bottom", 3)])
def test_alpha_is_extended_past_either_edge_until_interior(alpha, past, expected_rounds):
    """Variant III's range [0.03, 1] (q = 2.40) is extended at its own spacing, one slab of
    every tried learning rate per round, until the pick is interior."""
    tune = _tune()
    tried, status, pick, rounds = _run_search("sgd+sngrad3", tune, _peak(lr=0.03, alpha=alpha))
    assert status == {"learning_rate": INTERIOR, "alpha": INTERIOR}
    values = sorted({t.alpha_scaled for t in tried})
    chosen = tried[pick].alpha_scaled
    assert values[0] < chosen < values[-1]
    assert abs(math.log(chosen / alpha)) <= math.log(protocol.resolution("alpha",
                                                      parse_run("sgd+sngrad3"), tune)) / 2
    assert (values[-1] > 1.0) if past == "top" else (values[0] < 0.03)
    q = (1 / 0.03) ** 0.25
    assert np.diff(np.log(values)) == pytest.approx([math.log(q)] * (len(values) - 1))
    # 1 -> 2.40, 5.77 (pick 2.40 interior); 0.03 -> 0.0125, 0.0052, 0.0022 (pick 0.0052)
    assert rounds == expected_rounds and len(tried) == 7 * 5 + expected_rounds * 7


def test_momentum_is_extended_past_both_edges_and_a_hard_bound_stops_it():
    tune = _tune()
    for m, edge in ((0.003, 0.01), (0.45, 0.3)):
        tried, status, pick, _ = _run_search("momentum", tune, _peak(lr=0.03, m=m))
        assert status["momentum"] == INTERIOR
        values = sorted({round(1 - t.momentum, 12) for t in tried})
        assert values[0] < 1 - tried[pick].momentum < values[-1]
        assert (values[0] < edge) if m < edge else (values[-1] > edge)
    # a peak beyond the bound: the search stops at 1 - m = 0.001 and says so
    tried, status, pick, _ = _run_search("momentum", tune, _peak(lr=0.03, m=1e-5))
    assert status["momentum"] == BOUND
    assert 1 - tried[pick].momentum == pytest.approx(min(1 - t.momentum for t in tried))
    assert min(1 - t.momentum for t in tried) >= 0.001 * (1 - 1e-9)


def test_alpha_bound_stops_the_search_and_is_reported():
    tune = _tune(alpha_bounds={"I": [0.001, 1000.0], "II": [0.01, 1000.0], "III": [0.01, 1.0]})
    tried, status, pick, _ = _run_search("sgd+sngrad3", tune, _peak(lr=0.03, alpha=100.0))
    assert status["alpha"] == BOUND
    assert max(t.alpha_scaled for t in tried) == pytest.approx(1.0)
    assert tried[pick].alpha_scaled == pytest.approx(1.0)  # the pick sits at the bound


def test_learning_rate_extension_stops_at_its_bound():
    tune = _tune(lr_bounds=[1e-3, 10.0])
    tried, status, pick, rounds = _run_search("sgd", tune, _peak(lr=1000.0))
    assert status == {"learning_rate": BOUND} and rounds == 2  # 3.16 and 10 fit, 31.6 not
    assert tried[pick].learning_rate == pytest.approx(10.0)
    # every setting diverged, lr_min already at the lower bound: stopped there
    run = parse_run("sgd")
    assert protocol.extension(run, tune, 64, tried, None) == ([], {"learning_rate": BOUND})


def test_refinement_gives_every_run_the_same_final_step_resolution():
    tune = _tune()
    for name in ("sgd", "sgd+sngrad1", "momentum", "momentum+sngrad3"):
        run = parse_run(name)
        tried = protocol.initial_trials(run, tune, 64)
        pick = len(tried) // 2
        new = protocol.refinement(run, tune, 64, tried, pick)
        first = tuned_axes(run, tune)[0]
        assert len(new) == 2 and all(t.refine for t in new)
        k = tried[pick].position[first]
        assert sorted(t.position[first] for t in new) == [k - 0.5, k + 0.5]
        for t in new:  # only the first axis moves
            assert {a: v for a, v in t.position.items() if a != first} == {
                a: v for a, v in tried[pick].position.items() if a != first}
        assert protocol.resolution(first, run, tune) == pytest.approx(10 ** 0.25)
        if "alpha" in tuned_axes(run, tune):
            assert protocol.resolution("alpha", run, tune) == pytest.approx(
                (10.0 / 0.1 if run.variant == "I" else 1 / 0.03) ** 0.25)
        assert protocol.trial_count(run, tune) == (len(tried), 2)


# ----------------------------------------------------------------------------- selection


def _positions(n):
    return [{"learning_rate": float(i)} for i in range(n)]


def test_selection_skips_diverged_and_non_finite_settings():
    acc = np.array([[0.99, 0.99], [0.80, 0.81], [0.50, 0.52]])
    loss = np.array([[0.1, 0.1], [0.5, 0.5], [0.4, np.nan]])
    diverged = np.zeros((3, 2), bool)
    diverged[0, 1] = True  # the best mean, but one seed diverged
    pick, tied = protocol.select(acc, loss, diverged, _positions(3))
    assert pick == 1 and tied == [1]
    assert protocol.select(acc, loss, np.ones_like(diverged), _positions(3)) == (None, [])


def test_tie_margin_is_one_standard_error_of_a_difference_among_the_best():
    # means 0.81, 0.72, 0.63, 0.50, 0.40, 0.30; seed variances (ddof 1) 0.0002, 0.0008,
    # 0.0018, 0, 0, 0.0032: the five best have median 0.0002, all six would give 0.0005
    acc = np.array([[0.80, 0.82], [0.70, 0.74], [0.60, 0.66], [0.50, 0.50], [0.40, 0.40],
                    [0.26, 0.34]])
    assert protocol.NOISE_SETTINGS == 5
    assert protocol.tie_margin(acc, [True] * 6) == pytest.approx(math.sqrt(2 * 0.0002 / 2))
    # the invalid are left out before the best five are taken: 0.0008, 0.0018, 0, 0, 0.0032
    assert protocol.tie_margin(acc, [False] + [True] * 5) == pytest.approx(
        math.sqrt(2 * 0.0008 / 2))
    assert protocol.tie_margin(acc[:, :1], [True] * 6) == 0.0


def test_a_pick_inside_the_noise_goes_to_the_middle_of_the_tied_set():
    """Settings 1..5 are tied within the seed noise; a float-sized change of which one scores
    highest does not move the pick from the middle of the tied set (setting 3)."""
    base = np.array([0.50, 0.880, 0.884, 0.886, 0.883, 0.881, 0.60])
    noise = np.array([-0.01, 0.01])  # seed spread: margin sqrt(2 * 0.0002 / 2) = 0.0141
    loss = np.ones((7, 2))
    diverged = np.zeros((7, 2), bool)
    picks = set()
    for top in range(1, 6):
        acc = base[:, None] + noise[None, :]
        acc[top] += 0.007  # a different setting is the best each time
        pick, tied = protocol.select(acc, loss, diverged, _positions(7))
        assert tied == [1, 2, 3, 4, 5]
        picks.add(pick)
    assert picks == {3}
    # without the tie rule the pick follows the noise
    assert protocol.best_by_score(base[:, None] + noise, loss, diverged) == 3
    acc = base[:, None] + noise
    acc[1] += 0.007
    assert protocol.best_by_score(acc, loss, diverged) == 1


def test_ties_of_distance_go_to_the_higher_accuracy_then_lower_loss():
    acc = np.array([[0.90, 0.90], [0.90, 0.90], [0.50, 0.50]])  # margin 0
    loss = np.array([[0.3, 0.3], [0.2, 0.2], [1.0, 1.0]])
    pick, tied = protocol.select(acc, loss, np.zeros((3, 2), bool), _positions(3))
    assert tied == [0, 1] and pick == 1  # equidistant from 0.5: lower loss
    pick, _ = protocol.select(acc, loss, np.zeros((3, 2), bool), _positions(3), among=[0, 2])
    assert pick == 0
