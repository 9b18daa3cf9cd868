"""The schedule contrast: is a run's gain over its base larger at a constant learning rate?

The stochastic-differential picture of the report's theory sections predicts it: at a
constant rate a gradient of lower variance lowers the stationary loss, while a decaying rate
cools every optimizer towards the same minimum. A profile with a decaying primary schedule
tests it with constant-rate arms (``R~constant``, :mod:`sngrad.names`), each compared seed by
seed (:mod:`sngrad.analysis.paired`) with the run of the primary schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from sngrad.analysis.paired import (
    CONFIDENCE,
    common_seed_values,
    final_epoch,
    seed_values,
    sign_flip_interval,
    sign_flip_p,
)
from sngrad.names import RunName
from sngrad.tables import OUTCOMES

SCHEDULE_COLUMNS = [
    "dataset", "batch_size", "run", "arm", "outcome", "n_pairs",
    "decay_mean", "decay_low", "decay_high", "constant_mean", "constant_low", "constant_high",
    "contrast_mean", "contrast_low", "contrast_high", "p_contrast", "held",
]


def schedule_contrast(metrics: pd.DataFrame, runs: Sequence[RunName],
                      batch_sizes: Sequence[int],
                      *, dataset: str, primary: str, epochs: int | None = None,
                      outcome: str = "train_loss") -> pd.DataFrame:
    """The theory's prediction, tested per run that has a constant-rate arm.

    For a run R trained under the profile's decaying schedule ``primary`` and as the arm
    ``R~constant``, with the bases b and ``b~constant``, the seed-wise differences are
    d_decay(s) = y_R(s) - y_b(s) and d_const(s) = y_R~constant(s) - y_b~constant(s), and the
    contrast c(s) = d_const(s) - d_decay(s); y is ``outcome`` after the last epoch (the final
    training loss: the stationary loss the SDE sections predict). The stochastic-differential
    picture says that at a constant rate a gradient of lower variance lowers the stationary
    loss (its temperature is eta times the noise over 2), and that a decaying rate, which
    cools every optimizer towards the same minimum, shrinks that gain. So the prediction holds
    (``held``) when the constant-rate arm is better than its base (interval below zero for a
    loss) and the contrast is below zero (its interval too): the gain is larger at a constant
    rate. Intervals are 95 % sign-flip intervals (:func:`sign_flip_interval`), marginal: the
    contrasts are not a Holm family, and ``p_contrast`` is the sign-flip p of c. Seeds where
    any of the four runs diverged are left out.
    """
    epochs = final_epoch(metrics) if epochs is None else int(epochs)
    values = seed_values(metrics, epochs, outcome)
    sign = 1.0 if OUTCOMES[outcome] else -1.0  # a gain is positive for an accuracy
    rows = []
    present = set(runs)
    for parsed in runs:
        parts = _arm_parts(parsed, primary)
        if parts is None or not set(parts) <= present:
            continue
        run = parsed.name  # the frames' keys
        arm, base, base_arm = (p.name for p in parts)
        for batch_size in batch_sizes:
            y = common_seed_values(values, [(r, batch_size) for r in (run, base, arm, base_arm)])
            n_pairs = len(y[0])
            decay, const = y[0] - y[1], y[2] - y[3]
            contrast = const - decay
            cells = {}
            for name, d in (("decay", decay), ("constant", const), ("contrast", contrast)):
                low, high = sign_flip_interval(d, 1 - CONFIDENCE)
                cells.update({f"{name}_mean": float(d.mean()) if d.size else math.nan,
                              f"{name}_low": low, f"{name}_high": high})
            # both intervals beyond zero on the side of a gain (NaN compares False)
            if sign > 0:
                held = cells["constant_low"] > 0 and cells["contrast_low"] > 0
            else:
                held = cells["constant_high"] < 0 and cells["contrast_high"] < 0
            rows.append({"dataset": dataset, "batch_size": int(batch_size), "run": run,
                         "arm": arm, "outcome": outcome, "n_pairs": n_pairs, **cells,
                         "p_contrast": sign_flip_p(contrast) if n_pairs >= 2 else math.nan,
                         "held": bool(held)})
    return pd.DataFrame(rows, columns=SCHEDULE_COLUMNS)


def _arm_parts(run: RunName, primary: str) -> tuple[RunName, RunName, RunName] | None:
    """(the run's constant-rate arm, its base, the base's arm) for a run of the primary
    schedule that has a base, else None (or when the primary schedule is constant)."""
    base = run.paired_base
    if run.schedule is not None or base is None or primary == "constant":
        return None
    return (run._replace(schedule="constant"), base, base._replace(schedule="constant"))
