"""The tables each analysis notebook writes, built from the topic modules.

``dataset_tables`` is the summary notebook's (summary and paired tables of one dataset),
``performance_tables`` the performance notebook's (``layout.NOTEBOOK_TABLES``), ``run_groups``
the performance notebook's grouping of runs into readable plot panels.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from sngrad.analysis.batch_trend import TREND_COLUMNS, batch_trend
from sngrad.analysis.loaders import read_best, read_run_tables
from sngrad.analysis.paired import paired_table, summary_table, winners
from sngrad.analysis.schedules import SCHEDULE_COLUMNS, schedule_contrast
from sngrad.analysis.shrink import (
    control_variate_summary,
    layer_weights,
    mean_factors,
    shrink_summary,
)
from sngrad.analysis.training_length import (
    TRAINING_LENGTH_COLUMNS,
    training_length,
)
from sngrad.analysis.tuning import (
    ALPHA_COLUMNS,
    ALPHA_SUMMARY_COLUMNS,
    LR_COLUMNS,
    alpha_summary,
    alpha_table,
    diverged_settings,
    lr_summary,
    tuning_axes,
    tuning_settings,
)
from sngrad.architecture import Architecture
from sngrad.names import RunName
from sngrad.profile import data_architecture
from sngrad.tables import (
    PAIRED_COLUMNS,
    SUMMARY_COLUMNS,
)


def network(model: Mapping, dataset: str, meta: Mapping) -> Architecture:
    """The profile's network (its ``model:`` section) on ``dataset`` as its data sidecar
    ``meta`` describes it (:func:`sngrad.profile.data_architecture`)."""
    return data_architecture(model, dataset, meta["feature_dim"], meta["num_classes"])


def network_weights(layout, datasets, model: Mapping | None) -> dict[str, dict[str, int]]:
    """{dataset: :func:`layer_weights`} from the data sidecars (datasets without one, or
    every dataset without a ``model``: none)."""
    out = {}
    for dataset in datasets if model else ():
        path = Path(layout.data_meta(dataset))
        if path.exists():
            meta = json.loads(path.read_text())
            out[dataset] = layer_weights(network(model, dataset, meta))
    return out


def dataset_tables(layout, dataset: str, runs: Sequence[RunName], batch_sizes, config: dict):
    """(summary, paired, winners, schedules, trend) of one dataset: what the summary notebook
    writes (``trend``: :func:`sngrad.analysis.batch_trend.batch_trend`); ``runs`` parsed
    where the notebook reads them.

    ``config`` supplies the epoch count (``train.epochs``); the equal-compute family reads
    every run's ``budget.csv``.
    """
    epochs = (config.get("train") or {}).get("epochs")
    primary = (config.get("train") or {}).get("schedule", "constant")
    names = [run.name for run in runs]  # the files' folders
    metrics, _ = read_run_tables(layout, [dataset], names, batch_sizes, "metrics.csv")
    budget, _ = read_run_tables(layout, [dataset], names, batch_sizes, "budget.csv")
    diagnostics, _ = read_run_tables(layout, [dataset], names, batch_sizes, "diagnostics.csv")
    best = read_best(layout, [dataset], names, batch_sizes)
    factors = mean_factors(shrink_summary(diagnostics,
                                          network_weights(layout, [dataset], config.get("model"))))
    if metrics.empty and epochs is None:
        summary = pd.DataFrame(columns=SUMMARY_COLUMNS)
    else:
        summary = summary_table(best, metrics, runs, batch_sizes, dataset=dataset, epochs=epochs)
    if metrics.empty:
        paired = pd.DataFrame(columns=PAIRED_COLUMNS)
        schedules = pd.DataFrame(columns=SCHEDULE_COLUMNS)
        trend = pd.DataFrame(columns=TREND_COLUMNS)
    else:
        paired = paired_table(
            metrics, runs, batch_sizes, dataset=dataset, budget=budget, epochs=epochs,
            factors=factors, primary=primary,
        )
        schedules = schedule_contrast(metrics, runs, batch_sizes, dataset=dataset,
                                      primary=primary, epochs=epochs)
        trend = batch_trend(metrics, runs, batch_sizes, dataset=dataset, primary=primary,
                            epochs=epochs, factors=factors)
    no_op = paired[paired["no_op"].astype(bool)][["run", "batch_size"]].drop_duplicates()
    return (summary, paired, winners(summary, no_op.itertuples(index=False)), schedules,
            trend)


def performance_tables(layout, datasets, runs: Sequence[RunName], batch_sizes,
                       model: Mapping | None = None) -> dict[str, pd.DataFrame]:
    """The performance notebook's tables, keyed by file name (``layout.NOTEBOOK_TABLES``);
    ``model``: the profile's network (its layers' weights weight the network-wide shrink
    share)."""
    names = [run.name for run in runs]  # the files' folders
    metrics, _ = read_run_tables(layout, datasets, names, batch_sizes, "metrics.csv")
    tuning, _ = read_run_tables(layout, datasets, names, batch_sizes, "tuning.csv")
    diagnostics, _ = read_run_tables(layout, datasets, names, batch_sizes, "diagnostics.csv")
    best = read_best(layout, datasets, names, batch_sizes)
    settings = tuning_settings(tuning)
    alpha = alpha_table(settings) if len(settings) else pd.DataFrame(columns=ALPHA_COLUMNS)
    return {
        "lr_sensitivity.csv": lr_summary(settings, best)
        if len(settings)
        else pd.DataFrame(columns=LR_COLUMNS),
        "alpha_sensitivity.csv": alpha,
        "alpha_summary.csv": alpha_summary(alpha)
        if len(alpha)
        else pd.DataFrame(columns=ALPHA_SUMMARY_COLUMNS),
        "diverged_settings.csv": diverged_settings(settings),
        "tuning_axes.csv": tuning_axes(best),
        "training_length.csv": training_length(metrics)
        if len(metrics)
        else pd.DataFrame(columns=TRAINING_LENGTH_COLUMNS),
        "shrink.csv": shrink_summary(diagnostics, network_weights(layout, datasets, model)),
        "control_variates.csv": control_variate_summary(diagnostics),
    }


def run_groups(runs: Sequence[RunName]) -> dict[str, list[RunName]]:
    """The runs split into groups small enough to read in one panel, each with its base.

    ``sgd`` with its noise-informed variants (tuned and prototype alpha); ``sgd`` with the
    established relatives (svag, msvag, control variates); ``momentum`` and ``adam`` with
    theirs (adabelief joins adam); anything else under "other runs". A base alone keeps its own
    group (sgd only once); the ``~schedule`` arms form a group of their own; a profile of
    bases only is one group, "all runs".
    """
    groups: dict[str, list[str]] = {
        "sgd and its noise-informed variants": [],
        "sgd and its relatives": [],
        "momentum and its variants": [],
        "adam and its relatives": [],
    }
    names = list(groups)
    sgd = next((run for run in runs if run.name == "sgd"), None)
    for run in runs:
        if run.schedule is not None:
            groups.setdefault("the runs of another schedule (arms)", []).append(run)
            continue
        base = (run.paired_base or run).name
        if base == "sgd":
            key = names[0] if run.variant or run == sgd else names[1]
        else:
            key = names[2] if base == "momentum" else names[3] if base == "adam" else None
        groups.setdefault(key or "other runs", []).append(run)
    if sgd is not None:
        groups[names[1]].insert(0, sgd)
    kept = {k: v for k, v in groups.items() if v}
    # sgd alone in one of its two groups is already drawn in the other
    for mine, other in ((names[0], names[1]), (names[1], names[0])):
        if kept.get(mine) == [sgd] and len(kept.get(other, [])) > 1:
            del kept[mine]
    if all(len(v) == 1 for v in kept.values()):
        return {"all runs": list(runs)}
    return kept
