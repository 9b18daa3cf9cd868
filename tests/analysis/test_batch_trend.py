"""The study over batch sizes: the per-seed change of a paired difference from the smallest to
the largest batch size, the learning-rate scaling exponent, and the report's reading of both."""

import math

import numpy as np
import pandas as pd
import pytest

from sngrad.analysis import batch_trend
from sngrad.io import write_frame
from sngrad.layout import NOISE_SUMMARY, Layout
from sngrad.names import parse_run
from sngrad.report import batch_sizes as section
from sngrad.tables import TREND_DIRECTIONS

LARGER, SMALLER, UNCHANGED = TREND_DIRECTIONS
SEEDS = range(1, 9)  # 8 pairs: the smallest sign-flip p is 2 / 256, below 0.05
PAIR = [parse_run("sgd"), parse_run("sgd+sngrad1")]  # a run and its base, parsed


def metrics(gain_low, gain_high, *, loss_gain_high=0.0, diverged=()):
    """Final-epoch metrics of sgd and sgd+sngrad1 at B = 32 and 256: the run's accuracy is the
    base's plus ``gain_*`` (plus a per-seed wobble), its loss the base's minus ``loss_gain_high``
    at B = 256. ``diverged``: (run, B, seed) flagged as diverged."""
    rng = np.random.default_rng(0)
    rows = []
    for b, gain in ((32, gain_low), (256, gain_high)):
        for s in SEEDS:
            base_acc, base_loss = 0.9 + 0.01 * rng.standard_normal(), 0.3
            wobble = 0.001 * rng.standard_normal()
            for run, acc, loss in (
                ("sgd", base_acc, base_loss),
                ("sgd+sngrad1", base_acc + gain + wobble,
                 base_loss - (loss_gain_high if b == 256 else 0.0) + wobble),
            ):
                rows.append({"optimizer": run, "batch_size": b, "seed": s, "epoch": 5,
                             "test_accuracy": acc, "train_loss": loss,
                             "diverged": (run, b, s) in diverged})
    return pd.DataFrame(rows)


def trend(frame, **kw):
    table = batch_trend.batch_trend(frame, PAIR, [256, 32], dataset="d",
                                    primary="cosine", **kw)
    return {r["outcome"]: r for r in table.to_dict("records")}


def test_a_gain_that_appears_at_the_large_batch_is_a_larger_gain():
    rows = trend(metrics(0.0, 0.02))
    acc = rows["test_accuracy"]
    assert (acc["batch_size_low"], acc["batch_size_high"]) == (32, 256)
    assert acc["n_pairs"] == 8
    assert acc["diff_low"] == pytest.approx(0.0, abs=2e-3)
    assert acc["diff_high"] == pytest.approx(0.02, abs=2e-3)
    assert acc["change_mean"] == pytest.approx(acc["diff_high"] - acc["diff_low"])
    assert 0 < acc["change_low"] < acc["change_mean"] < acc["change_high"]
    assert acc["p_change"] == pytest.approx(2 / 256)
    assert acc["direction"] == LARGER
    assert acc["schedule"] == "cosine" and acc["base"] == "sgd"


def test_a_gain_that_fades_with_the_batch_is_smaller():
    assert trend(metrics(0.02, 0.0))["test_accuracy"]["direction"] == SMALLER


def test_no_change_leaves_the_interval_across_zero():
    acc = trend(metrics(0.01, 0.01))["test_accuracy"]
    assert acc["change_low"] < 0 < acc["change_high"]
    assert acc["direction"] == UNCHANGED


def test_a_lower_loss_at_the_large_batch_is_a_larger_gain():
    """For the loss lower is better: a negative change is the gain growing with B."""
    loss = trend(metrics(0.0, 0.0, loss_gain_high=0.05))["train_loss"]
    assert loss["change_mean"] == pytest.approx(-0.05, abs=2e-3)
    assert loss["direction"] == LARGER


def test_a_seed_that_diverged_in_any_of_the_four_trainings_leaves_the_pairs():
    acc = trend(metrics(0.0, 0.02, diverged={("sgd", 32, 3), ("sgd+sngrad1", 256, 5)}))
    assert acc["test_accuracy"]["n_pairs"] == 6


def test_factors_are_reported_at_each_end():
    rows = trend(metrics(0.0, 0.02), factors={("sgd+sngrad1", 32): 0.7,
                                               ("sgd+sngrad1", 256): 0.9})
    assert (rows["test_accuracy"]["factor_low"], rows["test_accuracy"]["factor_high"]) == (0.7,
                                                                                         0.9)


def test_one_batch_size_has_no_trend():
    frame = metrics(0.0, 0.02)
    table = batch_trend.batch_trend(frame, PAIR, [32], dataset="d",
                                    primary="cosine")
    assert table.empty and list(table.columns) == batch_trend.TREND_COLUMNS


def summary_rows(rates):
    return pd.DataFrame([{"dataset": "d", "run": run, "batch_size": b, "learning_rate": lr,
                          "all_diverged": lr is None}
                         for run, by_b in rates.items() for b, lr in by_b.items()])


def best_rows(runs, ratio):
    return pd.DataFrame([{"dataset": "d", "run": run, "batch_size": b,
                          "axes": {"learning_rate": {"resolution": ratio}}}
                         for run in runs for b in (32, 256)])


@pytest.mark.parametrize(("factor", "rule"), [(8.0, "linear"), (8 ** 0.5, "square root"),
                                              (1.0, "constant")])
def test_the_scaling_exponent_names_the_rule(factor, rule):
    summary = summary_rows({"sgd": {32: 0.1, 256: 0.1 * factor}})
    table = batch_trend.lr_scaling(summary, best_rows(["sgd"], 10 ** 0.25))
    (row,) = table.to_dict("records")
    assert row["exponent"] == pytest.approx(math.log(factor) / math.log(8))
    assert row["k_resolution"] == pytest.approx(0.25 * math.log(10) / math.log(8))
    assert row["nearest_rule"] == rule
    assert (row["lr_low"], row["lr_high"]) == (0.1, pytest.approx(0.1 * factor))


def test_an_exponent_far_from_every_rule_names_none_and_diverged_cells_are_left_out():
    summary = summary_rows({"sgd": {32: 0.1, 256: 0.1 * 8 ** 2}, "adam": {32: 0.01, 256: None}})
    table = batch_trend.lr_scaling(summary, best_rows(["sgd", "adam"], 10 ** 0.25))
    assert table["run"].to_list() == ["sgd"]  # adam has one valid batch size
    assert table["nearest_rule"].iloc[0] == "none"


def test_the_rate_resolution_of_a_step_search_combines_the_step_and_alpha():
    """For a tuned I or II the search moves eta = step x alpha by either axis; whatever order
    best.json lists them in (its keys are sorted: alpha before step)."""
    axes = {"alpha": {"resolution": 10 ** 0.5}, "step": {"resolution": 10 ** 0.25}}
    assert batch_trend.eta_resolution(axes) == pytest.approx(10 ** 0.75)
    assert batch_trend.eta_resolution({"learning_rate": {"resolution": 2.0},
                                       "momentum": {"resolution": 5.0}}) == 2.0
    assert math.isnan(batch_trend.eta_resolution({}))


def test_the_exponent_is_the_least_squares_slope():
    assert batch_trend.scaling_exponent([32, 64, 128], [1.0, 2.0, 2.0]) == pytest.approx(0.5)
    assert math.isnan(batch_trend.scaling_exponent([32], [1.0]))
    assert batch_trend.scaling_exponent([64, 256], [1.77828, 1.77828]) == 0.0


def test_the_report_states_the_trend_and_where_each_batch_size_stands(tmp_path):
    layout = Layout("p", str(tmp_path))
    table = batch_trend.batch_trend(metrics(0.0, 0.02), PAIR, [32, 256],
                                    dataset="d", primary="cosine")
    write_frame(layout.batch_trend("d"), table)
    write_frame(layout.analysis(NOISE_SUMMARY), pd.DataFrame([
        {"dataset": "d", "checkpoint": c, "epoch": e, "b_simple_exact": b,
         "mean_noise_slope": -0.5, "mean_noise_slope_se": 0.01, "sigma_slope": 0.1,
         "sigma_slope_se": 0.02}
        for c, e, b in [("init", 0, 40.0), ("final", 5, 600.0)]]))
    config = {"datasets": ["d"], "batch_sizes": [256, 32], "train": {"schedule": "cosine"}}
    context = section.report_context(layout, config)
    assert context["several"] and context["sizes"] == [32, 256]
    (main,) = context["main"]
    row = table[table["outcome"] == "test_accuracy"].iloc[0]
    assert main["diff_high"] == f"{100 * row['diff_high']:+.2f}"
    assert main["interval"] == (f"[{100 * row['change_low']:+.2f}, "
                                f"{100 * row['change_high']:+.2f}]")
    assert main["direction"] == LARGER
    assert context["detected"] == [main]
    (noise,) = context["noise"]
    # B = 32 is below B_simple at both checkpoints, 256 only at the last (600)
    assert [c["sides"] for c in noise["checkpoints"]] == [["below", "above"],
                                                           ["below", "below"]]
    assert [b["count"] for b in noise["below"]] == [2, 1]
    assert noise["fall"] == f"{8 ** -0.5:.2g}" and noise["falls"]


def test_a_noise_slope_within_two_errors_of_zero_is_not_called_better(tmp_path):
    layout = Layout("p", str(tmp_path))
    write_frame(layout.analysis(NOISE_SUMMARY), pd.DataFrame([
        {"dataset": "d", "checkpoint": "init", "epoch": 0, "b_simple_exact": 40.0,
         "mean_noise_slope": -0.1, "mean_noise_slope_se": 0.06, "sigma_slope": 0.1,
         "sigma_slope_se": 0.02}]))
    (noise,) = section.noise_rows(layout, ["d"], [32, 256])
    assert noise["fall"] == f"{8 ** -0.1:.2g}" and not noise["falls"]


def test_a_trained_batch_size_against_an_unmeasurable_noise_scale():
    assert section.side_of(32, float("nan")) == "n/a"
    assert section.side_of(32, -1.0) == "n/a"
    assert section.side_of(32, 32.0) == "above"
