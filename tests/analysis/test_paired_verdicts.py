"""Verdicts a referee can trust: no-op runs set apart, intervals that agree with the verdicts,
the smallest detectable effect, and the training-loss outcome (sngrad.analysis.paired)."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sngrad.analysis import paired
from sngrad.names import parse_run
from sngrad.tables import NO_OP, PAIRED_COLUMNS


def _metrics(values: dict, epochs: int = 3) -> pd.DataFrame:
    """metrics.csv rows: values[(run, seed)] = (test accuracy, train loss) at the last epoch;
    earlier epochs hold the same numbers."""
    rows = []
    for (run, seed), (acc, loss) in values.items():
        for epoch in range(1, epochs + 1):
            rows.append({"dataset": "toy", "optimizer": run, "batch_size": 16, "seed": seed,
                         "epoch": epoch, "test_accuracy": acc, "train_loss": loss,
                         "val_accuracy": acc, "diverged": False})
    return pd.DataFrame(rows)


SEEDS = range(1, 11)
RNG = np.random.default_rng(7)
BASE = {("sgd", s): (0.90 + 0.002 * s, 0.30 - 0.003 * s) for s in SEEDS}


def _table(runs: dict, factors=None) -> pd.DataFrame:
    values = dict(BASE)
    for run, shift in runs.items():
        for s in SEEDS:
            acc, loss = BASE[("sgd", s)]
            values[(run, s)] = shift(s, acc, loss)
    parsed = [parse_run(run) for run in ("sgd", *runs)]
    return paired.paired_table(_metrics(values), parsed, [16], dataset="toy",
                               factors=factors or {})


def test_no_op_runs_are_flagged_and_left_out_of_every_family():
    """An identical run and a run of mean factor 0.995 are no-ops; a factor-0.9 run that is
    clearly better is not, and the family it is tested in has one member fewer."""
    table = _table({
        "sgd+sngrad1@0.1": lambda s, acc, loss: (acc, loss),  # identical to sgd
        "sgd+sngrad3": lambda s, acc, loss: (acc + 0.01 + 0.001 * (s % 3), loss - 0.01),
        "sgd+sngrad2": lambda s, acc, loss: (acc + 0.02 + 0.001 * (s % 2), loss - 0.02),
    }, factors={("sgd+sngrad3", 16): 0.995, ("sgd+sngrad2", 16): 0.9})
    assert list(table.columns) == PAIRED_COLUMNS
    flags = table.groupby("run")["no_op"].first().to_dict()
    assert flags == {"sgd+sngrad1@0.1": True, "sgd+sngrad3": True, "sgd+sngrad2": False}
    noop = table[table["no_op"]]
    assert set(noop["verdict"]) == {NO_OP} and noop["p_holm"].isna().all()
    assert noop["ci_low"].isna().all()
    # the no-op rows keep their statistics
    assert noop[noop["run"] == "sgd+sngrad3"]["diff_mean"].gt(0).any()
    real = table[~table["no_op"]]
    # alone in its family, sgd+sngrad2's Holm p is its own p (m = 1)
    np.testing.assert_allclose(real["p_holm"], real["p_signflip"])
    acc = real[(real["outcome"] == "test_accuracy") & (real["family"] == "equal_epochs")]
    assert acc["verdict"].item() == "better"
    loss = real[real["outcome"] == "train_loss"]
    assert loss["verdict"].item() == "better" and loss["diff_mean"].item() < 0
    assert table.loc[table["run"] == "sgd+sngrad2", "mean_factor"].iloc[0] == 0.9


def test_a_lower_training_loss_is_better_and_a_higher_worse():
    table = _table({"sgd+cv": lambda s, acc, loss: (acc, loss + 0.05 + 0.001 * s)})
    loss = table[table["outcome"] == "train_loss"]
    assert loss["verdict"].item() == "worse"
    acc = table[(table["outcome"] == "test_accuracy") & (table["family"] == "equal_epochs")]
    assert acc["verdict"].item() == "inconclusive"  # identical accuracy, different loss
    assert not table["no_op"].any()


def _shift(effect, noise):
    return lambda s, acc, loss: (acc + effect + noise[s - 1], loss - effect + noise[s - 1] / 2)


def test_the_interval_agrees_with_the_verdict_on_every_row():
    """A synthetic family of 12 runs with effects from none to large and 10 seeds: every
    'better' / 'worse' row has an interval beside zero on its side, every 'inconclusive' row
    one across zero; the interval is the sign-flip inversion at the row's Holm level."""
    effects = [0.0, 0.0005, 0.001, 0.002, 0.003, 0.004, 0.006, 0.01, -0.002, -0.004, -0.01, 0.0]
    runs = {}
    names = ["svag", "msvag", "sgd+cv", "sgd+svrg", "sgd+sngrad1", "sgd+sngrad2", "sgd+sngrad3",
             "sgd+sngrad1@0.1", "sgd+sngrad2@0.05", "sgd+sngrad3@0.1", "sgd+sngrad1@1",
             "sgd+sngrad3@1"]
    for name, effect in zip(names, effects, strict=True):
        noise = RNG.normal(0, 0.003, size=len(SEEDS))
        runs[name] = _shift(effect, noise)
    table = _table(runs)
    assert not table["no_op"].any()
    checked = 0
    # no budget.csv here: the equal-compute rows have no pairs, no interval and no verdict
    compute = table[table["family"] == "equal_compute"]
    assert (compute["n_pairs"] == 0).all() and compute["ci_low"].isna().all()
    assert set(compute["verdict"]) == {"inconclusive"}
    for _, r in table[table["family"] == "equal_epochs"].iterrows():
        assert np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"])
        higher = r["outcome"] == "test_accuracy"
        if r["verdict"] == "inconclusive":
            assert r["ci_low"] <= 0 <= r["ci_high"], r.to_dict()
        elif (r["verdict"] == "better") == higher:
            assert r["ci_low"] > 0, r.to_dict()
        else:
            assert r["ci_high"] < 0, r.to_dict()
        checked += 1
    assert checked == 24 and set(table["verdict"]) >= {"better", "worse", "inconclusive"}
    # the level is the one Holm tested the row at: 1 - 0.05 / (m - rank + 1) or where it stopped
    fam = table[(table["family"] == "equal_epochs") & (table["outcome"] == "test_accuracy")]
    levels = paired.holm_levels(fam["p_signflip"])
    np.testing.assert_allclose(fam["ci_level"], 1 - levels)
    assert set(np.round(0.05 / (1 - fam["ci_level"]), 6)) <= set(range(1, 13))


def test_holm_levels_reject_exactly_what_holm_rejects():
    for _ in range(200):
        p = RNG.uniform(0, 0.02, size=8) ** RNG.uniform(0.5, 2)
        p[RNG.integers(0, 8)] = math.nan
        levels = paired.holm_levels(p)
        adjusted = paired.holm(p)
        ok = np.isfinite(p)
        assert np.array_equal(p[ok] < levels[ok], adjusted[ok] < 0.05)
        assert np.isnan(levels[~ok]).all()


def test_sign_flip_interval_is_the_set_where_the_test_does_not_reject():
    """Against a direct search: p(d - delta) of sngrad's own sign-flip test on a grid of
    shifts; the interval's ends are where it crosses the level."""
    d = np.array([0.012, -0.004, 0.007, 0.015, 0.001, 0.009, -0.002, 0.011])
    for level in (0.05, 0.01, 0.05 / 3):
        low, high = paired.sign_flip_interval(d, level)
        assert low < d.mean() < high
        grid = np.linspace(low - 0.01, high + 0.01, 801)
        inside = [paired.sign_flip_p(d - delta) >= level for delta in grid]
        for delta, accepted in zip(grid, inside, strict=True):
            if abs(delta - low) > 1e-9 and abs(delta - high) > 1e-9:
                assert accepted == (low <= delta <= high), (level, delta)
    # tied differences (accuracies in steps of 1/N) put an end exactly at zero: it stays there,
    # and zero is inside, as the test at zero does not reject
    ties = np.array([0.02, 0.02, -0.02, 0.0, 0.02, 0.02, 0.04, -0.02, 0.02, 0.0]) / 3
    for level in (0.05, 0.01, 0.05 / 4, 0.2):
        low, high = paired.sign_flip_interval(ties, level)
        rejects = paired.sign_flip_p(ties) < level
        assert (low > 0 or high < 0) == rejects, (level, low, high)
    # below the smallest p of 8 pairs (2/256) nothing is ever rejected: unbounded
    assert paired.sign_flip_interval(d, 0.005) == (-math.inf, math.inf)
    assert all(math.isnan(v) for v in paired.sign_flip_interval(d[:1], 0.05))


def test_detectable_effect_has_the_stated_power_by_the_noncentral_t():
    """The formula against a direct power computation: a two-sided paired t-test at level
    0.05 / m with n pairs and spread s, noncentral t with noncentrality effect sqrt(n) / s."""
    for n, m, s in ((10, 13, 0.004), (20, 13, 0.004), (20, 1, 0.01), (10, 4, 0.5)):
        effect = paired.detectable_effect(s, n, m)
        a = 0.05 / m
        crit = stats.t.ppf(1 - a / 2, n - 1)
        nc = effect * math.sqrt(n) / s
        power = stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc)
        assert power == pytest.approx(0.8, abs=0.03), (n, m, power)
    # with 5 pairs the sign-flip test's smallest p is 2/32 > 0.05: nothing is detectable
    assert paired.detectable_effect(0.01, 5, 1) == math.inf
    assert math.isnan(paired.detectable_effect(math.nan, 10, 3))


def test_the_family_states_its_detectable_effect_from_its_median_spread():
    def shifted(k):
        return lambda s, acc, loss: (acc + 0.001 * k * (s % 3), loss)

    table = _table({name: shifted(k)
                    for k, name in enumerate(["svag", "sgd+cv", "sgd+svrg"], start=1)})
    fam = table[(table["family"] == "equal_epochs") & (table["outcome"] == "test_accuracy")]
    expected = paired.detectable_effect(fam["diff_std"].median(), 10, 3)
    np.testing.assert_allclose(fam["detectable"], expected)


def test_winners_leave_no_op_runs_out():
    summary = pd.DataFrame([
        {"dataset": "toy", "run": r, "batch_size": 16, "val_accuracy_final": v}
        for r, v in (("sgd", 0.90), ("sgd+sngrad3", 0.95), ("sgd+cv", 0.92))])
    assert paired.winners(summary)["run"].tolist() == ["sgd+sngrad3"]
    assert paired.winners(summary, [("sgd+sngrad3", 16)])["run"].tolist() == ["sgd+cv"]


def test_every_pair_of_sign_patterns_is_enumerated_once():
    rows = np.concatenate(list(paired._sign_patterns(5)))
    assert rows.shape == (32, 5)
    assert len({tuple(r) for r in rows}) == 32
    assert set(itertools.chain.from_iterable(rows)) == {-1.0, 1.0}
