"""The gradient-noise study pooled per checkpoint: B_simple and the slopes against batch size.

Reads one dataset's ``results/<profile>/noise/<dataset>.csv`` (written by
:mod:`sngrad.noise.command`) and reduces it to one row per checkpoint; the gradient_noise
notebook writes the rows of every dataset to ``results/<profile>/analysis/noise_summary.csv``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sngrad.noise.measure import ALL, factor_columns, fit_loglog_slope, is_resolved
from sngrad.profile import NOISE_SUMMARY_BATCH_SIZE as SUMMARY_BATCH_SIZE


def pooled_noise_scale(g2, g2_se, trace, trace_se, cov, weights) -> tuple[float, float]:
    """B_simple from the unbiased parts of several batch sizes, and its standard error.

    ``S = sum w S_B / sum w`` and ``T = sum w T_B / sum w`` stay unbiased for |G|^2 and
    tr Sigma whatever the weights, as long as they are fixed in advance (weights chosen from
    the estimates, such as inverse variances of the per-B ratios, would favour the ratios that
    came out low). The ratio ``T / S`` gets the delta-method error
    ``sqrt(var T - 2 r cov(T, S) + r^2 var S) / S`` from the independent batch sizes'
    variances and covariances. NaN when the pooled |G|^2 is not resolved
    (:func:`sngrad.noise.measure.is_resolved`).
    """
    g2, g2_se, trace, trace_se, cov, w = (
        np.asarray(a, np.float64) for a in (g2, g2_se, trace, trace_se, cov, weights)
    )
    ok = np.isfinite(g2) & np.isfinite(trace) & np.isfinite(g2_se) & np.isfinite(trace_se)
    ok &= np.isfinite(cov) & (w > 0)
    if not ok.any():
        return math.nan, math.nan
    w = w[ok] / w[ok].sum()
    s, t = float(w @ g2[ok]), float(w @ trace[ok])
    var_s, var_t = float(w**2 @ g2_se[ok] ** 2), float(w**2 @ trace_se[ok] ** 2)
    if not is_resolved(s, math.sqrt(var_s)):
        return math.nan, math.nan
    cov_st = float(w**2 @ cov[ok])
    r = t / s
    return r, math.sqrt(max(var_t - 2 * r * cov_st + r * r * var_s, 0.0)) / s


def _nearest_batch_size(sizes, target: int) -> int:
    sizes = sorted(int(s) for s in sizes)
    return min(sizes, key=lambda s: (abs(math.log(s / target)), s))


def b_simple_by_checkpoint(frame):
    """B_simple per (checkpoint, layer) from one dataset's noise CSV (a pandas DataFrame).

    Every batch size gives unbiased estimates of |G|^2 and tr Sigma; they are pooled with
    weights proportional to the examples drawn, ``n_batches * B`` (the large batches, whose
    |G|^2 estimate is the most precise, count most), into ``b_simple`` and ``b_simple_se``
    (:func:`pooled_noise_scale`); ``b_simple_exact`` is the
    full training split's value and ``b_simple_biased`` the same-batch estimate at
    :data:`SUMMARY_BATCH_SIZE` (or the nearest measured batch size).
    """
    import pandas as pd

    rows = []
    keys = ["checkpoint", "epoch", "layer"]
    for (checkpoint, epoch, layer), part in frame.groupby(keys, sort=False):
        at = _nearest_batch_size(part["batch_size"], SUMMARY_BATCH_SIZE)
        here = part[part["batch_size"] == at].iloc[0]
        value, se = pooled_noise_scale(
            part["g2_unbiased"],
            part["g2_unbiased_se"],
            part["trace_sigma"],
            part["trace_sigma_se"],
            part["g2_trace_cov"],
            part["n_batches"] * part["batch_size"],
        )
        rows.append(
            {
                "checkpoint": checkpoint,
                "epoch": int(epoch),
                "layer": str(layer),
                "b_simple": value,
                "b_simple_se": se,
                "b_simple_resolved": bool(math.isfinite(value)),
                "b_simple_exact": float(here["noise_scale_exact"]),
                "b_simple_biased": float(here["noise_scale_biased"]),
                "biased_batch_size": int(at),
            }
        )
    return pd.DataFrame(rows)


def summarise(frame, dataset: str):
    """One summary row per checkpoint of one dataset's noise CSV (a pandas DataFrame).

    Columns: dataset, checkpoint, epoch, summary_batch_size (128 or the nearest measured),
    b_simple (+ _se: combined over the batch sizes, network sums, see
    :func:`b_simple_by_checkpoint`; NaN where not resolved, b_simple_resolved False),
    b_simple_exact (full training split), b_simple_biased (same-batch estimate at the summary
    batch size), mean_noise_slope / mean_error_slope / sigma_slope (+ _se: log-log least
    squares over the batch sizes), sigma_ratio (sigma_median at the largest over the smallest
    batch size), sigma_changes (|sigma_slope| > 2 se), sigma_median_exact, and at the summary
    batch size snr_batch_median, snr_pure_noise, snr_above_share, sparse_share, single_share,
    the sparse share of every layer (sparse_share_layer<l>), and every factor column; plus
    largest_batch_size and every factor column there (``<column>_bmax``), smallest_batch_size
    and sparse_share / single_share there (``_bmin``).
    """
    import pandas as pd

    rows = []
    network = frame[frame["layer"].astype(str) == ALL]
    for (checkpoint, epoch), part in network.groupby(["checkpoint", "epoch"], sort=False):
        part = part.sort_values("batch_size")
        sizes = part["batch_size"].to_numpy()
        at = _nearest_batch_size(sizes, SUMMARY_BATCH_SIZE)
        here = part[part["batch_size"] == at].iloc[0]
        top = part.iloc[-1]
        row = {"dataset": dataset, "checkpoint": checkpoint, "epoch": int(epoch)}
        row["summary_batch_size"] = int(at)
        b_simple = b_simple_by_checkpoint(part).iloc[0]
        for column in ("b_simple", "b_simple_se", "b_simple_exact", "b_simple_biased"):
            row[column] = float(b_simple[column])
        row["b_simple_resolved"] = bool(b_simple["b_simple_resolved"])
        for name, column in (
            ("mean_noise", "mean_noise"),
            ("mean_error", "mean_error"),
            ("sigma", "sigma_median"),
        ):
            row[f"{name}_slope"], row[f"{name}_slope_se"] = fit_loglog_slope(sizes, part[column])
        row["sigma_ratio"] = float(top["sigma_median"] / part.iloc[0]["sigma_median"])
        row["sigma_changes"] = bool(abs(row["sigma_slope"]) > 2 * row["sigma_slope_se"])
        row["sigma_median_exact"] = float(here["sigma_median_exact"])
        for column in (
            "snr_batch_median",
            "snr_pure_noise",
            "snr_above_share",
            "sparse_share",
            "single_share",
            *factor_columns(),
        ):
            row[column] = float(here[column])
        layers = frame[
            (frame["checkpoint"] == checkpoint)
            & (frame["batch_size"] == at)
            & (frame["layer"].astype(str) != ALL)
        ]
        for _, layer in layers.iterrows():
            row[f"sparse_share_layer{layer['layer']}"] = float(layer["sparse_share"])
        row["largest_batch_size"] = int(top["batch_size"])
        row["smallest_batch_size"] = int(part.iloc[0]["batch_size"])
        row["sparse_share_bmin"] = float(part.iloc[0]["sparse_share"])
        row["single_share_bmin"] = float(part.iloc[0]["single_share"])
        for column in factor_columns():
            row[f"{column}_bmax"] = float(top[column])
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(layout, datasets: Sequence[str]):
    """:func:`summarise` over the datasets whose noise CSV exists (a pandas DataFrame)."""
    import pandas as pd

    frames = [
        summarise(pd.read_csv(layout.noise(d)), d)
        for d in datasets
        if Path(layout.noise(d)).exists()
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
