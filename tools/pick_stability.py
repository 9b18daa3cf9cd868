"""How often a tuning pick changes between disjoint sets of tuning seeds.

    python tools/pick_stability.py TUNING_CSV [--seeds-per-set 2 4]

Reads a ``tuning.csv`` written by ``python -m sngrad tune`` with more tuning seeds than a
profile uses (eight, say). For every set of ``k`` of its seeds it picks a setting from those
seeds' scores alone, over the settings of the grid rounds (the refinement exists only around
the full run's pick and is left out), by two rules: the highest mean validation accuracy
(:func:`sngrad.train.protocol.best_by_score`) and the protocol's tie rule
(:func:`sngrad.train.protocol.select`). For every two disjoint sets it asks whether the picks
agree; it also scores each pick on the seeds outside its set (held-out regret: the best
held-out mean accuracy of any setting less the pick's). A setting's grid position is
recomputed from its values: log(value) over the log of the axis's smallest spacing tried.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from sngrad.train import protocol

AXIS_COLUMNS = ("learning_rate", "step", "alpha_scaled", "one_minus_momentum")


def positions(settings: pd.DataFrame) -> list[dict[str, float]]:
    """Each setting's grid position on every axis that varies (the step replaces eta where
    the run tunes it)."""
    frame = settings.assign(
        one_minus_momentum=1.0 - pd.to_numeric(settings["momentum"], errors="coerce"))
    columns = [c for c in AXIS_COLUMNS if c in frame and frame[c].notna().all()]
    if "step" in columns:
        columns.remove("learning_rate")
    axes = {}
    for column in columns:
        logs = np.log(frame[column].astype(float).to_numpy())
        distinct = np.unique(np.round(logs, 9))
        if len(distinct) > 1:
            axes[column] = logs / float(np.min(np.diff(distinct)))
    return [{a: float(v[i]) for a, v in axes.items()} for i in range(len(frame))]


def stability(tuning: pd.DataFrame, k: int) -> dict[str, dict]:
    """Per rule: disjoint pairs of k-seed sets, how many picked the same setting, the mean
    held-out regret (accuracy) and how often each setting was picked."""
    grid = tuning[~tuning["refine"].astype(str).str.lower().isin(["true", "1"])]
    table = {name: grid.pivot(index="setting", columns="seed", values=name)
             for name in ("val_accuracy", "val_loss", "diverged")}
    seeds = list(table["val_accuracy"].columns)
    if len(seeds) < 2 * k:
        raise SystemExit(f"pick_stability: {len(seeds)} tuning seeds hold no two disjoint "
                         f"sets of {k}; allowed: --seeds-per-set at most {len(seeds) // 2}")
    diverged = table["diverged"].apply(lambda c: c.astype(str).str.lower().eq("true"))
    settings = grid.drop_duplicates("setting").set_index("setting").loc[
        table["val_accuracy"].index].reset_index()
    where = positions(settings)
    sets = list(itertools.combinations(seeds, k))
    rules = {
        "highest score": lambda a, lo, d: protocol.best_by_score(a, lo, d),
        "tie rule": lambda a, lo, d: protocol.select(a, lo, d, where)[0],
    }
    out = {}
    for name, rule in rules.items():
        picks = {s: rule(*(t[list(s)].to_numpy(float) for t in (
            table["val_accuracy"], table["val_loss"])), diverged[list(s)].to_numpy())
            for s in sets}
        pairs = [(a, b) for a, b in itertools.combinations(sets, 2) if not set(a) & set(b)]
        regret = []
        for s, pick in picks.items():
            held = table["val_accuracy"][[x for x in seeds if x not in s]].mean(axis=1)
            regret.append(held.max() - held.iloc[pick])
        counts = pd.Series([settings.loc[p, "setting"] for p in picks.values()]).value_counts()
        out[name] = {"pairs": len(pairs), "same": sum(picks[a] == picks[b] for a, b in pairs),
                     "regret": float(np.mean(regret)), "picks": counts.to_dict(),
                     "settings": settings}
    return out


def _setting_text(row) -> str:
    parts = [f"eta {row['learning_rate']:.4g}"]
    for column, name in (("alpha_scaled", "alpha"), ("momentum", "m")):
        if pd.notna(row.get(column)):
            parts.append(f"{name} {row[column]:.4g}")
    return ", ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tuning_csv", type=Path)
    parser.add_argument("--seeds-per-set", type=int, nargs="+", default=[2])
    args = parser.parse_args(argv)
    tuning = pd.read_csv(args.tuning_csv)
    for k in args.seeds_per_set:
        for name, r in stability(tuning, k).items():
            settings = r["settings"].set_index("setting")
            picked = "; ".join(f"{_setting_text(settings.loc[s])} x{n}"
                               for s, n in r["picks"].items())
            print(f"{k} seeds, {name}: same pick in {r['same']} of {r['pairs']} disjoint pairs "
                  f"({100 * r['same'] / r['pairs']:.0f} %), held-out regret "
                  f"{100 * r['regret']:.3f} points; picks: {picked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
