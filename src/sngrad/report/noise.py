"""The gradient-noise section (noise.md.j2): the pooled noise summary, and what it means.

Reads the gradient_noise notebook's ``noise_summary.csv`` (one row per dataset and
checkpoint) and turns it into text, including where the seed's batch sizes stand against the
measured noise scale (:func:`regime`); for a profile that does not run the study, why not
(:func:`not_run_reason`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from sngrad.architecture import model_kind
from sngrad.layout import NOISE_SUMMARY, noise_enabled
from sngrad.names import VARIANTS
from sngrad.profile import NOISE_SUMMARY_BATCH_SIZE, SEED_STUDY_BATCH_SIZES
from sngrad.report.format import number, percent, plus_minus


def not_run_reason(config: Mapping) -> str | None:
    """Why the profile does not run the noise study, as a clause that completes "This profile
    does not run the noise study: ..."; None when it runs it."""
    if noise_enabled(config):
        return None
    kind = model_kind(config.get("model") or {})
    if kind != "mlp":
        return (f"it trains a {kind} model, and the study's exact per-layer passes are written "
                "for the dense layers of an MLP (`noise.enabled: false`)")
    return ("`noise.enabled` is false, so there is no reference run, no noise measurement and "
            "no `gradient_noise` notebook")


def regime(b_simple: float) -> str:
    """Where the seed's batch sizes lo-hi (128-1024) stand relative to B_simple: above the
    range (every batch size of the seed below B_simple), inside it (lo <= B_simple <= hi), or
    below it; "well" above or below beyond a factor of 2."""
    lo, hi = SEED_STUDY_BATCH_SIZES
    if not math.isfinite(b_simple) or b_simple <= 0:
        return "not measurable (the unbiased |G|^2 is not positive)"
    if b_simple > hi:
        well = "well " if b_simple > 2 * hi else ""
        return (
            f"{well}above the seed's largest batch size {hi}: every batch size of the seed's "
            "study is below it, in the noise-dominated range where a larger batch buys "
            "almost proportionally fewer steps"
        )
    if b_simple < lo:
        well = "well " if b_simple < lo / 2 else ""
        return (
            f"{well}below the seed's smallest batch size {lo}: every batch size of the seed's "
            "study is above it, where more examples per step buy little"
        )
    return (
        f"inside the seed's range {lo}-{hi}: its smaller batch sizes are in the noise-dominated "
        "range, its larger ones past the point of diminishing returns"
    )


def _resolved(row: Mapping) -> bool:
    """Whether the pooled B_simple of a summary row was resolved (a bool, or its CSV text)."""
    return str(row["b_simple_resolved"]) == "True"


def _checkpoint_context(row: Mapping) -> dict:
    out = {
        "checkpoint": str(row["checkpoint"]),
        "epoch": str(int(row["epoch"])),
        "b_simple": (plus_minus(row["b_simple"], row["b_simple_se"])
                     if _resolved(row) else "not resolved"),
        "b_simple_exact": number(row["b_simple_exact"]),
        "b_simple_biased": number(row["b_simple_biased"]),
        "regime": regime(float(row["b_simple_exact"])),
        "snr": number(row["snr_batch_median"]),
        "snr_null": number(row["snr_pure_noise"]),
        "above": percent(row["snr_above_share"]),
        "sparse": percent(row["sparse_share"]),
        "single": percent(row["single_share"]),
        "sigma_exact": number(row["sigma_median_exact"]),
        "sparse_bmin": percent(row["sparse_share_bmin"]),
        "single_bmin": percent(row["single_share_bmin"]),
        "sparse_layers": ", ".join(
            f"layer {k.removeprefix('sparse_share_layer')} {percent(v)}"
            for k, v in row.items()
            if str(k).startswith("sparse_share_layer")
        ),
    }
    for kind in ("factor_mean", "shrink_share"):
        for setting in ("tuned", "alpha1"):
            fmt = number if kind == "factor_mean" else percent
            out[f"{kind}_{setting}"] = {v: fmt(row[f"{kind}_{v}_{setting}"]) for v in VARIANTS}
            out[f"{kind}_{setting}_bmax"] = {
                v: fmt(row[f"{kind}_{v}_{setting}_bmax"]) for v in VARIANTS
            }
    return out


def report_context(layout, datasets: Sequence[str], config: Mapping | None = None) -> dict:
    """The ``noise`` dict of the report's gradient-noise section, every number pre-formatted.

    Reads ``layout.analysis(NOISE_SUMMARY)`` (written by the gradient_noise notebook), unless
    ``config`` is a profile that does not run the noise study. Keys: ``enabled`` (bool: the
    profile runs the study), ``why`` (:func:`not_run_reason`, None when enabled),
    ``available`` (bool), ``missing`` (datasets without a summary), ``batch_size`` (the summary
    batch size), ``seed_batch_sizes`` ("128-1024"), and ``datasets``: one dict per dataset with
    ``name``, ``largest_batch_size``, ``checkpoints`` (list of dicts: checkpoint, epoch,
    b_simple "x ± se", b_simple_exact, b_simple_biased, regime (a sentence fragment), snr,
    snr_null, above, sparse, single, sparse_bmin, single_bmin (at the smallest batch size),
    sparse_layers, sigma_exact, and factor_mean_<setting>,
    shrink_share_<setting> (+ ``_bmax``), each ``{variant: text}`` for setting tuned/alpha1),
    ``first`` and ``last`` (the first and last of those), ``mean_noise_slope``,
    ``mean_error_slope``, ``sigma_slope`` ("x ± se"), ``sigma_ratio``, ``sigma_changes`` and
    ``sigma_rises`` (bools), ``smallest_batch_size``, ``slopes`` (per checkpoint), and
    ``b_simple_trend`` ("grows" / "falls" / "stays about the same").
    """
    path = Path(layout.analysis(NOISE_SUMMARY))
    lo, hi = SEED_STUDY_BATCH_SIZES
    why = None if config is None else not_run_reason(config)
    empty = {
        "enabled": why is None,
        "why": why,
        "available": False,
        "missing": list(datasets),
        "datasets": [],
        "batch_size": NOISE_SUMMARY_BATCH_SIZE,
        "seed_batch_sizes": f"{lo}-{hi}",
    }
    # a summary left from an earlier run of the study is not this profile's result
    if why is not None or not path.exists():
        return empty
    table = pd.read_csv(path)
    out = {**empty, "available": True, "missing": []}
    for name in datasets:
        part = table[table["dataset"] == name].sort_values("epoch")
        if part.empty:
            out["missing"].append(name)
            continue
        records = part.to_dict("records")
        checkpoints = [_checkpoint_context(r) for r in records]
        last = records[-1]
        ratio = float(last["b_simple_exact"]) / float(records[0]["b_simple_exact"])
        trend = "grows" if ratio > 1.25 else "falls" if ratio < 0.8 else "stays about the same"
        out["datasets"].append(
            {
                "name": name,
                "largest_batch_size": str(int(last["largest_batch_size"])),
                "checkpoints": checkpoints,
                "first": checkpoints[0],
                "last": checkpoints[-1],
                "b_simple_trend": trend,
                "mean_noise_slope": plus_minus(
                    last["mean_noise_slope"], last["mean_noise_slope_se"], 2
                ),
                "mean_error_slope": plus_minus(
                    last["mean_error_slope"], last["mean_error_slope_se"], 2
                ),
                "sigma_slope": plus_minus(last["sigma_slope"], last["sigma_slope_se"], 2),
                "sigma_ratio": number(last["sigma_ratio"], 2),
                "sigma_changes": bool(last["sigma_changes"]),
                "sigma_rises": bool(float(last["sigma_ratio"]) > 1),
                "smallest_batch_size": str(int(last["smallest_batch_size"])),
                "slopes": [
                    {
                        "checkpoint": str(r["checkpoint"]),
                        "mean_noise": plus_minus(
                            r["mean_noise_slope"], r["mean_noise_slope_se"], 2
                        ),
                        "mean_error": plus_minus(
                            r["mean_error_slope"], r["mean_error_slope_se"], 2
                        ),
                        "sigma": plus_minus(r["sigma_slope"], r["sigma_slope_se"], 2),
                        "sigma_ratio": number(r["sigma_ratio"], 2),
                    }
                    for r in records
                ],
            }
        )
    out["available"] = bool(out["datasets"])
    return out
