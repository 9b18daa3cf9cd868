"""Training curves and whether the base optimizers trained long enough.

Training-length criterion. A base optimizer (sgd, momentum, adam) has trained long enough
when its mean training loss over final seeds fell, over the last quarter of the epochs
(ceil(E / 4) epochs), by at most ``FLAT_SHARE`` (10 %) of its total decrease from the first
to the last epoch: (L_{E-q} - L_E) <= 0.10 (L_1 - L_E).

"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sngrad.analysis.loaders import as_flag
from sngrad.names import PAIRED_BASES
from sngrad.tables import (
    FLAT_SHARE,
)


def curves(metrics: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, std and count over non-diverged seeds of ``column`` per (run, B, epoch).

    A seed is dropped from every epoch from the one it diverged at on (whether or not it
    kept recording rows); ``n_diverged`` counts the seeds that had diverged by that epoch, so
    a plot can mark them instead of drawing zeros.
    """
    cell = ["dataset", "optimizer", "batch_size"]
    keys = [*cell, "seed"]
    frame = metrics.assign(_div=as_flag(metrics["diverged"])).sort_values([*keys, "epoch"])
    frame["_div"] = frame.groupby(keys)["_div"].cummax()
    value = pd.to_numeric(frame[column], errors="coerce")
    frame["_value"] = value.where(~frame["_div"] & np.isfinite(value))
    out = (
        frame.groupby([*cell, "epoch"])
        .agg(mean=("_value", "mean"), std=("_value", "std"), n=("_value", "count"))
        .reset_index()
    )
    died = divergence_epochs(metrics)
    counts = [
        int(((died[cell] == row[cell]).all(axis=1) & (died["epoch"] <= row["epoch"])).sum())
        for _, row in out.iterrows()
    ]
    out["n_diverged"] = counts
    return out


def divergence_epochs(metrics: pd.DataFrame) -> pd.DataFrame:
    """First epoch at which each (run, B, seed) diverged (only seeds that did)."""
    frame = metrics.assign(_div=as_flag(metrics["diverged"]))
    hit = frame[frame["_div"]]
    return hit.groupby(["dataset", "optimizer", "batch_size", "seed"])["epoch"].min().reset_index()


TRAINING_LENGTH_COLUMNS = [
    "dataset",
    "optimizer",
    "batch_size",
    "epochs",
    "quarter",
    "loss_first",
    "loss_quarter",
    "loss_last",
    "decrease_total",
    "decrease_last_quarter",
    "share_last_quarter",
    "criterion",
    "met",
]


def training_length(metrics: pd.DataFrame, flat_share: float = FLAT_SHARE) -> pd.DataFrame:
    """The training-length criterion (module docstring) for every base optimizer's cell."""
    base = metrics[metrics["optimizer"].isin(PAIRED_BASES)]
    rows = []
    if base.empty:
        return pd.DataFrame(columns=TRAINING_LENGTH_COLUMNS)
    loss = curves(base, "train_loss")
    for key, cell in loss.groupby(["dataset", "optimizer", "batch_size"], sort=True):
        cell = cell[cell["epoch"] >= 1].sort_values("epoch")
        epochs = int(cell["epoch"].max()) if len(cell) else 0
        quarter = max(1, math.ceil(epochs / 4))
        by_epoch = cell.set_index("epoch")["mean"]
        first = by_epoch.get(int(cell["epoch"].min()), math.nan) if len(cell) else math.nan
        last = by_epoch.get(epochs, math.nan)
        mid = by_epoch.get(epochs - quarter, math.nan)
        total, recent = first - last, mid - last
        share = recent / total if np.isfinite(total) and total > 0 else math.nan
        met = bool(np.isfinite(share) and share <= flat_share)
        rows.append(
            {
                **dict(zip(["dataset", "optimizer", "batch_size"], key, strict=True)),
                "epochs": epochs,
                "quarter": quarter,
                "loss_first": first,
                "loss_quarter": mid,
                "loss_last": last,
                "decrease_total": total,
                "decrease_last_quarter": recent,
                "share_last_quarter": share,
                "criterion": flat_share,
                "met": met,
            }
        )
    return pd.DataFrame(rows, columns=TRAINING_LENGTH_COLUMNS)
