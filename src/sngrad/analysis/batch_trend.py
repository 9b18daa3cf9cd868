"""The study over batch sizes: how each run's paired difference from its base changes with B,
and how the chosen learning rate scales with B.

Why B matters to the method. The batch mean's noise falls like sigma / sqrt(B), but variants I
and III read the per-example sigma, which does not fall with B; so a shrink tuned at one batch
size may help at one end of the range and hurt at the other. Every cell is tuned and trained at
every batch size of the profile, on the same final seeds, so the per-seed differences
d_B(s) = y_R(s, B) - y_b(s, B) of a run R against its base b pair across batch sizes too.

The trend of a run (:func:`batch_trend`). Between the profile's smallest and largest batch
size, B_lo and B_hi, the per-seed change

    c(s) = d_{B_hi}(s) - d_{B_lo}(s)

has a mean and a 95 % sign-flip interval (:func:`sngrad.analysis.paired.sign_flip_interval`),
over the seeds on which none of the four trainings diverged. For an accuracy a positive change
means the run's gain over its base is larger at B_hi; for a loss, a negative one. The
intervals are marginal, as the schedule contrasts are: they describe a trend, and the verdicts
themselves stay the Holm families of :mod:`sngrad.analysis.paired` (one per dataset, spanning
every batch size).

Learning-rate scaling (:func:`lr_scaling`). Per run, the chosen learning rate eta(B) and the
least-squares exponent k of log eta = k log B + c, beside the two usual rules: linear scaling
(k = 1; Goyal et al. 2017) and square-root scaling (k = 1/2; Hoffer et al. 2017, Malladi et
al. 2022 for adaptive methods). The tuning grid quantises eta, so k is known only to about
log(r) / log(B_hi / B_lo), r the grid's final ratio between neighbours (``k_resolution``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from sngrad.analysis.paired import (
    CONFIDENCE,
    common_seed_values,
    comparisons,
    final_epoch,
    seed_values,
    sign_flip_interval,
    sign_flip_p,
)
from sngrad.names import RunName
from sngrad.tables import OUTCOMES, TREND_DIRECTIONS

TREND_COLUMNS = [
    "dataset", "run", "base", "schedule", "outcome", "batch_size_low", "batch_size_high",
    "n_pairs", "diff_low", "diff_high", "change_mean", "change_low", "change_high", "p_change",
    "direction", "factor_low", "factor_high",
]  # fmt: skip
LARGER, SMALLER, UNCHANGED = TREND_DIRECTIONS

SCALING_COLUMNS = [
    "dataset", "run", "batch_size_low", "batch_size_high", "lr_low", "lr_high", "exponent",
    "k_resolution", "nearest_rule", "learning_rates",
]  # fmt: skip
RULES = {"linear": 1.0, "square root": 0.5, "constant": 0.0}


def batch_trend(metrics: pd.DataFrame, runs: Sequence[RunName], batch_sizes: Sequence[int], *,
                dataset: str, primary: str, epochs: int | None = None,
                factors: dict | None = None) -> pd.DataFrame:
    """One row per (run with its base, outcome): the change of the paired difference from the
    smallest to the largest batch size (module docstring); ``factors`` are
    :func:`sngrad.analysis.shrink.mean_factors` ({(run, B): mean factor}), reported beside
    (NaN where the run records none). Empty with fewer than two batch sizes."""
    sizes = sorted({int(b) for b in batch_sizes})
    if len(sizes) < 2 or metrics.empty:
        return pd.DataFrame(columns=TREND_COLUMNS)
    low, high = sizes[0], sizes[-1]
    epochs = final_epoch(metrics) if epochs is None else int(epochs)
    factors = factors or {}
    rows = []
    for outcome, higher_is_better in OUTCOMES.items():
        values = seed_values(metrics, epochs, outcome)
        for parsed, parsed_base in comparisons(runs):
            run, base = parsed.name, parsed_base.name  # the frames' keys
            y = common_seed_values(values, [(r, b) for b in (low, high) for r in (run, base)])
            n_pairs = len(y[0])
            d_low, d_high = y[0] - y[1], y[2] - y[3]
            change = d_high - d_low
            c_low, c_high = sign_flip_interval(change, 1 - CONFIDENCE)
            gain = 1.0 if higher_is_better else -1.0
            # the interval wholly on one side of zero (NaN compares False)
            if gain * c_low > 0 and gain * c_high > 0:
                direction = LARGER
            elif gain * c_low < 0 and gain * c_high < 0:
                direction = SMALLER
            else:
                direction = UNCHANGED
            rows.append({
                "dataset": dataset, "run": run, "base": base,
                "schedule": parsed.schedule_or(primary), "outcome": outcome,
                "batch_size_low": low, "batch_size_high": high, "n_pairs": n_pairs,
                "diff_low": float(d_low.mean()) if n_pairs else math.nan,
                "diff_high": float(d_high.mean()) if n_pairs else math.nan,
                "change_mean": float(change.mean()) if n_pairs else math.nan,
                "change_low": c_low, "change_high": c_high,
                "p_change": sign_flip_p(change) if n_pairs >= 2 else math.nan,
                "direction": direction,
                "factor_low": factors.get((run, low), math.nan),
                "factor_high": factors.get((run, high), math.nan),
            })
    return pd.DataFrame(rows, columns=TREND_COLUMNS)


def scaling_exponent(batch_sizes, learning_rates) -> float:
    """Least-squares slope of log eta on log B (NaN with fewer than two finite points)."""
    b = np.asarray(batch_sizes, dtype=float)
    lr = np.asarray(learning_rates, dtype=float)
    ok = np.isfinite(lr) & (lr > 0) & (b > 0)
    if np.unique(b[ok]).size < 2:
        return math.nan
    x, y = np.log(b[ok]), np.log(lr[ok])
    # equal rates at every B give a slope of 1e-17 or so: rounding keeps it a plain 0
    return round(float(np.polyfit(x, y, 1)[0]), 10)


def nearest_rule(exponent: float, resolution: float) -> str:
    """The scaling rule (:data:`RULES`) within ``resolution`` of the exponent, the closest one
    if several are; "none" when no rule is that close, n/a for a missing exponent."""
    if not math.isfinite(exponent):
        return "n/a"
    close = {name: abs(exponent - k) for name, k in RULES.items()
             if abs(exponent - k) <= resolution + 1e-12}
    return min(close, key=close.get) if close else "none"


def eta_resolution(axes: dict) -> float:
    """The ratio r between neighbouring learning rates the search could have chosen, from
    best.json's ``axes``: the learning-rate axis's own, or, where the tuned axis is the step
    eta / alpha (variants I and II), the step's times alpha's (eta = step x alpha moves by
    either). NaN when the axes do not say."""
    def ratio(name):
        value = (axes.get(name) or {}).get("resolution")
        return float(value) if value else math.nan

    if "learning_rate" in axes:
        return ratio("learning_rate")
    if "step" in axes:
        return ratio("step") * (ratio("alpha") if "alpha" in axes else 1.0)
    return math.nan


def lr_scaling(summary: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, run) over its batch sizes: the chosen learning rates, the exponent k of
    eta ~ B^k and the grid's resolution on k (module docstring). ``summary`` are the summary
    tables' rows (:func:`sngrad.analysis.paired.summary_table`), ``best`` the best.json rows
    (:func:`sngrad.analysis.loaders.read_best`: their ``axes`` give the grid's resolution).
    Cells whose every setting diverged are left out of the fit."""
    if summary.empty:
        return pd.DataFrame(columns=SCALING_COLUMNS)
    resolution = {}
    for r in best.to_dict("records") if len(best) else []:
        ratio = eta_resolution(r.get("axes") if isinstance(r.get("axes"), dict) else {})
        if math.isfinite(ratio):
            resolution[(r["dataset"], r["run"], int(r["batch_size"]))] = ratio
    rows = []
    valid = summary[~summary["all_diverged"].astype(bool)]
    for (dataset, run), part in valid.groupby(["dataset", "run"], sort=False):
        part = part.sort_values("batch_size")
        sizes = part["batch_size"].astype(int).to_list()
        if len(sizes) < 2:
            continue
        lrs = part["learning_rate"].astype(float).to_list()
        exponent = scaling_exponent(sizes, lrs)
        ratio = max(resolution.get((dataset, run, b), math.nan) for b in sizes)
        k_res = (math.log(ratio) / math.log(sizes[-1] / sizes[0])
                 if math.isfinite(ratio) else math.nan)
        rows.append({
            "dataset": dataset, "run": run, "batch_size_low": sizes[0],
            "batch_size_high": sizes[-1], "lr_low": lrs[0], "lr_high": lrs[-1],
            "exponent": exponent, "k_resolution": k_res,
            "nearest_rule": nearest_rule(exponent, k_res if math.isfinite(k_res) else 0.0),
            "learning_rates": " ".join(f"{b}:{lr:.6g}" for b, lr in zip(sizes, lrs,
                                                                        strict=True)),
        })
    return pd.DataFrame(rows, columns=SCALING_COLUMNS)
