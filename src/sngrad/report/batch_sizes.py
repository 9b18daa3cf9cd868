"""The batch-size section (batch_sizes.md.j2): the trend of every paired difference over B,
the chosen learning rate against B, and the noise study's B_simple beside the trained sizes.

Reads each dataset's ``batch_trend.csv`` (summary notebook), ``analysis/lr_scaling.csv``
(batch_sizes notebook) and ``analysis/noise_summary.csv`` (gradient_noise notebook); computes
nothing but the comparisons of a trained B with a measured B_simple and the fall of the batch
mean's noise implied by its measured slope."""

from __future__ import annotations

import math
from collections.abc import Sequence

from sngrad.layout import NOISE_SUMMARY, Layout
from sngrad.report.format import NA, fmt, missing, number, plus_minus, pvalue
from sngrad.report.noise import not_run_reason
from sngrad.report.read import concat, read_csv, records
from sngrad.report.results import difference
from sngrad.tables import TREND_DIRECTIONS


def trend_rows(layout: Layout, datasets: Sequence[str]) -> list[dict]:
    """Every row of the datasets' ``batch_trend.csv``, formatted (accuracy in points)."""
    out = []
    for r in records(concat(layout.batch_trend(d) for d in datasets)):
        outcome = r["outcome"]
        low, high = (difference(r[f"change_{end}"], outcome) for end in ("low", "high"))
        interval = (NA if missing(r["change_low"]) else
                    "unbounded" if abs(r["change_low"]) == math.inf else f"[{low}, {high}]")
        out.append({
            "dataset": r["dataset"], "run": r["run"], "base": r["base"],
            "schedule": r["schedule"], "outcome": outcome.replace("_", " "),
            "low": int(r["batch_size_low"]), "high": int(r["batch_size_high"]),
            "pairs": fmt(r["n_pairs"], 6),
            "diff_low": difference(r["diff_low"], outcome),
            "diff_high": difference(r["diff_high"], outcome),
            "change": difference(r["change_mean"], outcome), "interval": interval,
            "p": pvalue(r["p_change"]), "direction": r["direction"],
            "factor_low": fmt(r["factor_low"], 3), "factor_high": fmt(r["factor_high"], 3),
            "detected": r["direction"] in TREND_DIRECTIONS[:2],
        })
    return out


def scaling_rows(layout: Layout) -> list[dict]:
    """``lr_scaling.csv`` formatted: learning rate per B, the exponent and its resolution."""
    rows = []
    for r in records(read_csv(layout.analysis("lr_scaling.csv"))):
        rates = ", ".join(f"{pair.split(':')[0]}: {fmt(float(pair.split(':')[1]))}"
                          for pair in str(r["learning_rates"]).split())
        rows.append({"dataset": r["dataset"], "run": r["run"], "rates": rates,
                     "exponent": fmt(r["exponent"], 2),
                     "resolution": NA if missing(r["k_resolution"])
                     else f"± {fmt(r['k_resolution'], 2)}",
                     "rule": r["nearest_rule"]})
    return rows


def side_of(batch_size: int, b_simple: float) -> str:
    """Where a trained batch size stands against B_simple: "below" it (the noise-dominated
    range, where a larger batch buys nearly proportionally fewer steps), "above" it, or n/a."""
    if missing(b_simple) or not math.isfinite(float(b_simple)) or float(b_simple) <= 0:
        return NA
    return "below" if batch_size < float(b_simple) else "above"


def noise_rows(layout: Layout, datasets: Sequence[str], sizes: Sequence[int]) -> list[dict]:
    """Per dataset: B_simple (full training split) at each checkpoint with the side of every
    trained B, and how much the batch mean's noise falls from the smallest to the largest B by
    the slope measured at the last checkpoint (``falls``: that slope is two standard errors
    below zero)."""
    table = read_csv(layout.analysis(NOISE_SUMMARY))
    out = []
    for dataset in datasets:
        part = ([] if table is None else
                records(table[table["dataset"] == dataset].sort_values("epoch")))
        if not part:
            continue
        checkpoints = [{"checkpoint": str(r["checkpoint"]), "epoch": int(r["epoch"]),
                        "b_simple": number(r["b_simple_exact"]),
                        "sides": [side_of(b, r["b_simple_exact"]) for b in sizes]}
                       for r in part]
        below = [sum(c["sides"][i] == "below" for c in checkpoints) for i in range(len(sizes))]
        last = part[-1]
        slope, se = float(last["mean_noise_slope"]), float(last["mean_noise_slope_se"])
        fall = (sizes[-1] / sizes[0]) ** slope if len(sizes) > 1 else math.nan
        out.append({
            "dataset": dataset, "checkpoints": checkpoints,
            "below": [{"batch_size": b, "count": n} for b, n in zip(sizes, below, strict=True)],
            "total": len(checkpoints),
            "slope": plus_minus(last["mean_noise_slope"], last["mean_noise_slope_se"], 2),
            "fall": number(fall, 2),
            # better only where the measured slope lies two standard errors below zero
            "falls": bool(math.isfinite(fall) and slope + 2 * se < 0),
            "sigma_slope": plus_minus(last["sigma_slope"], last["sigma_slope_se"], 2),
        })
    return out


def report_context(layout: Layout, config: dict) -> dict:
    """The ``batch`` dict of the batch-size section, every number pre-formatted; ``noise_why``
    says why a profile does not run the noise study (None when it does, and ``noise`` is then
    empty)."""
    datasets = list(config.get("datasets", []))
    sizes = sorted(int(b) for b in config.get("batch_sizes", []))
    primary = (config.get("train") or {}).get("schedule", "constant")
    trend = trend_rows(layout, datasets)
    why = not_run_reason(config)
    main = [r for r in trend if r["outcome"] == "test accuracy" and r["schedule"] == primary]
    return {
        "sizes": sizes,
        "several": len(sizes) >= 2,
        "low": sizes[0] if sizes else None,
        "high": sizes[-1] if sizes else None,
        "trend": trend,
        "main": main,
        "detected": [r for r in main if r["detected"]],
        "scaling": scaling_rows(layout),
        "noise_why": why,
        "noise": noise_rows(layout, datasets, sizes) if why is None else [],
    }
