"""The noise section's words and cells from a noise summary table (sngrad.report.noise):
the trend of B_simple on both sides of its thresholds, which number goes into which cell, the
availability flags. A table written here, so every expected cell is known."""

import pandas as pd
import pytest

from sngrad.io import write_frame
from sngrad.layout import NOISE_SUMMARY, Layout
from sngrad.names import VARIANTS
from sngrad.report import noise as noise_section


def _row(checkpoint, epoch, b_exact, **over):
    row = {
        "dataset": "toy", "checkpoint": checkpoint, "epoch": epoch,
        "b_simple": 100.0, "b_simple_se": 5.0, "b_simple_resolved": True,
        "b_simple_exact": b_exact, "b_simple_biased": 90.0, "snr_batch_median": 0.25,
        "snr_pure_noise": 0.125, "snr_above_share": 0.375, "sparse_share": 0.5,
        "single_share": 0.25, "sigma_median_exact": 0.0625, "sparse_share_bmin": 0.75,
        "single_share_bmin": 0.625, "sparse_share_layer0": 0.5, "largest_batch_size": 1024,
        "smallest_batch_size": 8, "mean_noise_slope": -0.5, "mean_noise_slope_se": 0.05,
        "mean_error_slope": -0.25, "mean_error_slope_se": 0.03, "sigma_slope": 0.125,
        "sigma_slope_se": 0.02, "sigma_ratio": 1.0, "sigma_changes": False,
    }
    for kind, value in (("factor_mean", 0.875), ("shrink_share", 0.5)):
        for setting in ("tuned", "alpha1"):
            for v in VARIANTS:
                row[f"{kind}_{v}_{setting}"] = value
                row[f"{kind}_{v}_{setting}_bmax"] = value / 2
    row.update(over)
    return row


def _context(tmp_path, rows, datasets=("toy",)):
    layout = Layout("t", str(tmp_path))
    write_frame(layout.analysis(NOISE_SUMMARY), pd.DataFrame(rows))
    return noise_section.report_context(layout, list(datasets))


@pytest.mark.parametrize(("last", "trend"), [
    (126.0, "grows"), (125.0, "stays about the same"), (80.0, "stays about the same"),
    (79.0, "falls"),
])
def test_the_trend_of_b_simple_on_both_sides_of_its_thresholds(tmp_path, last, trend):
    (toy,) = _context(tmp_path, [_row("init", 0, 100.0), _row("p100", 10, last)])["datasets"]
    assert toy["b_simple_trend"] == trend


def test_each_cell_holds_its_own_column(tmp_path):
    context = _context(tmp_path, [
        _row("init", 0, 100.0),
        _row("p100", 10, 300.0, sigma_ratio=1.5, sigma_changes=True, mean_error_slope=-0.7512,
             mean_error_slope_se=0.0311),
    ], datasets=("toy", "absent"))
    assert context["available"] and context["missing"] == ["absent"]
    (toy,) = context["datasets"]
    first, last = toy["first"], toy["last"]
    assert (first["checkpoint"], last["epoch"]) == ("init", "10")
    assert first["b_simple"] == "100 ± 5" and first["b_simple_exact"] == "100"
    assert (first["single_bmin"], first["sparse_bmin"]) == ("62.5 %", "75.0 %")
    assert (first["single"], first["sparse"], first["above"]) == ("25.0 %", "50.0 %", "37.5 %")
    assert first["sparse_layers"] == "layer 0 50.0 %"
    # factors are numbers, shares are percentages, the largest batch size its own column
    assert first["factor_mean_tuned"] == {v: "0.875" for v in VARIANTS}
    assert first["factor_mean_alpha1_bmax"] == {v: "0.438" for v in VARIANTS}
    assert first["shrink_share_tuned"] == {v: "50.0 %" for v in VARIANTS}
    assert first["shrink_share_alpha1_bmax"] == {v: "25.0 %" for v in VARIANTS}
    # slopes to two significant digits of the error: -0.7512 +- 0.0311 reads -0.75 +- 0.031
    assert toy["mean_error_slope"] == "-0.75 ± 0.031"
    assert [s["mean_error"] for s in toy["slopes"]] == ["-0.25 ± 0.03", "-0.75 ± 0.031"]
    assert toy["sigma_rises"] and toy["sigma_changes"] and toy["sigma_ratio"] == "1.5"
    assert (toy["largest_batch_size"], toy["smallest_batch_size"]) == ("1024", "8")


def test_a_sigma_ratio_of_one_does_not_rise_and_an_unresolved_b_simple_says_so(tmp_path):
    (toy,) = _context(tmp_path, [
        _row("init", 0, 100.0, b_simple_resolved=False),
        _row("p100", 10, 100.0, sigma_ratio=1.0),
    ])["datasets"]
    assert not toy["sigma_rises"]
    assert toy["first"]["b_simple"] == "not resolved"


def test_a_summary_without_the_datasets_is_not_available(tmp_path):
    context = _context(tmp_path, [_row("init", 0, 100.0)], datasets=("other",))
    assert context["available"] is False and context["missing"] == ["other"]


def test_a_profile_without_the_study_says_why_and_reads_no_summary(tmp_path):
    layout = Layout("t", str(tmp_path))
    # a summary left from an earlier run of the study
    write_frame(layout.analysis(NOISE_SUMMARY), pd.DataFrame([_row("init", 0, 100.0)]))
    off = noise_section.report_context(layout, ["toy"], {"noise": {"enabled": False}})
    assert not off["enabled"] and not off["available"] and off["datasets"] == []
    assert off["why"].startswith("`noise.enabled` is false, so there is no reference run")
    cnn = {"model": {"kind": "cnn"}, "noise": {"enabled": False}}
    assert noise_section.not_run_reason(cnn).startswith("it trains a cnn model, and the study's")
    on = noise_section.report_context(layout, ["toy"], {"noise": {"seed": 0}})
    assert on["enabled"] and on["why"] is None and on["available"]
