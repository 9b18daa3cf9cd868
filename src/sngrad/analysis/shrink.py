"""What the noise-informed factors and the control variates did during training.

From ``diagnostics.csv`` (per epoch, per layer, averaged over the epoch's steps): the mean
factor and the share of shrunk coordinates of the sngrad runs (:func:`shrink_summary`, with a
network-wide row weighted by the layers' weight counts), and the control-variate coefficient
and variance reduction of the +cv / +svrg runs (:func:`control_variate_summary`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sngrad.analysis.loaders import CELL
from sngrad.architecture import Architecture
from sngrad.tables import (
    ALL_LAYERS,
)

SHRINK_COLUMNS = [
    "dataset",
    "optimizer",
    "batch_size",
    "layer",
    "factor_mean",
    "factor_first",
    "factor_last",
    "shrink_share",
    "shrink_first",
    "shrink_last",
]




def layer_weights(arch: Architecture) -> dict[str, int]:
    """Number of weights of each layer with parameters, keyed like ``diagnostics.csv``'s
    ``layer`` (its kernel: a dense layer's fan_in x fan_out, a convolution's k x k x in x out)."""
    return {str(i): layer.weights for i, layer in enumerate(arch.parametrised)}


def shrink_summary(diagnostics: pd.DataFrame, weights: dict | None = None) -> pd.DataFrame:
    """Per (run, B, layer): mean factor f and share of coordinates with f < 1.

    Averaged over seeds and epochs (``*_first`` / ``*_last``: first and last epoch only).
    Where the file has no network-wide ``all`` layer, one is added: the mean over layers
    weighted by each layer's number of weights, ``weights[dataset][layer]``
    (:func:`layer_weights`), so that it is the share of all the network's weights; without
    ``weights`` for a dataset each layer counts once. Runs without a factor (NaN
    ``factor_mean``, e.g. sgd) are left out.
    """
    keys = ["dataset", "optimizer", "batch_size"]
    if diagnostics.empty or "factor_mean" not in diagnostics:
        return pd.DataFrame(columns=SHRINK_COLUMNS)
    frame = diagnostics.copy()
    frame["factor_mean"] = pd.to_numeric(frame["factor_mean"], errors="coerce")
    frame["shrink_share"] = pd.to_numeric(frame.get("shrink_share"), errors="coerce")
    frame = frame[np.isfinite(frame["factor_mean"])]
    if frame.empty:
        return pd.DataFrame(columns=SHRINK_COLUMNS)
    frame["layer"] = frame["layer"].astype(str)
    weights = weights or {}
    frame["_w"] = [
        float(weights.get(d, {}).get(layer, 1.0)) if weights.get(d) else 1.0
        for d, layer in zip(frame["dataset"], frame["layer"], strict=True)
    ]
    has_all = frame.groupby(keys)["layer"].transform(lambda s: (s == ALL_LAYERS).any())
    parts = frame[~has_all].assign(
        _fw=lambda f: f["factor_mean"] * f["_w"], _sw=lambda f: f["shrink_share"] * f["_w"]
    )
    sums = parts.groupby([*keys, "seed", "epoch"])[["_fw", "_sw", "_w"]].sum().reset_index()
    extra = sums.assign(
        factor_mean=sums["_fw"] / sums["_w"],
        shrink_share=sums["_sw"] / sums["_w"],
        layer=ALL_LAYERS,
    )[[*keys, "seed", "epoch", "factor_mean", "shrink_share", "layer"]]
    frame = pd.concat([frame.drop(columns="_w"), extra], ignore_index=True)
    per_epoch = frame.groupby([*keys, "layer", "epoch"])[["factor_mean", "shrink_share"]].mean()
    per_epoch = per_epoch.reset_index().sort_values("epoch")
    rows = []
    for key, cell in per_epoch.groupby([*keys, "layer"], sort=True):
        rows.append(
            {
                **dict(zip([*keys, "layer"], key, strict=True)),
                "factor_mean": cell["factor_mean"].mean(),
                "factor_first": cell["factor_mean"].iloc[0],
                "factor_last": cell["factor_mean"].iloc[-1],
                "shrink_share": cell["shrink_share"].mean(),
                "shrink_first": cell["shrink_share"].iloc[0],
                "shrink_last": cell["shrink_share"].iloc[-1],
            }
        )
    return pd.DataFrame(rows, columns=SHRINK_COLUMNS)


def shrink_curves(diagnostics: pd.DataFrame) -> pd.DataFrame:
    """factor_mean and shrink_share per (run, B, layer, epoch), mean over seeds."""
    if diagnostics.empty or "factor_mean" not in diagnostics:
        return pd.DataFrame(columns=[*CELL, "layer", "epoch", "factor_mean", "shrink_share"])
    frame = diagnostics.copy()
    for column in ("factor_mean", "shrink_share"):
        frame[column] = pd.to_numeric(frame.get(column), errors="coerce")
    frame = frame[np.isfinite(frame["factor_mean"])]
    frame["layer"] = frame["layer"].astype(str)
    return (
        frame.groupby([*CELL, "layer", "epoch"])[["factor_mean", "shrink_share"]]
        .mean()
        .reset_index()
    )


CV_COLUMNS = [
    "dataset",
    "optimizer",
    "batch_size",
    "lambda_median",
    "lambda_first",
    "lambda_last",
    "variance_ratio",
    "variance_ratio_first",
    "variance_ratio_last",
]


def control_variate_summary(diagnostics: pd.DataFrame) -> pd.DataFrame:
    """Per control-variate run: median lambda and achieved variance ratio (var with / var
    without the control variate), averaged over seeds and layers, over all epochs and at the
    first and last. Files without the cv columns, or runs with only NaN there, give no row.
    """
    needed = {"lambda_median", "variance_ratio"}
    if diagnostics.empty or not needed <= set(diagnostics.columns):
        return pd.DataFrame(columns=CV_COLUMNS)
    frame = diagnostics.copy()
    for column in needed:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame = frame[np.isfinite(frame["variance_ratio"]) | np.isfinite(frame["lambda_median"])]
    rows = []
    for key, cell in frame.groupby(CELL, sort=True):
        per_epoch = cell.groupby("epoch")[["lambda_median", "variance_ratio"]].mean().sort_index()
        rows.append(
            {
                **dict(zip(CELL, key, strict=True)),
                "lambda_median": per_epoch["lambda_median"].mean(),
                "lambda_first": per_epoch["lambda_median"].iloc[0],
                "lambda_last": per_epoch["lambda_median"].iloc[-1],
                "variance_ratio": per_epoch["variance_ratio"].mean(),
                "variance_ratio_first": per_epoch["variance_ratio"].iloc[0],
                "variance_ratio_last": per_epoch["variance_ratio"].iloc[-1],
            }
        )
    return pd.DataFrame(rows, columns=CV_COLUMNS)


def cv_curves(diagnostics: pd.DataFrame) -> pd.DataFrame:
    """lambda_median and variance_ratio per (run, B, epoch), mean over seeds and layers."""
    needed = ["lambda_median", "variance_ratio"]
    if diagnostics.empty or not set(needed) <= set(diagnostics.columns):
        return pd.DataFrame(columns=[*CELL, "epoch", *needed])
    frame = diagnostics.copy()
    for column in needed:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame = frame[np.isfinite(frame["variance_ratio"]) | np.isfinite(frame["lambda_median"])]
    return frame.groupby([*CELL, "epoch"])[needed].mean().reset_index()


def mean_factors(summary: pd.DataFrame) -> dict[tuple[str, int], float]:
    """{(run, batch size): mean factor over training, network-wide} from
    :func:`shrink_summary` (its ``all`` layer): what the no-op rule of
    :mod:`sngrad.analysis.paired` reads."""
    rows = summary[summary["layer"].astype(str) == ALL_LAYERS] if len(summary) else summary
    return {(r["optimizer"], int(r["batch_size"])): float(r["factor_mean"])
            for _, r in rows.iterrows()}
