"""sngrad.analysis: paired statistics against scipy, Holm by hand, exact sign-flip p-values,
selection on validation only, the equal-compute pairing, the training-length criterion; and
every column of the published tables (training length, summary, alpha, control variate,
shrink curves) from hand-made inputs."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sngrad import tables
from sngrad.analysis import outputs, paired, shrink, training_length, tuning
from sngrad.architecture import mlp
from sngrad.errors import SngradError
from sngrad.io import write_frame
from sngrad.layout import Layout
from sngrad.names import parse_run

SEEDS = list(range(1, 11))
EPOCHS = 4


def metrics_frame(final: dict, *, diverged: dict | None = None, dataset="mnist", bs=128):
    """metrics.csv rows: test accuracy ramps linearly to ``final[run][i]`` at the last epoch.

    ``diverged``: {run: {seed: epoch}}; from that epoch on the row is flagged and NaN.
    """
    diverged = diverged or {}
    rows = []
    for run, finals in final.items():
        for seed, acc in zip(SEEDS, finals, strict=True):
            stop = diverged.get(run, {}).get(seed)
            for epoch in range(1, EPOCHS + 1):
                bad = stop is not None and epoch >= stop
                rows.append({
                    "dataset": dataset, "optimizer": run, "batch_size": bs, "seed": seed,
                    "epoch": epoch, "learning_rate": 0.1, "momentum": math.nan,
                    "alpha": math.nan,
                    "train_loss": math.nan if bad else 2.0 / epoch,
                    "val_loss": math.nan if bad else 1.0,
                    "val_accuracy": math.nan if bad else acc * epoch / EPOCHS,
                    "test_loss": math.nan if bad else 1.0,
                    "test_accuracy": math.nan if bad else acc * epoch / EPOCHS,
                    "wall_time": float(epoch), "diverged": bad,
                })  # fmt: skip
                if bad:
                    break  # a diverged run stops recording
    return pd.DataFrame(rows)


RNG = np.random.default_rng(0)
BASE = 0.90 + 0.01 * RNG.standard_normal(10)
WORSE = BASE - 0.02 + 0.003 * RNG.standard_normal(10)  # clearly below the base on every seed
NOISY = BASE + 0.01 * RNG.standard_normal(10)
PAIR = [parse_run("sgd"), parse_run("sgd+sngrad1")]  # a run and its base, parsed


def test_comparisons_pair_runs_with_their_base_when_present():
    runs = [parse_run(run) for run in ("sgd+sngrad1", "adam+sngrad1", "sgd",
                                       "sgd+cv~constant", "sgd~constant")]
    assert paired.comparisons(runs) == [(runs[0], runs[2]), (runs[3], runs[4])]


def test_sign_flip_p_is_exact_for_small_n():
    # +-1 +-2 +-3: sums 6, 4, 2, 0, 0, -2, -4, -6; |sum| >= 6 in 2 of 8 patterns
    assert paired.sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)
    assert paired.sign_flip_p([1.0, -1.0]) == 1.0
    assert paired.sign_flip_p([0.5]) == 1.0
    assert math.isnan(paired.sign_flip_p([]))
    d = np.array([0.3, -0.1, 0.4, 0.2, 0.25, -0.05, 0.15])
    brute = np.mean([
        abs(np.dot(s, d)) >= abs(d.sum()) - 1e-12
        for s in itertools.product([-1, 1], repeat=d.size)
    ])  # fmt: skip
    assert paired.sign_flip_p(d) == pytest.approx(brute, abs=0)
    # scipy's exact paired permutation test agrees
    scipy_p = stats.permutation_test(
        (d,), np.mean, permutation_type="samples", n_resamples=np.inf, alternative="two-sided"
    ).pvalue
    assert paired.sign_flip_p(d) == pytest.approx(scipy_p)
    with pytest.raises(SngradError):
        paired.sign_flip_p(np.ones(paired.MAX_EXACT_PAIRS + 1))


def test_holm_matches_a_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    adjusted = paired.holm([0.01, 0.04, 0.03, 0.005, math.nan])
    np.testing.assert_allclose(adjusted[:4], [0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adjusted[4])
    assert paired.holm([0.5, 0.6]).tolist() == [1.0, 1.0]


def test_paired_table_against_scipy_with_a_diverged_seed(tmp_path):
    runs = ["sgd", "sgd+sngrad1", "sgd+sngrad2"]
    parsed = [parse_run(run) for run in runs]  # as the summary notebook parses them
    metrics = metrics_frame(
        {"sgd": BASE, "sgd+sngrad1": NOISY, "sgd+sngrad2": WORSE},
        diverged={"sgd+sngrad1": {4: 3}},
    )
    # through the files, as the summary notebook reads them
    layout = Layout("t", str(tmp_path))
    for run, rows in metrics.groupby("optimizer"):
        write_frame(layout.run_file("metrics.csv", "mnist", run, 128), rows)
    config = {"train": {"epochs": EPOCHS}, "model": {"hidden": [16]}}
    summary, table, best, _, _ = outputs.dataset_tables(layout, "mnist", parsed, [128], config)
    assert summary.set_index("run").loc["sgd+sngrad1", "n_diverged"] == 1
    pd.testing.assert_frame_equal(best, paired.winners(summary))
    table = table[table["outcome"] == "test_accuracy"]
    row = table[(table["run"] == "sgd+sngrad1") & (table["family"] == "equal_epochs")].iloc[0]
    keep = np.array([s != 4 for s in SEEDS])
    res = stats.ttest_rel(NOISY[keep], BASE[keep])
    assert row["n_seeds"] == 10 and row["n_pairs"] == 9
    assert row["n_diverged_run"] == 1 and row["n_diverged_base"] == 0
    assert row["diff_mean"] == pytest.approx(np.mean(NOISY[keep] - BASE[keep]))
    assert row["p_t"] == pytest.approx(res.pvalue)
    # the interval inverts the sign-flip test at the level Holm tested the row
    family = table[table["family"] == "equal_epochs"]
    level = paired.holm_levels(family["p_signflip"])[list(family["run"]).index("sgd+sngrad1")]
    low, high = paired.sign_flip_interval(NOISY[keep] - BASE[keep], level)
    assert (row["ci_low"], row["ci_high"], row["ci_level"]) == pytest.approx(
        (low, high, 1 - level))
    assert row["p_signflip"] == pytest.approx(paired.sign_flip_p(NOISY[keep] - BASE[keep]))
    assert "diverged" in row["note"]

    worse = table[(table["run"] == "sgd+sngrad2") & (table["family"] == "equal_epochs")].iloc[0]
    assert worse["diff_mean"] < 0
    # all ten differences negative: the exact p is 2 / 1024, Holm over the two tests doubles it
    assert worse["p_signflip"] == pytest.approx(2 / 1024)
    family = table[table["family"] == "equal_epochs"]
    expected = paired.holm(family["p_signflip"])
    np.testing.assert_allclose(family["p_holm"], expected)
    assert worse["verdict"] == "worse"
    assert set(table["verdict"]) <= set(tables.VERDICTS)


def test_a_run_that_diverges_more_is_never_called_better():
    better = BASE + 0.05
    metrics = metrics_frame(
        {"sgd": BASE, "sgd+sngrad1": better}, diverged={"sgd+sngrad1": {1: 2, 2: 2}}
    )
    table = paired.paired_table(metrics, PAIR, [128], dataset="mnist")
    row = table[table["family"] == "equal_epochs"].iloc[0]
    assert row["diff_mean"] > 0 and row["p_holm"] < 0.05
    assert row["verdict"] == "inconclusive"
    assert "not called better" in row["note"]


def budget_frame(values: dict, *, steps=40, per_epoch=10, budget_step=26, bs=128):
    """budget.csv rows of ``values`` = {run: accuracies per seed}; a run at ``budget_step``
    of ``steps``, with a counted cost per step 1.5x its base's (``run_flops``)."""
    base_flops = 1000 * steps
    return pd.DataFrame([
        {"dataset": "mnist", "optimizer": run, "batch_size": bs, "seed": seed, "base": "sgd",
         "budget_step": budget_step, "steps": steps, "budget_epochs": budget_step / per_epoch,
         "budget_flops": base_flops, "run_flops": 1500 * budget_step, "capped": False,
         "val_loss": 1.0, "val_accuracy": acc, "test_loss": 1.0, "test_accuracy": acc,
         "diverged": False}
        for run, accs in values.items() for seed, acc in zip(SEEDS, accs, strict=True)
    ])  # fmt: skip


def test_equal_compute_pairs_the_run_at_its_budget_step_with_the_base_at_the_end():
    metrics = metrics_frame({"sgd": BASE, "sgd+sngrad1": NOISY})
    at_budget = NOISY - 0.05  # the run's accuracy after k* steps, below its final one
    budget = budget_frame({"sgd+sngrad1": at_budget})
    table = paired.paired_table(metrics, PAIR, [128], dataset="mnist",
                                budget=budget)
    row = table[table["family"] == "equal_compute"].iloc[0]
    assert row["epoch_run"] == pytest.approx(2.6) and row["epoch_base"] == EPOCHS
    assert row["cost_run"] == pytest.approx(1.5) and row["cost_base"] == 1.0
    assert row["diff_mean"] == pytest.approx(np.mean(at_budget - BASE))
    assert row["n_pairs"] == len(SEEDS)
    # Holm within the family: one comparison, so the adjusted p is the sign-flip p itself
    assert row["p_holm"] == row["p_signflip"]
    assert set(table["family"]) == {"equal_epochs", "equal_compute"}


def test_equal_compute_verdicts_depend_on_counted_costs_only():
    """Nothing timed enters: the same budget rows give the same table, and a missing budget
    file gives "no final runs" (files missing), never a row short of a timing."""
    metrics = metrics_frame({"sgd": BASE, "sgd+sngrad1": WORSE})
    budget = budget_frame({"sgd+sngrad1": WORSE})
    first = paired.paired_table(metrics, PAIR, [128], dataset="mnist",
                                budget=budget)
    again = paired.paired_table(metrics, PAIR, [128], dataset="mnist",
                                budget=budget.sample(frac=1.0, random_state=3))
    pd.testing.assert_frame_equal(first, again)
    row = first[first["family"] == "equal_compute"].iloc[0]
    assert row["verdict"] == "worse"
    missing = paired.paired_table(metrics, PAIR, [128], dataset="mnist")
    gone = missing[missing["family"] == "equal_compute"].iloc[0]
    assert gone["n_pairs"] == 0 and "missing" in gone["note"]
    assert gone["verdict"] == "inconclusive"


def test_equal_compute_through_the_files_never_reads_a_timing(tmp_path):
    """The summary notebook's path (metrics.csv and budget.csv per run): a benchmark that is
    missing, or present with every row flagged, changes nothing, and no equal-compute row
    lacks its cost or its pairs."""
    runs = ["sgd", "sgd+sngrad1", "sgd+sngrad2"]
    parsed = [parse_run(run) for run in runs]  # as the summary notebook parses them
    finals = {"sgd": BASE, "sgd+sngrad1": NOISY, "sgd+sngrad2": WORSE}
    layout = Layout("t", str(tmp_path))
    for run, rows in metrics_frame(finals).groupby("optimizer"):
        write_frame(layout.run_file("metrics.csv", "mnist", run, 128), rows)
    # the base's own row sits at its last step (k* = E S), the runs 1.5x dearer at step 26
    for run, rows in budget_frame({"sgd": BASE}, budget_step=40).groupby("optimizer"):
        write_frame(layout.run_file("budget.csv", "mnist", run, 128),
                    rows.assign(run_flops=1000 * 40))
    for run, rows in budget_frame({"sgd+sngrad1": NOISY - 0.01,
                                   "sgd+sngrad2": WORSE - 0.01}).groupby("optimizer"):
        write_frame(layout.run_file("budget.csv", "mnist", run, 128), rows)
    config = {"train": {"epochs": EPOCHS}, "model": {"hidden": [16]}}
    _, without, _, _, _ = outputs.dataset_tables(layout, "mnist", parsed, [128], config)
    write_frame(layout.benchmark(), pd.DataFrame([
        {"network": "784-16-10", "batch_size": 128, "method": run, "median_ms": math.nan,
         "spread": math.nan, "sgd_ms": math.nan, "ratio": math.nan,
         "flag": "reference off by more than the spread"} for run in runs]))
    _, flagged, _, _, _ = outputs.dataset_tables(layout, "mnist", parsed, [128], config)
    pd.testing.assert_frame_equal(without, flagged)
    compute = without[without["family"] == "equal_compute"].set_index("run")
    assert list(compute.index) == ["sgd+sngrad1", "sgd+sngrad2"]
    assert (compute["n_pairs"] == len(SEEDS)).all() and (compute["note"] == "").all()
    assert compute["cost_run"].tolist() == pytest.approx([1.5, 1.5])
    assert compute["epoch_run"].tolist() == pytest.approx([2.6, 2.6])
    worse = compute.loc["sgd+sngrad2"]
    assert worse["diff_mean"] == pytest.approx(np.mean(WORSE - 0.01 - BASE))
    # every difference negative: exact p 2 / 1024, the family's smallest of two, so Holm
    # multiplies it by 2
    assert worse["p_signflip"] == pytest.approx(2 / 1024)
    assert worse["p_holm"] == pytest.approx(4 / 1024)
    assert worse["verdict"] == "worse"
    assert set(without["family"]) == set(tables.FAMILIES)


def test_paired_table_copes_with_a_run_without_files():
    metrics = metrics_frame({"sgd": BASE})
    table = paired.paired_table(metrics, PAIR, [128], dataset="mnist")
    row = table[table["family"] == "equal_epochs"].iloc[0]
    assert row["n_pairs"] == 0 and math.isnan(row["diff_mean"])
    assert row["verdict"] == "inconclusive" and "missing" in row["note"]


def tuning_frame(rows):
    """tuning.csv rows from (setting, lr, alpha_scaled, seed, val_acc, val_loss, diverged)."""
    return pd.DataFrame([
        {"dataset": "mnist", "optimizer": "sgd+sngrad1", "batch_size": 128, "setting": s,
         "learning_rate": lr, "momentum": math.nan, "alpha": a / 2, "alpha_scaled": a,
         "seed": seed, "val_accuracy": acc, "val_loss": loss, "train_loss": loss,
         "diverged": div, "chosen": False, "round": 0}
        for s, lr, a, seed, acc, loss, div in rows
    ])  # fmt: skip


def test_alpha_line_best_uses_the_mean_over_seeds_then_validation_loss():
    trials = tuning_frame([
        # seeds disagree: seed 100 prefers setting 0, seed 101 setting 1; means tie at 0.8
        (0, 0.1, 1.0, 100, 0.90, 0.50, False), (0, 0.1, 1.0, 101, 0.70, 0.70, False),
        (1, 0.1, 3.0, 100, 0.75, 0.40, False), (1, 0.1, 3.0, 101, 0.85, 0.40, False),
        # best mean accuracy but one seed diverged: excluded
        (2, 0.3, 1.0, 100, 0.99, 0.10, False), (2, 0.3, 1.0, 101, math.nan, math.nan, True),
        (3, 0.3, 3.0, 100, 0.50, 2.00, False), (3, 0.3, 3.0, 101, 0.50, 2.00, False),
    ])  # fmt: skip
    trials["chosen"] = trials["setting"] == 1  # the tune command's pick
    settings = tuning.tuning_settings(trials)
    assert settings.loc[tuning.chosen_setting(settings), "setting"] == 1
    best = settings.loc[tuning.select_best(settings)]
    assert best["setting"] == 1  # equal mean accuracy, lower validation loss
    assert settings.loc[tuning.select_worst(settings), "setting"] == 3
    # a full tie falls to grid order
    tie = tuning.tuning_settings(tuning_frame([
        (0, 0.1, 1.0, 100, 0.8, 0.5, False), (1, 0.3, 1.0, 100, 0.8, 0.5, False),
    ]))  # fmt: skip
    assert tie.loc[tuning.select_best(tie), "setting"] == 0
    # all diverged: nothing to choose
    dead = tuning.tuning_settings(tuning_frame([(0, 0.1, 1.0, 100, math.nan, math.nan, True)]))
    assert tuning.select_best(dead) is None

    # the alpha line is the pick's, not the best score's: picking setting 3 gives lr 0.3's line
    moved = tuning.tuning_settings(trials.assign(chosen=trials["setting"] == 3))
    assert tuning.alpha_table(moved)["learning_rate"].tolist() == [0.3, 0.3]
    alpha = tuning.alpha_table(settings)
    # the line at the chosen learning rate (0.1): alphas 1 and 3, best 3, worst 1
    assert alpha["alpha_scaled"].tolist() == [1.0, 3.0]
    assert alpha[alpha["best"]]["alpha_scaled"].item() == 3.0
    assert alpha[alpha["worst"]]["alpha_scaled"].item() == 1.0
    summary = tuning.alpha_summary(alpha).iloc[0]
    assert summary["spread"] == pytest.approx(0.0)
    lr = tuning.lr_summary(settings, pd.DataFrame()).iloc[0]
    assert lr["settings"] == 4 and lr["diverged_settings"] == 1
    assert lr["chosen_learning_rate"] == 0.1 and lr["chosen_position"] == "low end"
    curve = tuning.lr_curve(settings)
    assert curve["val_accuracy"].tolist() == pytest.approx([0.8, 0.5])


def test_training_length_criterion():
    # train loss 2 / epoch: L1 = 2, L4 = 0.5, the last quarter (1 epoch) falls 0.1667 of 1.5
    metrics = metrics_frame({"sgd": BASE, "sgd+sngrad1": BASE})
    table = training_length.training_length(metrics)
    assert table["optimizer"].tolist() == ["sgd"]
    row = table.iloc[0]
    assert row["quarter"] == 1
    assert row["share_last_quarter"] == pytest.approx((2 / 3 - 0.5) / 1.5)
    assert not row["met"]
    assert training_length.training_length(metrics, flat_share=0.2).iloc[0]["met"]


def test_curves_drop_diverged_seeds_instead_of_zeros():
    metrics = metrics_frame({"sgd": BASE}, diverged={"sgd": {1: 2}})
    curve = training_length.curves(metrics, "val_accuracy")
    last = curve[curve["epoch"] == EPOCHS].iloc[0]
    assert last["n"] == 9 and last["n_diverged"] == 1
    assert last["mean"] == pytest.approx(BASE[1:].mean())
    assert training_length.divergence_epochs(metrics)["epoch"].tolist() == [2]


def test_summary_table_counts_diverged_seeds_and_missing_runs():
    metrics = metrics_frame({"sgd": BASE}, diverged={"sgd": {3: 1}})
    best = pd.DataFrame([{"run": "sgd", "batch_size": 128, "learning_rate": 0.1,
                          "all_diverged": False, "at_bound": True}])  # fmt: skip
    table = paired.summary_table(best, metrics, PAIR, [128], dataset="mnist")
    sgd = table[table["run"] == "sgd"].iloc[0]
    assert sgd["n_diverged"] == 1 and sgd["at_bound"]
    keep = np.array([s != 3 for s in SEEDS])
    assert sgd["test_accuracy_mean"] == pytest.approx(BASE[keep].mean())
    assert sgd["test_accuracy_std"] == pytest.approx(BASE[keep].std(ddof=1))
    missing = table[table["run"] == "sgd+sngrad1"].iloc[0]
    assert missing["n_seeds"] == 0 and math.isnan(missing["test_accuracy_mean"])


def test_shrink_and_control_variate_summaries():
    rows = []
    for layer, factor, share in [("0", 0.5, 0.8), ("1", 0.9, 0.2)]:
        for epoch in (1, 2):
            rows.append({"dataset": "mnist", "optimizer": "sgd+sngrad2", "batch_size": 128,
                         "seed": 1, "epoch": epoch, "layer": layer, "factor_mean": factor,
                         "shrink_share": share * epoch / 2})  # fmt: skip
    diag = pd.DataFrame(rows)
    table = shrink.shrink_summary(diag)
    whole = table[table["layer"] == "all"].iloc[0]
    assert whole["factor_mean"] == pytest.approx(0.7)
    assert whole["shrink_last"] == pytest.approx(0.5)
    assert whole["shrink_first"] == pytest.approx(0.25)
    weighted = shrink.shrink_summary(diag, {"mnist": shrink.layer_weights(mlp([4, 3, 2]))})
    # layer 0 has 4 x 3 = 12 weights, layer 1 has 3 x 2 = 6
    whole = weighted[weighted["layer"] == "all"].iloc[0]
    assert whole["factor_mean"] == pytest.approx((0.5 * 12 + 0.9 * 6) / 18)
    assert whole["shrink_last"] == pytest.approx((0.8 * 12 + 0.2 * 6) / 18)
    # files without the control-variate columns give no control-variate rows
    assert shrink.control_variate_summary(diag).empty
    cv = diag.assign(optimizer="sgd+cv", lambda_median=0.8, variance_ratio=[0.5, 0.3] * 2)
    summary = shrink.control_variate_summary(cv).iloc[0]
    assert summary["variance_ratio_first"] == pytest.approx(0.5)
    assert summary["variance_ratio_last"] == pytest.approx(0.3)


def _groups(*runs):
    """run_groups of the parsed runs, by name."""
    groups = outputs.run_groups([parse_run(run) for run in runs])
    return {group: [run.name for run in members] for group, members in groups.items()}


def test_run_groups_keep_each_base_with_its_variants():
    groups = _groups("sgd", "sgd+sngrad1", "svag", "sgd+cv", "momentum", "momentum+sngrad1",
                     "adam", "adabelief", "sgd+sngrad2@0.05")
    assert groups == {
        "sgd and its noise-informed variants": ["sgd", "sgd+sngrad1", "sgd+sngrad2@0.05"],
        "sgd and its relatives": ["sgd", "svag", "sgd+cv"],
        "momentum and its variants": ["momentum", "momentum+sngrad1"],
        "adam and its relatives": ["adam", "adabelief"],
    }
    assert _groups("sgd", "adam") == {"all runs": ["sgd", "adam"]}
    # a base without variants keeps a group of its own; sgd is drawn once
    assert _groups("sgd", "sgd+sngrad1", "momentum") == {
        "sgd and its noise-informed variants": ["sgd", "sgd+sngrad1"],
        "momentum and its variants": ["momentum"],
    }


# ----------------------------------------------------------------------------- flagged budgets


def test_budget_rows_flag_a_seed_only_if_it_diverged_by_the_budget_epoch():
    """``budget.csv``'s ``diverged`` is the run's flag at the end of the epoch that holds step
    k*: a seed that diverged before k* is flagged, one that diverged only after is not. Catches
    the flag taken from the last epoch (both flagged) or from the epoch before (neither)."""
    from sngrad import costs
    from sngrad.names import parse_run
    from sngrad.train.commands import budget_rows

    budget = costs.budget_step(parse_run("sgd+svrg"), [3, 2, 2], 10, 4, 3)
    assert (budget.step, budget.steps_per_epoch) == (1, 2)  # k* = 1 lies in epoch 1 of 3
    diverged = np.array([[True, False, False],    # epoch 1: seed 1 diverged before k*'s end
                         [True, True, False],     # epoch 2: seed 2 diverged after k*
                         [True, True, True]])     # epoch 3: seed 3 too
    values = {f"{s}_{m}": np.array([0.5, 0.6, 0.7]) for s in ("val", "test")
              for m in ("loss", "accuracy")}
    rows = budget_rows({"dataset": "toy", "optimizer": "sgd+svrg", "batch_size": 4}, [1, 2, 3],
                       budget, values, diverged)
    assert [r["diverged"] for r in rows] == [True, False, False]
    assert [r["budget_step"] for r in rows] == [1, 1, 1]


def test_a_flagged_budget_seed_leaves_the_pairs_and_counts_as_diverged():
    """In the equal-compute family a seed flagged in budget.csv has no pair and is counted in
    n_diverged_run; the run is then never called better (it diverged more than its base), while
    its equal-epochs row, where the seed did not diverge, keeps all ten pairs."""
    metrics = metrics_frame({"sgd": BASE, "sgd+sngrad1": BASE + 0.05})
    budget = budget_frame({"sgd+sngrad1": BASE + 0.04})
    budget.loc[budget["seed"] == 3, "diverged"] = True
    budget.loc[budget["seed"] == 3, "test_accuracy"] = 0.99  # a finite value that must not count
    table = paired.paired_table(metrics, PAIR, [128], dataset="mnist",
                                budget=budget)
    table = table[table["outcome"] == "test_accuracy"]
    compute = table[table["family"] == "equal_compute"].iloc[0]
    assert (compute["n_pairs"], compute["n_diverged_run"], compute["n_diverged_base"]) == (9, 1, 0)
    assert compute["diff_mean"] == pytest.approx(0.04)
    assert compute["p_holm"] < 0.05 and compute["verdict"] == "inconclusive"
    assert "not called better" in compute["note"]
    epochs = table[table["family"] == "equal_epochs"].iloc[0]
    assert (epochs["n_pairs"], epochs["n_diverged_run"], epochs["verdict"]) == (10, 0, "better")


# ----------------------------------------------------------------------------- table columns
# Every column of the training-length table, from a hand-made metrics table.
#
# The criterion (module docstring of sngrad.analysis): a base optimizer's cell has trained long
# enough when its mean training loss over the final seeds fell, over the last quarter of the
# epochs (ceil(E / 4) of them), by at most FLAT_SHARE of its total decrease from the first to
# the last epoch. the tests above check the share and the verdict; here each number the
# table publishes (training_length.csv) is checked against the hand computation.

LENGTH_EPOCHS = 7  # quarter = ceil(7 / 4) = 2 epochs
LENGTH_LOSS = {1: [2.0, 2.4, 9.0], 5: [1.0, 1.2, 9.0], 7: [0.9, 1.1, 9.0]}  # three seeds


def _length_metrics():
    rows = []
    for seed in (1, 2, 3):
        for epoch in range(1, LENGTH_EPOCHS + 1):
            loss = LENGTH_LOSS.get(epoch, [1.5, 1.5, 9.0])[seed - 1]
            diverged = seed == 3  # diverged from epoch 1: never averaged in
            rows.append({
                "dataset": "mnist", "optimizer": "sgd", "batch_size": 64, "seed": seed,
                "epoch": epoch, "train_loss": loss, "diverged": diverged,
            })
    # a non-base run: no row of its own
    rows += [{**r, "optimizer": "sgd+sngrad1"} for r in rows]
    return pd.DataFrame(rows)


def test_training_length_table_holds_the_hand_computed_numbers():
    """Catches a column filled from the wrong quantity or left empty (e.g. a misspelt key
    that pandas turns into NaN), a quarter rounded down instead of up, a diverged seed
    averaged in, a first epoch taken as 0, and the verdict compared the wrong way."""
    table = training_length.training_length(_length_metrics())
    assert list(table.columns) == training_length.TRAINING_LENGTH_COLUMNS
    assert len(table) == 1
    row = table.iloc[0].to_dict()
    first, mid, last = 2.2, 1.1, 1.0  # means over seeds 1 and 2 at epochs 1, 5 and 7
    expected = {
        "dataset": "mnist", "optimizer": "sgd", "batch_size": 64, "epochs": LENGTH_EPOCHS,
        "quarter": 2, "loss_first": first, "loss_quarter": mid, "loss_last": last,
        "decrease_total": first - last, "decrease_last_quarter": mid - last,
        "share_last_quarter": (mid - last) / (first - last),
        "criterion": tables.FLAT_SHARE, "met": True,
    }
    for name, value in expected.items():
        if isinstance(value, float):
            assert row[name] == pytest.approx(value), name
        else:
            assert row[name] == value, name
    assert (mid - last) / (first - last) <= tables.FLAT_SHARE  # 0.083: met
    stricter = training_length.training_length(_length_metrics(), flat_share=0.08).iloc[0]
    assert not stricter["met"] and math.isclose(stricter["criterion"], 0.08)


def test_summary_table_copies_the_chosen_setting_of_its_own_cell():
    """Each summary row carries the best.json values of its own (run, batch size): catches a
    field dropped or misspelt (NaN in summary.csv, e.g. the alpha of a tuned sngrad run), and
    values taken from another run's or batch size's best.json."""
    best = pd.DataFrame([
        {"run": run, "batch_size": bs, "learning_rate": lr, "momentum": math.nan,
         "alpha": alpha, "alpha_scaled": scaled, "val_accuracy": acc,
         "all_diverged": False, "at_bound": bs == 128}
        for run, bs, lr, alpha, scaled, acc in [
            ("sgd", 64, 0.1, math.nan, math.nan, 0.91),
            ("sgd+sngrad1", 64, 0.3, 25.0, 0.5, 0.93),
            ("sgd+sngrad1", 128, 0.03, 50.0, 1.0, 0.92),
        ]
    ])
    metrics = pd.concat([_length_metrics().assign(optimizer=run, batch_size=bs,
                                           test_accuracy=0.5, val_accuracy=0.5)
                         for run, bs in [("sgd", 64), ("sgd+sngrad1", 64), ("sgd+sngrad1", 128)]])
    table = paired.summary_table(best, metrics, [parse_run("sgd"),
                                                  parse_run("sgd+sngrad1")], [64, 128],
                                   dataset="mnist")
    for _, want in best.iterrows():
        got = table[(table["run"] == want["run"]) & (table["batch_size"] == want["batch_size"])]
        assert len(got) == 1
        got = got.iloc[0]
        for name in ("learning_rate", "alpha", "alpha_scaled", "val_accuracy"):
            assert got[name] == pytest.approx(want[name], nan_ok=True), (want["run"], name)
        assert got["at_bound"] == want["at_bound"] and got["base"] == (
            "sgd" if want["run"] == "sgd+sngrad1" else "")
    missing = table[(table["run"] == "sgd") & (table["batch_size"] == 128)].iloc[0]
    assert math.isnan(missing["learning_rate"]) and missing["n_seeds"] == 0


def test_alpha_table_carries_each_settings_validation_loss():
    """alpha_sensitivity.csv has a val_loss column holding each alpha's own mean validation
    loss: catches the value stored under a misspelt key (pandas then fills the published
    column with NaN) or taken from another row."""
    rows = [  # (setting, learning rate, alpha, scale-free alpha, val acc, val loss, diverged)
        (0, 0.1, 25.0, 0.5, 0.90, 0.31, False),
        (1, 0.1, 50.0, 1.0, 0.93, 0.22, False),
        (2, 0.1, 100.0, 2.0, 0.80, 0.64, False),
        (3, 0.1, 200.0, 4.0, math.nan, math.nan, True),
        (4, 0.01, 50.0, 1.0, 0.85, 0.45, False),  # another learning rate: not in the table
    ]
    settings = pd.DataFrame([
        {"dataset": "mnist", "optimizer": "sgd+sngrad1", "batch_size": 64, "setting": s,
         "learning_rate": lr, "alpha": a, "alpha_scaled": sa, "val_accuracy": acc,
         "val_loss": loss, "diverged": div, "order": s, "chosen": s == 1}
        for s, lr, a, sa, acc, loss, div in rows
    ])
    table = tuning.alpha_table(settings)
    assert list(table.columns) == tuning.ALPHA_COLUMNS
    assert list(table["alpha_scaled"]) == [0.5, 1.0, 2.0, 4.0]
    assert table["val_loss"].tolist()[:3] == pytest.approx([0.31, 0.22, 0.64])
    assert math.isnan(table["val_loss"].iloc[3])  # the diverged alpha has no loss
    assert table["chosen"].tolist() == [False, True, False, False]
    assert table["best"].tolist() == [False, True, False, False]
    assert table["worst"].tolist() == [False, False, True, False]


def test_control_variate_summary_averages_the_variance_ratio_per_epoch():
    """The mean variance ratio is the mean over epochs of each epoch's mean (over seeds and
    layers), next to the first and last epoch's: catches the ratio stored under a misspelt
    key (NaN in control_variates.csv and a report that says "reduces: no" for every run),
    and the mean taken over all rows at once (0.38 here, not 0.4)."""
    ratio = {1: [0.4, 0.6], 2: [0.2, 0.2, 0.5]}  # epoch means 0.5 and 0.3
    lam = {1: [1.0, 3.0], 2: [0.5, 0.5, 2.0]}  # epoch means 2.0 and 1.0
    diagnostics = pd.DataFrame(
        [{"dataset": "mnist", "optimizer": "sgd+cv", "batch_size": 64, "seed": i,
          "layer": "0", "epoch": epoch, "variance_ratio": r, "lambda_median": lam[epoch][i]}
         for epoch, values in ratio.items() for i, r in enumerate(values)]
        # a run without a control variate: NaN in both columns, no row
        + [{"dataset": "mnist", "optimizer": "sgd", "batch_size": 64, "seed": 0, "layer": "0",
            "epoch": 1, "variance_ratio": math.nan, "lambda_median": math.nan}]
    )
    table = shrink.control_variate_summary(diagnostics)
    assert list(table.columns) == shrink.CV_COLUMNS
    assert table["optimizer"].tolist() == ["sgd+cv"]
    row = table.iloc[0]
    assert row["variance_ratio"] == pytest.approx(0.4)
    assert row["variance_ratio_first"] == pytest.approx(0.5)
    assert row["variance_ratio_last"] == pytest.approx(0.3)
    assert row["lambda_median"] == pytest.approx(1.5)
    assert (row["lambda_first"], row["lambda_last"]) == pytest.approx((2.0, 1.0))


@pytest.mark.parametrize("empty", [
    pd.DataFrame(),  # no diagnostics at all
    pd.DataFrame([{"dataset": "mnist", "optimizer": "sgd", "batch_size": 64, "seed": 1,
                   "layer": "0", "epoch": 1}]),  # a file without the factor columns
])
def test_shrink_curves_without_factors_keeps_the_columns(empty):
    """With no factor to show, shrink_curves still returns its full schema, the same column
    names as with factors: catches a misspelt column of the empty table, which breaks any
    reader that selects ``factor_mean`` from it (KeyError instead of no line)."""
    full = shrink.shrink_curves(pd.DataFrame([
        {"dataset": "mnist", "optimizer": "sgd+sngrad1", "batch_size": 64, "seed": s,
         "layer": "0", "epoch": 1, "factor_mean": f, "shrink_share": 0.5}
        for s, f in [(1, 0.8), (2, 0.6)]
    ]))
    assert full["factor_mean"].tolist() == pytest.approx([0.7])
    got = shrink.shrink_curves(empty)
    assert got.empty
    assert list(got.columns) == list(full.columns) == [
        "dataset", "optimizer", "batch_size", "layer", "epoch", "factor_mean", "shrink_share"]
    assert got[["factor_mean", "shrink_share"]].empty
