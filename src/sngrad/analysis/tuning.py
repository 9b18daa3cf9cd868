"""Tuning and sensitivity: the tuning settings scored, the pick, the per-axis search, lr and
alpha tables.

The pick of a cell is the one the tune command made (``chosen`` in tuning.csv, by the tie rule
of :mod:`sngrad.train.protocol`); it is read, never re-selected here. A setting's score is its
mean validation accuracy over the tuning seeds (never the test split); settings with a
diverged seed are excluded. The best and worst alpha of the sensitivity table are the highest
and lowest score on the pick's alpha line (ties: lower validation loss, then grid order).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sngrad.analysis.loaders import CELL, as_flag
from sngrad.names import parse_run

NEAR_BEST = 0.01  # accuracy within one point of the best counts as "near the best"


def tuning_settings(tuning: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, optimizer, batch_size, setting), seeds averaged.

    ``val_accuracy``, ``val_loss``, ``train_loss``: means over tuning seeds; ``diverged``:
    any seed diverged; ``order``: position of the setting's first row (grid order).
    """
    keys = [k for k in ("dataset", "optimizer", "batch_size") if k in tuning.columns]
    if tuning.empty:
        return pd.DataFrame(
            columns=[
                *keys,
                "setting",
                "learning_rate",
                "momentum",
                "alpha",
                "alpha_scaled",
                "step",
                "round",
                "val_accuracy",
                "val_loss",
                "train_loss",
                "diverged",
                "chosen",
                "n_seeds",
                "order",
            ]
        )
    frame = tuning.assign(
        diverged=as_flag(tuning["diverged"]),
        chosen=as_flag(tuning["chosen"]) if "chosen" in tuning else False,
        order=np.arange(len(tuning)),
    )
    for column in ("momentum", "alpha", "alpha_scaled", "step", "round"):
        if column not in frame:
            frame[column] = math.nan
    return (
        frame.groupby([*keys, "setting"], sort=False, dropna=False)
        .agg(
            learning_rate=("learning_rate", "first"),
            momentum=("momentum", "first"),
            alpha=("alpha", "first"),
            alpha_scaled=("alpha_scaled", "first"),
            step=("step", "first"),
            round=("round", "first"),
            val_accuracy=("val_accuracy", "mean"),
            val_loss=("val_loss", "mean"),
            train_loss=("train_loss", "mean"),
            diverged=("diverged", "any"),
            chosen=("chosen", "any"),
            n_seeds=("seed", "nunique"),
            order=("order", "min"),
        )
        .reset_index()
    )


def select_best(settings: pd.DataFrame):
    """Label of the best row of :func:`tuning_settings` (one cell), or None if all diverged.

    Highest mean validation accuracy among settings with no diverged seed; ties: lower mean
    validation loss, then earlier ``order``. Test metrics are never looked at.
    """
    valid = settings[~settings["diverged"].astype(bool)]
    valid = valid[np.isfinite(valid["val_accuracy"].astype(float))]
    if valid.empty:
        return None
    ranked = valid.assign(_loss=valid["val_loss"].astype(float).fillna(math.inf))
    ranked = ranked.sort_values(
        ["val_accuracy", "_loss", "order"], ascending=[False, True, True], kind="stable"
    )
    return ranked.index[0]


def chosen_setting(settings: pd.DataFrame):
    """Label of the tune command's pick in one cell of :func:`tuning_settings`, or None."""
    hit = settings.index[settings["chosen"].astype(bool)]
    return hit[0] if len(hit) else None


def select_worst(settings: pd.DataFrame):
    """Label of the worst non-diverged setting (lowest mean validation accuracy), or None."""
    valid = settings[~settings["diverged"].astype(bool)]
    valid = valid[np.isfinite(valid["val_accuracy"].astype(float))]
    if valid.empty:
        return None
    ranked = valid.assign(_loss=valid["val_loss"].astype(float).fillna(math.inf))
    ranked = ranked.sort_values(
        ["val_accuracy", "_loss", "order"], ascending=[True, False, True], kind="stable"
    )
    return ranked.index[0]




def lr_curve(settings: pd.DataFrame) -> pd.DataFrame:
    """Per cell and learning rate: the best mean validation accuracy over the second axis.

    ``all_diverged`` marks learning rates where every setting diverged (accuracy NaN).
    """
    rows = []
    for key, cell in settings.groupby([*CELL, "learning_rate"], sort=True):
        ok = cell[~cell["diverged"].astype(bool)]
        rows.append(
            dict(
                zip([*CELL, "learning_rate"], key, strict=True),
                val_accuracy=float(ok["val_accuracy"].max()) if len(ok) else math.nan,
                all_diverged=ok.empty,
                chosen=bool(cell["chosen"].any()),
            )
        )
    return pd.DataFrame(
        rows, columns=[*CELL, "learning_rate", "val_accuracy", "all_diverged", "chosen"]
    )


LR_COLUMNS = [
    "dataset",
    "optimizer",
    "batch_size",
    "settings",
    "diverged_settings",
    "lr_low",
    "lr_high",
    "chosen_learning_rate",
    "axis",
    "chosen_position",
    "extension_rounds",
    "at_bound",
    "all_diverged",
    "best_val_accuracy",
    "share_near_best",
]


def lr_summary(settings: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """Per cell: how many settings were tried and diverged, the range tried of the step-size
    axis (``axis``: ``learning_rate``, or ``step`` = eta / alpha_scaled for I and II with a
    tuned alpha), where the pick lies in it (low end, interior, high end), extension rounds,
    ``at_bound`` and ``all_diverged`` from ``best.json``, and the share of valid settings whose
    validation accuracy is within one point of the best (a flat optimum has a high share).
    """
    rows = []
    for key, cell in settings.groupby(CELL, sort=True):
        record = _best_record(best, *key)
        index = chosen_setting(cell)
        chosen = cell.loc[index] if index is not None else None
        # the run's step-size axis: eta / alpha_scaled where that is what it tunes (I, II)
        first = "step" if _has(cell, cell.index[0], "step") else "learning_rate"
        lrs = cell[first].astype(float)
        ok = cell[~cell["diverged"].astype(bool)]["val_accuracy"].astype(float)
        top = ok.max() if len(ok) else math.nan
        if chosen is None:
            position = "none"
        elif np.isclose(chosen[first], lrs.min()):
            position = "low end"
        elif np.isclose(chosen[first], lrs.max()):
            position = "high end"
        else:
            position = "interior"
        rounds = pd.to_numeric(cell["round"], errors="coerce")
        rows.append(
            {
                **dict(zip(CELL, key, strict=True)),
                "settings": len(cell),
                "diverged_settings": int(cell["diverged"].astype(bool).sum()),
                "lr_low": float(lrs.min()),
                "lr_high": float(lrs.max()),
                "chosen_learning_rate": float(chosen[first])
                if chosen is not None
                else math.nan,
                "axis": first,
                "chosen_position": position,
                "extension_rounds": int(rounds.max()) if rounds.notna().any() else 0,
                "at_bound": bool(record.get("at_bound", False)),
                "all_diverged": bool(record.get("all_diverged", chosen is None)),
                "best_val_accuracy": float(top),
                "share_near_best": float((ok >= top - NEAR_BEST).mean()) if len(ok) else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=LR_COLUMNS)


def _best_record(best: pd.DataFrame, dataset, run, batch_size) -> dict:
    if best is None or best.empty:
        return {}
    hit = best[
        (best["dataset"] == dataset)
        & (best["run"] == run)
        & (best["batch_size"] == int(batch_size))
    ]
    return hit.iloc[0].to_dict() if len(hit) else {}


ALPHA_COLUMNS = [
    "dataset",
    "optimizer",
    "variant",
    "batch_size",
    "learning_rate",
    "alpha_scaled",
    "alpha",
    "val_accuracy",
    "val_loss",
    "diverged",
    "chosen",
    "best",
    "worst",
]


def alpha_table(settings: pd.DataFrame) -> pd.DataFrame:
    """For each sngrad run with a tuned alpha: validation accuracy against scale-free alpha on
    the pick's line (its first-axis value, eta or eta / alpha_scaled, and its momentum), with
    the best and worst alpha by validation flagged. ``learning_rate`` is the pick's.
    """
    rows = []
    for key, cell in settings.groupby(CELL, sort=True):
        run = parse_run(key[1])  # a run name read from a table, parsed where it is read
        if run.variant is None or run.fixed_alpha is not None:
            continue
        index = chosen_setting(cell)
        if index is None:
            continue
        lr = float(cell.loc[index, "learning_rate"])
        line = cell[_same(cell, index, "step" if _has(cell, index, "step") else "learning_rate")]
        if _has(cell, index, "momentum"):
            line = line[_same(line, index, "momentum")]
        line = line.sort_values("alpha_scaled")
        best_i, worst_i = select_best(line), select_worst(line)
        for i, r in line.iterrows():
            rows.append(
                {
                    **dict(zip(CELL, key, strict=True)),
                    "variant": run.variant,
                    "learning_rate": lr,
                    "alpha_scaled": r["alpha_scaled"],
                    "alpha": r["alpha"],
                    "val_accuracy": r["val_accuracy"],
                    "val_loss": r["val_loss"],
                    "diverged": bool(r["diverged"]),
                    "chosen": i == index,
                    "best": i == best_i,
                    "worst": i == worst_i,
                }
            )
    return pd.DataFrame(rows, columns=ALPHA_COLUMNS)


def _has(cell: pd.DataFrame, index, column: str) -> bool:
    return column in cell and np.isfinite(pd.to_numeric(cell.loc[index, column], errors="coerce"))


def _same(cell: pd.DataFrame, index, column: str) -> pd.Series:
    values = pd.to_numeric(cell[column], errors="coerce").astype(float)
    return pd.Series(np.isclose(values, float(cell.loc[index, column])), index=cell.index)


AXES_COLUMNS = [
    *CELL,
    "axis",
    "n_tried",
    "tried_low",
    "tried_high",
    "pick",
    "status",
    "resolution",
    "trials",
]


def tuning_axes(best: pd.DataFrame) -> pd.DataFrame:
    """One row per cell and tuned axis, from best.json's ``axes``: the values tried (count and
    range), the pick, its status (interior, edge, bound, none) and the final resolution (the
    ratio between neighbouring values), with the cell's number of settings (``trials``)."""
    rows = []
    if best is None or best.empty or "axes" not in best:
        return pd.DataFrame(columns=AXES_COLUMNS)
    for _, record in best.sort_values(["dataset", "run", "batch_size"]).iterrows():
        axes = record["axes"] if isinstance(record["axes"], dict) else {}
        for axis, a in axes.items():
            tried = [float(v) for v in a["tried"]]
            rows.append({
                "dataset": record["dataset"], "optimizer": record["run"],
                "batch_size": int(record["batch_size"]), "axis": axis, "n_tried": len(tried),
                "tried_low": min(tried), "tried_high": max(tried),
                "pick": math.nan if a["pick"] is None else float(a["pick"]),
                "status": a["status"], "resolution": float(a["resolution"]),
                "trials": int(record["trials"]),
            })
    return pd.DataFrame(rows, columns=AXES_COLUMNS)


ALPHA_SUMMARY_COLUMNS = [
    *CELL,
    "variant",
    "learning_rate",
    "alphas_scaled",
    "diverged_alphas",
    "best_alpha_scaled",
    "worst_alpha_scaled",
    "best_val_accuracy",
    "worst_val_accuracy",
    "spread",
]


def alpha_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per run: alphas tried, best and worst scale-free alpha (validation) and the spread.

    ``alphas_scaled`` is the text of the alphas tried, in order, separated by spaces.
    """
    rows = []
    for key, line in table.groupby(CELL, sort=True):
        best = line[line["best"].astype(bool)]
        worst = line[line["worst"].astype(bool)]
        b = best.iloc[0] if len(best) else None
        w = worst.iloc[0] if len(worst) else None
        rows.append(
            {
                **dict(zip(CELL, key, strict=True)),
                "variant": line["variant"].iloc[0],
                "learning_rate": line["learning_rate"].iloc[0],
                # the alphas tried, space-separated (one CSV cell; each float round-trips)
                "alphas_scaled": " ".join(repr(float(a)) for a in line["alpha_scaled"]),
                "diverged_alphas": int(line["diverged"].astype(bool).sum()),
                "best_alpha_scaled": math.nan if b is None else float(b["alpha_scaled"]),
                "worst_alpha_scaled": math.nan if w is None else float(w["alpha_scaled"]),
                "best_val_accuracy": math.nan if b is None else float(b["val_accuracy"]),
                "worst_val_accuracy": math.nan if w is None else float(w["val_accuracy"]),
                "spread": math.nan
                if b is None or w is None
                else float(b["val_accuracy"] - w["val_accuracy"]),
            }
        )
    return pd.DataFrame(rows, columns=ALPHA_SUMMARY_COLUMNS)


def diverged_settings(settings: pd.DataFrame) -> pd.DataFrame:
    """The tuning settings with a diverged seed, for the report's list."""
    cols = [*CELL, "setting", "learning_rate", "momentum", "alpha", "alpha_scaled"]
    return settings[settings["diverged"].astype(bool)][cols].reset_index(drop=True)
