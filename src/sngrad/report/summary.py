"""The summary section (summary.md.j2): the verdict counts and the winner of every cell."""

from __future__ import annotations

from sngrad.layout import Layout
from sngrad.report.format import mean_std, pct
from sngrad.report.read import concat, records
from sngrad.tables import VERDICTS


def findings(rows: list[dict]) -> dict:
    """Verdict counts of one family's rows; no-op rows are counted apart (``no_op``)."""
    by = {v: [r for r in rows if r["verdict"] == v] for v in VERDICTS}
    return {
        "total": sum(len(v) for v in by.values()),
        "no_op": sum(1 for r in rows if r.get("no_op")),
        **{v: len(by[v]) for v in by},
        "better_rows": by["better"],
        "worse_rows": by["worse"],
    }


def winners(layout: Layout, datasets) -> list[dict]:
    """The summary notebooks' ``winners.csv`` of every dataset, by dataset and batch size."""
    table = concat(layout.winners(d) for d in datasets)
    if table.empty:
        return []
    table = table.sort_values(["dataset", "batch_size"], kind="stable")
    return [
        {
            "dataset": w["dataset"],
            "batch_size": int(w["batch_size"]),
            "run": w["run"],
            "val": pct(w["val_accuracy_final"]),
            "test": mean_std(w["test_accuracy_mean"], w["test_accuracy_std"]),
        }
        for w in records(table)
    ]
