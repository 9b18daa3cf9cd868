"""Numbers the report derives from other numbers, pinned on both sides of their thresholds:
the pooled noise scale and its delta-method error, the regime sentence of the noise section,
the yes/no cells of the control-variate and training-length tables, the verdict words."""

import math

import numpy as np
import pandas as pd
import pytest

from sngrad.analysis import noise_summary, paired
from sngrad.report import noise as noise_section
from sngrad.report import results

# Three batch sizes with unequal batch counts: n_batches 32, 16, 4 at B = 8, 64, 1024, so the
# pooling weights n_batches * B are 256, 1024, 4096 (sum 5376), not B or n_batches alone.
G2, G2_SE = [4.0, 5.0, 6.0], [1.0, 0.5, 0.25]
TRACE, TRACE_SE, COV = [40.0, 44.0, 50.0], [4.0, 3.0, 2.0], [1.0, 0.5, 0.2]
N_BATCHES, SIZES = [32, 16, 4], [8, 64, 1024]


def _by_hand():
    """The pooled ratio and its delta-method error, term by term."""
    w = [n * b / 5376 for n, b in zip(N_BATCHES, SIZES, strict=True)]
    s = sum(wi * g for wi, g in zip(w, G2, strict=True))
    t = sum(wi * x for wi, x in zip(w, TRACE, strict=True))
    var_s = sum(wi**2 * e**2 for wi, e in zip(w, G2_SE, strict=True))
    var_t = sum(wi**2 * e**2 for wi, e in zip(w, TRACE_SE, strict=True))
    cov = sum(wi**2 * c for wi, c in zip(w, COV, strict=True))
    r = t / s
    return r, math.sqrt(var_t - 2 * r * cov + r * r * var_s) / s


def test_pooled_noise_scale_by_hand_with_unequal_batch_counts():
    r, se = _by_hand()
    assert r == pytest.approx(48.380952 / 5.714286, rel=1e-6)
    weights = [n * b for n, b in zip(N_BATCHES, SIZES, strict=True)]
    got = noise_summary.pooled_noise_scale(G2, G2_SE, TRACE, TRACE_SE, COV, weights)
    assert got == pytest.approx((r, se), rel=1e-12)
    # weights of zero (no examples drawn) pool nothing: no estimate, not a division by zero
    nothing = noise_summary.pooled_noise_scale(G2, G2_SE, TRACE, TRACE_SE, COV, [0, 0, 0])
    assert all(v != v for v in nothing)  # NaN
    # the covariance term matters here: without it the error would be larger
    no_cov = noise_summary.pooled_noise_scale(G2, G2_SE, TRACE, TRACE_SE, [0, 0, 0], weights)
    assert no_cov[1] > se * 1.1


def test_the_noise_summary_weights_each_batch_size_by_the_examples_it_drew():
    """b_simple_by_checkpoint pools with n_batches * B: catches B alone or n_batches alone."""
    frame = pd.DataFrame({
        "checkpoint": "p50", "epoch": 5, "layer": "all", "batch_size": SIZES,
        "n_batches": N_BATCHES, "g2_unbiased": G2, "g2_unbiased_se": G2_SE,
        "trace_sigma": TRACE, "trace_sigma_se": TRACE_SE, "g2_trace_cov": COV,
        "noise_scale_exact": 9.0, "noise_scale_biased": 7.0,
    })
    (row,) = noise_summary.b_simple_by_checkpoint(frame).to_dict("records")
    assert (row["b_simple"], row["b_simple_se"]) == pytest.approx(_by_hand(), rel=1e-12)
    assert (row["checkpoint"], row["epoch"], row["layer"]) == ("p50", 5, "all")
    assert (row["b_simple_exact"], row["b_simple_biased"], row["biased_batch_size"]) == (
        9.0, 7.0, 64)  # the measured batch size nearest the summary's 128 (64 of 8, 64, 1024)
    for wrong in (SIZES, N_BATCHES):
        value, _ = noise_summary.pooled_noise_scale(G2, G2_SE, TRACE, TRACE_SE, COV, wrong)
        assert abs(value - row["b_simple"]) > 1e-3


def test_a_summary_of_no_measured_dataset_is_empty(tmp_path):
    from sngrad.layout import Layout

    assert noise_summary.summary_table(Layout("t", str(tmp_path)), ["absent"]).empty


def test_the_delta_method_error_matches_the_spread_of_simulated_repeats():
    """Draw (S_B, T_B) per batch size from a normal law with the stated errors and
    covariances; the spread of the pooled ratio over repeats matches the delta-method error."""
    rng = np.random.default_rng(11)
    draws = []
    for _ in range(20000):
        g2, trace = [], []
        for g, ge, x, xe, c in zip(G2, G2_SE, TRACE, TRACE_SE, COV, strict=True):
            sample = rng.multivariate_normal([g, x], [[ge**2, c], [c, xe**2]])
            g2.append(sample[0])
            trace.append(sample[1])
        w = np.array([n * b for n, b in zip(N_BATCHES, SIZES, strict=True)], float)
        draws.append((w @ np.array(trace)) / (w @ np.array(g2)))
    _, se = _by_hand()
    assert np.std(draws) == pytest.approx(se, rel=0.05)


@pytest.mark.parametrize(("b_simple", "words"), [
    (2049.0, "well above the seed's largest batch size 1024"),
    (2048.0, "above the seed's largest batch size 1024"),
    (1180.0, "above the seed's largest batch size 1024"),  # last round's text said "inside"
    (1024.0, "inside the seed's range 128-1024"), (128.0, "inside the seed's range 128-1024"),
    (127.9, "below the seed's smallest batch size 128"),
    (64.0, "below the seed's smallest batch size 128"),
    (63.9, "well below the seed's smallest batch size 128"),
    (0.0, "not measurable"), (math.nan, "not measurable"),
])
def test_the_regime_sentence_on_both_sides_of_each_edge(b_simple, words):
    assert noise_section.regime(b_simple).startswith(words)


def _cv_layout(tmp_path, ratio):
    from sngrad.layout import Layout

    layout = Layout("t", str(tmp_path))
    path = layout.analysis("control_variates.csv")
    pd.DataFrame([{"dataset": "mnist", "optimizer": "sgd+cv", "batch_size": 128,
                   "variance_ratio": ratio, "variance_ratio_first": ratio,
                   "variance_ratio_last": ratio, "lambda_median": 0.5}]).to_csv(
        _mkdir(path), index=False)
    return layout


def _mkdir(path):
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize(("ratio", "reduces"), [(0.999, "yes"), (1.0, "no"), (1.2, "no"),
                                                (math.nan, "no")])
def test_reduces_variance_is_yes_below_a_ratio_of_one_only(tmp_path, ratio, reduces):
    (row,) = results.control_variates(_cv_layout(tmp_path, ratio), [])
    assert row["reduces"] == reduces and row["verdict"] == "not compared"


@pytest.mark.parametrize(("mean", "p", "higher", "word"), [
    (+0.01, 0.049, True, "better"), (+0.01, 0.05, True, "inconclusive"),
    (-0.01, 0.049, True, "worse"), (-0.01, 0.049, False, "better"),
    (+0.01, 0.049, False, "worse"), (0.0, 0.001, True, "inconclusive"),
    (+0.01, math.nan, True, "inconclusive"),
])
def test_verdict_words_on_both_sides_of_the_level_and_of_zero(mean, p, higher, word):
    assert paired.verdict(mean, p, 0.05, higher) == word
