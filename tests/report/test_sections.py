"""Cells of the report's sections from hand-made inputs: the elapsed time from
run_started.json in each form the file may take (reproducibility), the chosen alpha in the
learning-rate cells and the shrink rows (results), the benchmark's machine (implementation),
the divergence threshold in the protocol (experiment)."""

import json
import math
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from sngrad.layout import Layout
from sngrad.report import experiment, implementation, results
from sngrad.report.reproducibility import elapsed

START = datetime(2026, 11, 23, 19, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("record", [
    {"started_unix": START},
    {"started": "2026-11-23T19:00:00Z"},
    {"started": "2026-11-23T20:00:00+01:00"},
    {"started_at": "2026-11-23T19:00:00"},  # no zone: UTC
])
def test_elapsed_reads_unix_and_iso_start_times(tmp_path, record):
    """Catches an ISO 8601 start (with Z, with an offset, or naive = UTC) misread or
    rejected, e.g. the Z suffix handled wrongly, the offset dropped (an hour off) or a naive
    time read in the machine's zone (run here in UTC+5:30, so that it shows)."""
    layout = Layout("p", str(tmp_path))
    path = tmp_path / "p" / "run_started.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    zone = os.environ.get("TZ")
    os.environ["TZ"] = "XST-5:30"  # POSIX form: 5 h 30 east of UTC, no zone files needed
    time.tzset()
    try:
        got = elapsed(layout, now=START + 1800)
    finally:
        if zone is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = zone
        time.tzset()
    assert got["available"] and got["seconds"] == pytest.approx(1800)
    assert got["started"] == "2026-11-23 19:00:00 UTC"


def test_seed_learning_rate_cells_name_the_chosen_alpha():
    """The seed README's learning-rate cell of a sngrad run gives its chosen alpha (and, for a
    tuned alpha, the scale-free value); sgd's cell has none: catches the alpha looked up
    under a wrong key, which silently drops it from every cell."""
    summary = pd.DataFrame([
        {"dataset": "mnist", "run": run, "batch_size": 64, "learning_rate": lr,
         "momentum": math.nan, "alpha": alpha, "alpha_scaled": scaled, "at_bound": False,
         "all_diverged": False, "test_accuracy_mean": 0.9, "test_accuracy_std": 0.01,
         "n_diverged": 0, "n_seeds": 3}
        for run, lr, alpha, scaled in [
            ("sgd", 0.1, math.nan, math.nan),
            ("sgd+sngrad1", 0.3, 25.0, 0.5),
            ("sgd+sngrad2@0.05", 0.03, 0.05, 0.05),
        ]
    ])
    config = {"optimizers": ["sgd", "sgd+sngrad1", "sgd+sngrad2@0.05"],
              "datasets": ["mnist"], "batch_sizes": [64]}
    table = results.seed_tables(config, summary, pd.DataFrame())
    assert table["runs"] == ["sgd", "sgd+sngrad1", "sgd+sngrad2@0.05"]
    mnist = {r["run"]: r["cells"] for r in table["lr_rows"] if r["dataset"] == "MNIST"}
    assert mnist == {"sgd": ["0.1"], "sgd+sngrad1": ["0.3, $\\alpha$ 25 (scale-free 0.5)"],
                     "sgd+sngrad2@0.05": ["0.03, $\\alpha$ 0.05"]}


def _layout(tmp_path):
    layout = Layout("p", str(tmp_path))
    for path in (layout.analysis("x"), layout.benchmark()):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return layout


def test_shrink_rows_give_the_last_epochs_factor(tmp_path):
    """The report's shrink table shows, for the whole network (layer ``all``), the mean
    factor, the first and the last epoch's factor, each from its own column of shrink.csv, and
    each layer's own mean factor: catches factor_last left out (printed as n/a) or taken from
    another column or layer."""
    layout = _layout(tmp_path)
    pd.DataFrame([
        {"dataset": "mnist", "optimizer": "sgd+sngrad1", "batch_size": 64, "layer": layer,
         "factor_mean": mean, "factor_first": 0.9, "factor_last": last, "shrink_share": 0.25,
         "shrink_first": 0.1, "shrink_last": 0.4}
        for layer, mean, last in [("0", 0.5, 0.11), ("all", 0.75, 0.625)]
    ]).to_csv(layout.analysis("shrink.csv"), index=False)
    (row,) = results.shrink_rows(layout)
    assert (row["run"], row["batch_size"]) == ("sgd+sngrad1", 64)
    assert (row["factor"], row["factor_first"], row["factor_last"]) == ("0.75", "0.9", "0.625")
    assert row["share"] == "25.0" and row["layers"] == "0: 0.5"


@pytest.mark.parametrize("machine, expected", [
    (["cpu: AMD EPYC", "gpu: H100"], "cpu: AMD EPYC, gpu: H100"),
    ("one box", "one box"),
])
def test_benchmark_names_the_machine_of_its_record(tmp_path, machine, expected):
    """The implementation section's machine line comes from the benchmark's own record; a
    list of machines (several devices) is joined with commas: catches a crash (or a Python
    list printed as such) when the record holds a list, and the line falling back to the
    machine that rendered the report."""
    layout = _layout(tmp_path)
    pd.DataFrame([{"optimizer": "sgd", "batch_size": 64, "step_ms": 1.23456}]).to_csv(
        layout.benchmark(), index=False)
    Path(layout.benchmark()).with_suffix(".json").write_text(json.dumps({"machine": machine}))
    got = implementation.benchmark(layout, ["cpu"])
    assert got["machine"] == expected
    assert got["columns"] == ["optimizer", "batch_size", "step_ms"]


@pytest.mark.parametrize("loss, text", [(1000.0, "1000"), (12345.5, "12345.5")])
def test_protocol_gives_the_divergence_threshold_in_full(loss, text):
    """The experiment section's divergence threshold is printed with 6 significant digits,
    as configured: catches it shortened to 3 (1000 would read "1e+03")."""
    assert experiment.protocol({"train": {"diverge_loss": loss}})["diverge_loss"] == text
