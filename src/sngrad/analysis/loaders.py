"""Loading a profile's per-run result files into pandas frames.

Every (dataset, run, batch size) of the profile has its files under
``results/<profile>/<dataset>/<run>/bs<B>/`` (:mod:`sngrad.layout`; formats in
docs/CONTRACTS.md). The loaders concatenate one file over every run and say which are missing;
the functions of the topic modules take the frames they return.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

CELL = ["dataset", "optimizer", "batch_size"]  # one training cell: a run at one batch size


def read_run_tables(layout, datasets, runs, batch_sizes, name: str):
    """Concatenate one per-run CSV (e.g. ``metrics.csv``) over every (dataset, run, B).

    Returns ``(frame, missing)``: the rows with ``dataset``, ``optimizer`` (the run name) and
    ``batch_size`` set from the path, and the paths that did not exist.
    """
    frames, missing = [], []
    for dataset in datasets:
        for run in runs:
            for batch_size in batch_sizes:
                path = Path(layout.run_file(name, dataset, run, batch_size))
                if not path.exists():
                    missing.append(str(path))
                    continue
                frame = pd.read_csv(path)
                frame["dataset"] = dataset
                frame["optimizer"] = run
                frame["batch_size"] = int(batch_size)
                frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["dataset", "optimizer", "batch_size"]), missing
    return pd.concat(frames, ignore_index=True), missing


def read_best(layout, datasets, runs, batch_sizes) -> pd.DataFrame:
    """One row per existing ``best.json`` (keys as columns, plus dataset, run, batch_size)."""
    rows = []
    for dataset in datasets:
        for run in runs:
            for batch_size in batch_sizes:
                path = Path(layout.run_file("best.json", dataset, run, batch_size))
                if path.exists():
                    record = json.loads(path.read_text())
                    rows.append(
                        {**record, "dataset": dataset, "run": run, "batch_size": int(batch_size)}
                    )
    return pd.DataFrame(rows)


def as_flag(series: pd.Series) -> pd.Series:
    """A CSV boolean column (True/False, 1/0, strings) as bool; missing counts as False."""
    if series.dtype == bool:
        return series
    text = series.astype(str).str.strip().str.lower()
    return text.isin(["true", "1", "1.0", "yes"])


def read_benchmark(layout) -> pd.DataFrame | None:
    """``step_time.csv`` of the profile, or None where the benchmark has not run."""
    path = Path(layout.benchmark())
    return pd.read_csv(path) if path.exists() else None
