"""Every column of the training-length table, from a hand-made metrics table.

The criterion (module docstring of sngrad.analysis): a base optimizer's cell has trained long
enough when its mean training loss over the final seeds fell, over the last quarter of the
epochs (ceil(E / 4) of them), by at most FLAT_SHARE of its total decrease from the first to
the last epoch. tests/test_analysis.py checks the share and the verdict; here each number the
table publishes (training_length.csv) is checked against the hand computation.
"""

import math

import pandas as pd
import pytest

from sngrad import tables
from sngrad.analysis import paired, shrink, training_length, tuning
from sngrad.names import parse_run

EPOCHS = 7  # quarter = ceil(7 / 4) = 2 epochs
LOSS = {1: [2.0, 2.4, 9.0], 5: [1.0, 1.2, 9.0], 7: [0.9, 1.1, 9.0]}  # three seeds


def _metrics():
    rows = []
    for seed in (1, 2, 3):
        for epoch in range(1, EPOCHS + 1):
            loss = LOSS.get(epoch, [1.5, 1.5, 9.0])[seed - 1]
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
    table = training_length.training_length(_metrics())
    assert list(table.columns) == training_length.TRAINING_LENGTH_COLUMNS
    assert len(table) == 1
    row = table.iloc[0].to_dict()
    first, mid, last = 2.2, 1.1, 1.0  # means over seeds 1 and 2 at epochs 1, 5 and 7
    expected = {
        "dataset": "mnist", "optimizer": "sgd", "batch_size": 64, "epochs": EPOCHS,
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
    stricter = training_length.training_length(_metrics(), flat_share=0.08).iloc[0]
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
    metrics = pd.concat([_metrics().assign(optimizer=run, batch_size=bs,
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
