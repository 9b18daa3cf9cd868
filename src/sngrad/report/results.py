"""The results section (results.md.j2): the seed's tables, the chosen settings, the paired
comparisons, the sensitivity, training-length, shrink and control-variate tables."""

from __future__ import annotations

import pandas as pd

from sngrad.layout import Layout
from sngrad.names import parse_run
from sngrad.report.format import (
    NA,
    fmt,
    mean_std,
    missing,
    number,
    pct,
    pvalue,
    signed,
    signed_points,
)
from sngrad.report.read import (
    read_csv,
    records,
    truthy,
)
from sngrad.tables import ALL_LAYERS, FLAT_SHARE

# The seed README's accuracy table: its rows, in its order, with its spelling.
SEED_DATASETS = {"mnist": "MNIST", "fashion_mnist": "Fashion MNIST", "cifar10": "CIFAR10"}


PAPER_ONLY = {"cifar10": "not run: needs the paper profile (download, GPU)"}


NOT_IN_PROFILE = "not run in this profile"


def _cell_key(dataset, run, batch_size) -> tuple:
    return (str(dataset), str(run), int(batch_size))


def difference(value, outcome: str) -> str:
    """An accuracy difference in signed points; a loss difference as a signed number; an
    infinite end of an interval "unbounded"."""
    if missing(value):
        return NA
    if abs(float(value)) == float("inf"):
        return "unbounded"
    return signed_points(value) if outcome == "test_accuracy" else signed(value, 4)


def _interval(r: dict) -> str:
    if missing(r["ci_low"]):
        return NA
    if abs(r["ci_low"]) == float("inf"):
        return "unbounded"
    level = f" ({pct(r['ci_level'], 2)} %)" if not missing(r.get("ci_level")) else ""
    return (f"[{difference(r['ci_low'], r['outcome'])}, "
            f"{difference(r['ci_high'], r['outcome'])}]{level}")


def paired_rows(paired: pd.DataFrame, family: str, outcome: str = "test_accuracy",
                schedule: str | None = None) -> list[dict]:
    """The rows of one family, outcome and (if given) schedule of ``paired.csv``, formatted;
    no-op rows included (verdict "no-op")."""
    rows = []
    chosen = None
    if len(paired):
        mask = (paired["family"] == family) & (paired["outcome"] == outcome)
        if schedule is not None:
            mask &= paired["schedule"] == schedule
        chosen = paired[mask]
    for r in records(chosen):
        ci = _interval(r)
        value_text = pct if outcome == "test_accuracy" else (lambda v: fmt(v, 4))
        rows.append(
            {
                "dataset": r["dataset"],
                "batch_size": int(r["batch_size"]),
                "run": r["run"],
                "base": r["base"],
                "pairs": f"{int(r['n_pairs'])}/{int(r['n_seeds'])}",
                "diverged": f"{int(r['n_diverged_run'])}/{int(r['n_diverged_base'])}",
                "epochs": f"{number(r['epoch_run'])} vs {number(r['epoch_base'])}",
                "cost": fmt(r["cost_run"], 3),
                "run_mean": value_text(r["run_mean"]),
                "base_mean": value_text(r["base_mean"]),
                "diff": difference(r["diff_mean"], outcome),
                "outcome": outcome.replace("_", " "),
                "ci": ci,
                "no_op": truthy(r["no_op"]),
                "factor": fmt(r["mean_factor"], 4),
                "detectable": difference(r["detectable"], outcome),
                "p_signflip": pvalue(r["p_signflip"]),
                "p_holm": pvalue(r["p_holm"]),
                "p_t": pvalue(r["p_t"]),
                "verdict": r["verdict"],
                "note": "" if missing(r["note"]) else str(r["note"]),
                "diff_value": r["diff_mean"],
            }
        )
    return rows


def families(paired: pd.DataFrame) -> list[dict]:
    """Per (dataset, family, outcome): its comparisons (no-op rows left out) and the smallest
    mean difference it detects with the stated power."""
    out = []
    if not len(paired):
        return out
    kept = paired[~paired["no_op"].astype(bool)]
    for (dataset, family, outcome), part in kept.groupby(["dataset", "family", "outcome"],
                                                         sort=True):
        testable = part[part["n_pairs"] >= 2]
        if testable.empty:
            continue
        out.append({"dataset": dataset, "family": family.replace("_", " "),
                    "outcome": outcome.replace("_", " "), "m": len(testable),
                    "pairs": int(testable["n_pairs"].median()),
                    "detectable": difference(testable["detectable"].iloc[0], outcome)})
    return out


def schedule_rows(layout: Layout, datasets) -> list[dict]:
    """The theory's prediction per run with a constant-rate arm (``schedules.csv``)."""
    rows = []
    for dataset in datasets:
        table = read_csv(layout.schedules(dataset))
        for r in records(table):
            def span(name, r=r):
                low, high = r[f"{name}_low"], r[f"{name}_high"]
                if missing(low):
                    return NA
                if abs(low) == float("inf"):
                    return "unbounded"
                return f"[{difference(low, r['outcome'])}, {difference(high, r['outcome'])}]"

            rows.append({
                "dataset": r["dataset"], "batch_size": int(r["batch_size"]), "run": r["run"],
                "arm": r["arm"], "pairs": fmt(r["n_pairs"], 6),
                **{f"{name}": difference(r[f"{name}_mean"], r["outcome"])
                   for name in ("decay", "constant", "contrast")},
                **{f"{name}_ci": span(name) for name in ("decay", "constant", "contrast")},
                "p": pvalue(r["p_contrast"]), "held": "yes" if truthy(r["held"]) else "no",
            })
    return rows


def no_op_rows(paired: pd.DataFrame) -> list[dict]:
    """The runs set apart as no-ops, once per (dataset, run, batch size)."""
    if not len(paired):
        return []
    rows = paired[paired["no_op"].astype(bool)].drop_duplicates(["dataset", "run", "batch_size"])
    return [{"dataset": r["dataset"], "run": r["run"], "base": r["base"],
             "batch_size": int(r["batch_size"]),
             "factor": NA if missing(r["mean_factor"]) else fmt(r["mean_factor"], 4)}
            for r in records(rows)]


def seed_tables(config, summary: pd.DataFrame, paired: pd.DataFrame) -> dict:
    """The seed README's two tables, learning rate and test accuracy, with one column per batch
    size: one row per (dataset, run) for ``sgd`` and every ``sgd+sngrad`` run; a dataset of
    the seed that this profile does not train gets one row saying why."""
    runs = list(config.get("optimizers", []))
    sngrad = [r for r in runs if parse_run(r).optimizer.startswith("sgd+sngrad")]
    columns = (["sgd"] if "sgd" in runs else []) + sngrad
    batch_sizes = [int(b) for b in config.get("batch_sizes", [])]
    configured = list(config.get("datasets", []))
    rows_of = list(SEED_DATASETS) + [d for d in configured if d not in SEED_DATASETS]
    index = {_cell_key(r["dataset"], r["run"], r["batch_size"]): r for r in records(summary)}
    verdicts = {
        _cell_key(r["dataset"], r["run"], r["batch_size"]): r
        for r in records(paired[(paired["family"] == "equal_epochs")
                                & (paired["outcome"] == "test_accuracy")]
                         if len(paired) else None)
    }
    lr_rows, acc_rows = [], []
    for dataset in rows_of:
        label = SEED_DATASETS.get(dataset, dataset)
        if dataset not in configured:
            why = PAPER_ONLY.get(dataset, NOT_IN_PROFILE)
            for rows in (lr_rows, acc_rows):
                rows.append({"dataset": label, "run": "every run",
                             "cells": [why] * len(batch_sizes)})
            continue
        for run in columns:
            lr_cells, acc_cells = [], []
            for batch_size in batch_sizes:
                s = index.get(_cell_key(dataset, run, batch_size))
                if s is None:
                    lr_cells.append("not run")
                    acc_cells.append("not run")
                    continue
                lr_cells.append(_lr_cell(s))
                cell = mean_std(s["test_accuracy_mean"], s["test_accuracy_std"])
                p = verdicts.get(_cell_key(dataset, run, batch_size))
                if p is not None:
                    cell += f" ({p['verdict']}, Holm p {pvalue(p['p_holm'])})"
                if int(s["n_diverged"]):
                    cell += f", {int(s['n_diverged'])} of {int(s['n_seeds'])} seeds diverged"
                acc_cells.append(cell)
            lr_rows.append({"dataset": label, "run": run, "cells": lr_cells})
            acc_rows.append({"dataset": label, "run": run, "cells": acc_cells})
    return {"batch_sizes": batch_sizes, "runs": columns, "lr_rows": lr_rows,
            "acc_rows": acc_rows}


def _lr_cell(s: dict) -> str:
    if truthy(s.get("all_diverged")):
        return "no valid setting (all diverged)"
    text = fmt(s["learning_rate"])
    if not missing(s.get("momentum")):
        text += f", momentum {fmt(s['momentum'])}"
    if not missing(s.get("alpha")):
        text += f", $\\alpha$ {fmt(s['alpha'])}"
        if not missing(s.get("alpha_scaled")) and parse_run(s["run"]).fixed_alpha is None:
            text += f" (scale-free {fmt(s['alpha_scaled'])})"
    if truthy(s.get("at_bound")):
        text += " †"
    return text


def chosen_rows(summary: pd.DataFrame) -> list[dict]:
    return [
        {
            "dataset": s["dataset"],
            "batch_size": int(s["batch_size"]),
            "run": s["run"],
            "learning_rate": fmt(s["learning_rate"]),
            "momentum": fmt(s["momentum"]),
            "alpha": fmt(s["alpha"]),
            "alpha_scaled": fmt(s["alpha_scaled"]),
            "val_accuracy": pct(s["val_accuracy"]),
            "flags": ", ".join(
                f
                for f, on in [
                    ("at a hard bound", truthy(s["at_bound"])),
                    ("all settings diverged", truthy(s["all_diverged"])),
                ]
                if on
            ),
            "test": mean_std(s["test_accuracy_mean"], s["test_accuracy_std"]),
            "val_final": pct(s["val_accuracy_final"]),
            "seeds": f"{int(s['n_seeds']) - int(s['n_diverged'])}/{int(s['n_seeds'])}",
        }
        for s in records(summary)
    ]


def shrink_rows(layout: Layout) -> list[dict]:
    table = read_csv(layout.analysis("shrink.csv"))
    if table is None or table.empty:
        return []
    layers = table[table["layer"].astype(str) != ALL_LAYERS]
    whole = table[table["layer"].astype(str) == ALL_LAYERS]

    def per_layer(r) -> str:
        own = layers[(layers["dataset"] == r["dataset"]) & (layers["optimizer"] == r["optimizer"])
                     & (layers["batch_size"] == r["batch_size"])].sort_values("layer")
        return ", ".join(f"{layer}: {fmt(f, 3)}" for layer, f in
                         zip(own["layer"], own["factor_mean"], strict=True))

    return [
        {
            "dataset": r["dataset"],
            "run": r["optimizer"],
            "batch_size": int(r["batch_size"]),
            "share": pct(r["shrink_share"], 1),
            "factor": fmt(r["factor_mean"], 4),
            "factor_first": fmt(r["factor_first"], 4),
            "factor_last": fmt(r["factor_last"], 4),
            "layers": per_layer(r),
        }
        for r in records(whole)
    ]


def training_length(layout: Layout) -> dict:
    table = read_csv(layout.analysis("training_length.csv"))
    rows = [
        {
            "dataset": r["dataset"],
            "run": r["optimizer"],
            "batch_size": int(r["batch_size"]),
            "epochs": fmt(r["epochs"], 6),
            "quarter": fmt(r["quarter"], 6),
            "first": fmt(r["loss_first"]),
            "last": fmt(r["loss_last"]),
            "share": pct(r["share_last_quarter"], 1),
            "met": "yes" if truthy(r["met"]) else "**no**",
        }
        for r in records(table)
    ]
    return {
        "rows": rows,
        "criterion": pct(FLAT_SHARE, 0),
        "met": sum(r["met"] == "yes" for r in rows),
        "total": len(rows),
    }


def alpha_rows(layout: Layout) -> list[dict]:
    """The performance notebook's ``alpha_summary.csv`` (alphas tried: space-separated)."""
    table = read_csv(layout.analysis("alpha_summary.csv"))
    if table is None or table.empty:
        return []
    return [
        {
            "dataset": r["dataset"],
            "run": r["optimizer"],
            "batch_size": int(r["batch_size"]),
            "learning_rate": fmt(r["learning_rate"]),
            "alphas": ", ".join(fmt(a) for a in str(r["alphas_scaled"]).split()),
            "best": fmt(r["best_alpha_scaled"]),
            "worst": fmt(r["worst_alpha_scaled"]),
            "best_val": pct(r["best_val_accuracy"]),
            "worst_val": pct(r["worst_val_accuracy"]),
            "spread": pct(r["spread"]),
            "diverged": str(r["diverged_alphas"]),
        }
        for r in records(table)
    ]


def lr_rows(layout: Layout) -> list[dict]:
    table = read_csv(layout.analysis("lr_sensitivity.csv"))
    return [
        {
            "dataset": r["dataset"],
            "run": r["optimizer"],
            "batch_size": int(r["batch_size"]),
            "settings": fmt(r["settings"], 6),
            "diverged": fmt(r["diverged_settings"], 6),
            "range": f"[{fmt(r['lr_low'])}, {fmt(r['lr_high'])}]"
            + (" (step $\\eta/\\alpha$)" if r.get("axis") == "step" else ""),
            "chosen": fmt(r["chosen_learning_rate"]),
            "position": r["chosen_position"],
            "rounds": fmt(r["extension_rounds"], 6),
            "near": pct(r["share_near_best"], 0),
        }
        for r in records(table)
    ]


def control_variates(layout: Layout, paired_rows: list[dict]) -> list[dict]:
    table = read_csv(layout.analysis("control_variates.csv"))
    vs = {(r["dataset"], r["run"], r["batch_size"]): r for r in paired_rows}
    out = []
    for r in records(table):
        p = vs.get((r["dataset"], r["optimizer"], int(r["batch_size"])))
        out.append(
            {
                "dataset": r["dataset"],
                "run": r["optimizer"],
                "batch_size": int(r["batch_size"]),
                "ratio": fmt(r["variance_ratio"]),
                "ratio_first": fmt(r["variance_ratio_first"]),
                "ratio_last": fmt(r["variance_ratio_last"]),
                "lam": fmt(r["lambda_median"]),
                "reduces": "yes"
                if not missing(r["variance_ratio"]) and r["variance_ratio"] < 1
                else "no",
                "diff": p["diff"] if p else NA,
                "ci": p["ci"] if p else NA,
                "verdict": p["verdict"] if p else "not compared",
            }
        )
    return out
