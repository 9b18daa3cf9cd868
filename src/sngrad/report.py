"""Render results/<profile>/report.md from the result files of one profile.

This module collects and formats; it computes no statistic of its own. Every number comes
from a file under ``results/<profile>/`` (paths from :mod:`sngrad.layout`), reduced where
needed by :mod:`sngrad.analysis`, and reaches the Jinja2 templates as a finished string: the
templates only lay text out (no arithmetic, no selection). A part whose rule has not run
becomes a sentence saying so, never a blank cell or "nan".

    python -m sngrad report --profile P --results-root results \
        --template paper/templates/report.md.j2 --out results/P/report.md \
        --config @config.json [--inputs @inputs.json]

``--inputs`` lists the report rule's input files (a JSON list); their
digests make the report's provenance. Without it the inputs are enumerated from the config.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from sngrad import analysis, provenance
from sngrad.errors import SngradError
from sngrad.io import write_text
from sngrad.layout import FIGURES, Layout, notebook_tables
from sngrad.spec import read_json_arg

NA = "n/a"

# The seed README's accuracy table: its rows, in its order, with its spelling.
SEED_DATASETS = {"mnist": "MNIST", "fashion_mnist": "Fashion MNIST", "cifar10": "CIFAR10"}
PAPER_ONLY = {"cifar10": "not run: needs the paper profile (download, GPU)"}
NOT_IN_PROFILE = "not run in this profile"

# Facts about the prototype's code (shared/PROTOTYPE.md): its default alphas, and its loss,
# the mean over the 10 one-hot entries, i.e. our cross-entropy divided by 10. Its gradients
# and sigma are a tenth of ours, so alpha (which multiplies sigma) converts to alpha / 10 for
# I and III; II compares mu^2 with alpha sigma^2 and is scale-free.
PROTOTYPE_ALPHA = {"I": 1.0, "II": 0.05, "III": 1.0}
PROTOTYPE_LOSS_DIVISOR = 10
SCALE_FREE = ("II",)


# ----------------------------------------------------------------------------- formatting


def missing(x) -> bool:
    if x is None or x == "":
        return True
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return False


def fmt(x, digits: int = 3) -> str:
    """``digits`` significant digits; missing values read "n/a" (never "nan")."""
    if missing(x):
        return NA
    if isinstance(x, str):
        try:
            x = float(x)
        except ValueError:
            return x
    return f"{float(x):.{digits}g}"


def pct(x, decimals: int = 2) -> str:
    """A fraction as a percentage with fixed decimals (0.9734 -> 97.34)."""
    return NA if missing(x) else f"{100 * float(x):.{decimals}f}"


def signed_points(x, decimals: int = 2) -> str:
    """A difference of fractions in percentage points with its sign (+0.12)."""
    return NA if missing(x) else f"{100 * float(x):+.{decimals}f}"


def pvalue(p) -> str:
    if missing(p):
        return NA
    return "< 0.001" if float(p) < 0.001 else f"{float(p):.3f}"


def mean_std(mean, std) -> str:
    if missing(mean):
        return NA
    return f"{pct(mean)} ± {pct(std)}" if not missing(std) else f"{pct(mean)}"


def minutes(seconds) -> str:
    return NA if missing(seconds) else f"{float(seconds) / 60:.1f} min"


def _records(frame: pd.DataFrame | None) -> list[dict]:
    if frame is None or frame.empty:
        return []
    return frame.to_dict("records")


def _read_csv(path) -> pd.DataFrame | None:
    path = Path(path)
    return pd.read_csv(path) if path.exists() else None


def _read_json(path) -> dict | None:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def _truthy(x) -> bool:
    return str(x).strip().lower() in {"true", "1", "1.0", "yes"}


# ----------------------------------------------------------------------------- pieces


def config_hash(config: dict) -> str:
    """sha256 of the resolved config as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _get(config: dict, dotted: str, default=None):
    node = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def _source_lines(source: dict) -> tuple[str, list[dict]]:
    """(one-line description, [{file, sha256, verified}]) of a data sidecar's ``source``."""
    try:
        from sngrad.data import describe_source

        line = describe_source(source)
    except (ImportError, AttributeError, KeyError, TypeError):
        line = f"source: {source.get('kind', 'unknown')}"
    hashes = []
    for name, check in (source.get("files") or {}).items():
        if isinstance(check, dict) and check.get("content_sha256"):
            hashes.append(
                {
                    "file": name,
                    "sha256": check["content_sha256"],
                    "verified": "yes" if check.get("content_verified") else "no",
                }
            )
    for name, digest in (source.get("sha256") or {}).items():
        if source.get("kind") == "embedded":
            hashes.append({"file": f"array {name}", "sha256": digest, "verified": "computed"})
    return line, hashes


def _datasets(layout: Layout, config: dict) -> list[dict]:
    rows = []
    hidden = list(_get(config, "model.hidden", []) or [])
    for name in config.get("datasets", []):
        meta = _read_json(layout.data_meta(name)) or {}
        sizes = meta.get("sizes", {})
        line, hashes = _source_lines(meta.get("source") or {})
        dim, classes = meta.get("feature_dim"), meta.get("num_classes")
        network = "-".join(NA if n is None else str(n) for n in [dim, *hidden, classes])
        rows.append(
            {
                "name": name,
                "description": meta.get("description", "") or name,
                "n_train": fmt(sizes.get("train"), 9),
                "n_val": fmt(sizes.get("val"), 9),
                "n_test": fmt(sizes.get("test"), 9),
                "test_split": meta.get("test_split", NA),
                "network": network,
                "source": line if meta else "the data rule has not run (no sidecar)",
                "hashes": hashes,
                "content_sha256": meta.get("content_sha256"),
            }
        )
    return rows


def _figures(layout: Layout, out: Path) -> dict:
    """{name: {path, caption, notebook, exists, markdown}} for every figure of the manifest."""
    figures = {}
    for name, figure in FIGURES.items():
        path = Path(layout.figure(name))
        rel = os.path.relpath(path, out.parent).replace(os.sep, "/")
        made_by = f"`analysis/{figure.notebook}.py`"
        if path.exists():
            markdown = (
                f"![{figure.caption}]({rel})\n\n*{figure.caption}. Figure made by {made_by}.*"
            )
        else:
            markdown = f"*(Figure `{name}` was not produced: {made_by} has not run.)*"
        figures[name] = {
            "path": rel,
            "caption": figure.caption,
            "notebook": figure.notebook,
            "exists": path.exists(),
            "markdown": markdown,
        }
    return figures


def _cell_key(dataset, run, batch_size) -> tuple:
    return (str(dataset), str(run), int(batch_size))


def _paired_rows(paired: pd.DataFrame, family: str) -> list[dict]:
    rows = []
    for r in _records(paired[paired["family"] == family] if len(paired) else None):
        ci = (
            NA
            if missing(r["ci_low"])
            else f"[{signed_points(r['ci_low'])}, {signed_points(r['ci_high'])}]"
        )
        rows.append(
            {
                "dataset": r["dataset"],
                "batch_size": int(r["batch_size"]),
                "run": r["run"],
                "base": r["base"],
                "pairs": f"{int(r['n_pairs'])}/{int(r['n_seeds'])}",
                "diverged": f"{int(r['n_diverged_run'])}/{int(r['n_diverged_base'])}",
                "epochs": f"{fmt(r['epoch_run'], 6)} vs {fmt(r['epoch_base'], 6)}",
                "cost": fmt(r["cost_run"], 3),
                "run_mean": pct(r["run_mean"]),
                "base_mean": pct(r["base_mean"]),
                "diff": signed_points(r["diff_mean"]),
                "ci": ci,
                "p_signflip": pvalue(r["p_signflip"]),
                "p_holm": pvalue(r["p_holm"]),
                "p_t": pvalue(r["p_t"]),
                "verdict": r["verdict"],
                "note": "" if missing(r["note"]) else str(r["note"]),
                "diff_value": r["diff_mean"],
            }
        )
    return rows


def _findings(rows: list[dict]) -> dict:
    by = {v: [r for r in rows if r["verdict"] == v] for v in analysis.VERDICTS}
    return {
        "total": len(rows),
        **{v: len(by[v]) for v in by},
        "better_rows": by["better"],
        "worse_rows": by["worse"],
    }


def _seed_tables(config, summary: pd.DataFrame, paired: pd.DataFrame) -> list[dict]:
    """The seed README's two tables per batch size: learning rate and accuracy."""
    runs = list(config.get("optimizers", []))
    sngrad = [r for r in runs if analysis.optimizer_of(r).startswith("sgd+sngrad")]
    columns = (["sgd"] if "sgd" in runs else []) + sngrad
    configured = list(config.get("datasets", []))
    rows_of = list(SEED_DATASETS) + [d for d in configured if d not in SEED_DATASETS]
    index = {_cell_key(r["dataset"], r["run"], r["batch_size"]): r for r in _records(summary)}
    verdicts = {
        _cell_key(r["dataset"], r["run"], r["batch_size"]): r
        for r in _records(paired[paired["family"] == "equal_epochs"] if len(paired) else None)
    }
    tables = []
    for batch_size in config.get("batch_sizes", []):
        lr_rows, acc_rows = [], []
        for dataset in rows_of:
            label = SEED_DATASETS.get(dataset, dataset)
            if dataset not in configured:
                why = PAPER_ONLY.get(dataset, NOT_IN_PROFILE)
                lr_rows.append({"dataset": label, "cells": [why] * len(columns)})
                acc_rows.append({"dataset": label, "cells": [why] * len(columns)})
                continue
            lr_cells, acc_cells = [], []
            for run in columns:
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
            lr_rows.append({"dataset": label, "cells": lr_cells})
            acc_rows.append({"dataset": label, "cells": acc_cells})
        tables.append(
            {"batch_size": batch_size, "columns": columns, "lr_rows": lr_rows, "acc_rows": acc_rows}
        )
    return tables


def _lr_cell(s: dict) -> str:
    if _truthy(s.get("all_diverged")):
        return "no valid setting (all diverged)"
    text = fmt(s["learning_rate"])
    if not missing(s.get("momentum")):
        text += f", momentum {fmt(s['momentum'])}"
    if not missing(s.get("alpha")):
        text += f", $\\alpha$ {fmt(s['alpha'])}"
        if not missing(s.get("alpha_scaled")) and analysis.fixed_alpha(s["run"]) is None:
            text += f" (scale-free {fmt(s['alpha_scaled'])})"
    if _truthy(s.get("at_bound")):
        text += " †"
    return text


def _chosen_rows(summary: pd.DataFrame) -> list[dict]:
    return [
        {
            "dataset": s["dataset"],
            "batch_size": int(s["batch_size"]),
            "run": s["run"],
            "learning_rate": fmt(s["learning_rate"]),
            "momentum": fmt(s["momentum"]),
            "alpha": fmt(s["alpha"]),
            "alpha_scaled": fmt(s["alpha_scaled"]),
            "sigma_ref": fmt(s["sigma_ref"]),
            "val_accuracy": pct(s["val_accuracy"]),
            "flags": ", ".join(
                f
                for f, on in [
                    ("at a hard bound", _truthy(s["at_bound"])),
                    ("all settings diverged", _truthy(s["all_diverged"])),
                ]
                if on
            ),
            "test": mean_std(s["test_accuracy_mean"], s["test_accuracy_std"]),
            "val_final": pct(s["val_accuracy_final"]),
            "seeds": f"{int(s['n_seeds']) - int(s['n_diverged'])}/{int(s['n_seeds'])}",
        }
        for s in _records(summary)
    ]


def _winners(summary: pd.DataFrame) -> list[dict]:
    if summary.empty:
        return []
    return [
        {
            "dataset": w["dataset"],
            "batch_size": int(w["batch_size"]),
            "run": w["run"],
            "val": pct(w["val_accuracy_final"]),
            "test": mean_std(w["test_accuracy_mean"], w["test_accuracy_std"]),
        }
        for w in _records(analysis.winners(summary))
    ]


def _tuning_facts(layout: Layout, config: dict, summary: pd.DataFrame) -> dict:
    """Diverged tuning settings, cells without a valid setting, cells at a hard bound."""
    tuning, _ = analysis.read_run_tables(
        layout,
        config.get("datasets", []),
        config.get("optimizers", []),
        config.get("batch_sizes", []),
        "tuning.csv",
    )
    diverged = []
    total = 0
    if len(tuning):
        settings = analysis.tuning_settings(tuning)
        total = len(settings)
        for (dataset, run, bs), cell in settings.groupby(["dataset", "optimizer", "batch_size"]):
            bad = cell[cell["diverged"].astype(bool)]
            if bad.empty:
                continue
            points = "; ".join(_setting_text(r) for r in _records(bad))
            diverged.append(
                {
                    "dataset": dataset,
                    "run": run,
                    "batch_size": int(bs),
                    "count": f"{len(bad)} of {len(cell)}",
                    "settings": points,
                }
            )
    records = _records(summary)
    at_bound = [
        f"`{r['run']}` on {r['dataset']}, B = {int(r['batch_size'])}"
        for r in records
        if _truthy(r["at_bound"])
    ]
    no_valid = [
        f"`{r['run']}` on {r['dataset']}, B = {int(r['batch_size'])}"
        for r in records
        if _truthy(r["all_diverged"])
    ]
    return {
        "diverged": diverged,
        "at_bound": at_bound,
        "no_valid": no_valid,
        "cells": len(records),
        "settings": total,
        "n_diverged": sum(int(d["count"].split()[0]) for d in diverged),
    }


def _setting_text(r: dict) -> str:
    parts = [f"$\\eta$ {fmt(r['learning_rate'])}"]
    if not missing(r.get("momentum")):
        parts.append(f"m {fmt(r['momentum'])}")
    if not missing(r.get("alpha_scaled")):
        parts.append(f"scale-free $\\alpha$ {fmt(r['alpha_scaled'])}")
    elif not missing(r.get("alpha")):
        parts.append(f"$\\alpha$ {fmt(r['alpha'])}")
    return ", ".join(parts)


def _protocol(config: dict) -> dict:
    """The tuning protocol's numbers, formatted from the config (n/a where a key is absent)."""
    tune = config.get("tune", {}) or {}
    alpha = tune.get("alpha", {}) or {}

    def span(pair):
        return f"[{fmt(pair[0])}, {fmt(pair[1])}]" if isinstance(pair, list | tuple) else NA

    return {
        "lr_range": f"[{fmt(tune.get('lr_min'))}, {fmt(tune.get('lr_max'))}]",
        "lr_per_decade": fmt(tune.get("lr_per_decade")),
        "lr_bounds": span(tune.get("lr_bounds")),
        "second_points": fmt(tune.get("second_points")),
        "one_minus_momentum": span(tune.get("one_minus_momentum")),
        "alpha": {v: span(alpha.get(v)) for v in ("I", "II", "III")},
        "tune_seeds": ", ".join(str(s) for s in tune.get("seeds", [])) or NA,
        "n_tune_seeds": len(tune.get("seeds", [])),
        "final_seeds": ", ".join(str(s) for s in _get(config, "train.seeds", [])) or NA,
        "n_final_seeds": len(_get(config, "train.seeds", []) or []),
        "epochs": fmt(_get(config, "train.epochs"), 6),
        "schedule": str(_get(config, "train.schedule", NA)),
        "backend": str(_get(config, "train.backend", NA)),
        "diverge_loss": fmt(_get(config, "train.diverge_loss"), 6),
        "hidden": ", ".join(str(h) for h in _get(config, "model.hidden", []) or []) or "none",
        "init_seed": str(_get(config, "model.init_seed", NA)),
        "train_size": str(_get(config, "data.train_size", "all") or "all"),
        "val_fraction": fmt(_get(config, "data.val_fraction")),
        "batch_sizes": ", ".join(str(b) for b in config.get("batch_sizes", [])),
        "prototype": _prototype_rows(config),
        "prototype_runs": [r for r in config.get("optimizers", []) if "@" in r],
    }


def _prototype_rows(config: dict) -> list[dict]:
    """The prototype's alphas, their value on our loss, and the fixed-alpha run of each."""
    fixed = {analysis.variant_of(r): r for r in config.get("optimizers", []) if "@" in r}
    rows = []
    for variant, theirs in PROTOTYPE_ALPHA.items():
        ours = theirs if variant in SCALE_FREE else theirs / PROTOTYPE_LOSS_DIVISOR
        run = fixed.get(variant)
        rows.append(
            {
                "variant": variant,
                "theirs": fmt(theirs),
                "ours": fmt(ours),
                "run": f"`{run}`" if run else "not run in this profile",
            }
        )
    return rows


def _shrink_rows(layout: Layout) -> list[dict]:
    table = _read_csv(layout.analysis("shrink.csv"))
    if table is None or table.empty:
        return []
    whole = table[table["layer"].astype(str) == analysis.ALL_LAYERS]
    return [
        {
            "dataset": r["dataset"],
            "run": r["optimizer"],
            "batch_size": int(r["batch_size"]),
            "share": pct(r["shrink_share"], 1),
            "share_first": pct(r["shrink_first"], 1),
            "share_last": pct(r["shrink_last"], 1),
            "factor": fmt(r["factor_mean"]),
            "factor_last": fmt(r["factor_last"]),
        }
        for r in _records(whole)
    ]


def _training_length(layout: Layout) -> dict:
    table = _read_csv(layout.analysis("training_length.csv"))
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
            "met": "yes" if _truthy(r["met"]) else "**no**",
        }
        for r in _records(table)
    ]
    return {
        "rows": rows,
        "criterion": pct(analysis.FLAT_SHARE, 0),
        "met": sum(r["met"] == "yes" for r in rows),
        "total": len(rows),
    }


def _alpha_rows(layout: Layout) -> list[dict]:
    table = _read_csv(layout.analysis("alpha_sensitivity.csv"))
    if table is None or table.empty:
        return []
    return [
        {
            "dataset": r["dataset"],
            "run": r["optimizer"],
            "batch_size": int(r["batch_size"]),
            "learning_rate": fmt(r["learning_rate"]),
            "alphas": ", ".join(fmt(a) for a in r["alphas_scaled"]),
            "best": fmt(r["best_alpha_scaled"]),
            "worst": fmt(r["worst_alpha_scaled"]),
            "best_val": pct(r["best_val_accuracy"]),
            "worst_val": pct(r["worst_val_accuracy"]),
            "spread": pct(r["spread"]),
            "diverged": str(r["diverged_alphas"]),
        }
        for r in _records(analysis.alpha_summary(table))
    ]


def _lr_rows(layout: Layout) -> list[dict]:
    table = _read_csv(layout.analysis("lr_sensitivity.csv"))
    return [
        {
            "dataset": r["dataset"],
            "run": r["optimizer"],
            "batch_size": int(r["batch_size"]),
            "settings": fmt(r["settings"], 6),
            "diverged": fmt(r["diverged_settings"], 6),
            "range": f"[{fmt(r['lr_low'])}, {fmt(r['lr_high'])}]",
            "chosen": fmt(r["chosen_learning_rate"]),
            "position": r["chosen_position"],
            "rounds": fmt(r["extension_rounds"], 6),
            "near": pct(r["share_near_best"], 0),
        }
        for r in _records(table)
    ]


def _control_variates(layout: Layout, paired_rows: list[dict]) -> list[dict]:
    table = _read_csv(layout.analysis("control_variates.csv"))
    vs = {(r["dataset"], r["run"], r["batch_size"]): r for r in paired_rows}
    out = []
    for r in _records(table):
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


def _benchmark(layout: Layout, devices: list[str]) -> dict | None:
    table = _read_csv(layout.benchmark())
    if table is None:
        return None
    record = {}
    for side in (
        Path(layout.benchmark()).with_suffix(".json"),
        Path(layout.benchmark()).with_name("provenance.json"),
    ):
        record = record or _read_json(side) or {}
    machine = record.get("machine") or record.get("device")
    if isinstance(machine, list):
        machine = ", ".join(map(str, machine))
    for column in ("machine", "device", "cpu"):
        if not machine and column in table and table[column].notna().any():
            machine = ", ".join(sorted(set(map(str, table[column].dropna()))))
    if not machine:
        machine = (
            f"the machine that rendered this report ({_cpu_model()}, "
            f"{os.cpu_count()} CPU cores; devices {', '.join(devices) or NA})"
        )
    columns = list(table.columns)
    # the file's own text, numbers shortened to 4 significant digits; an empty cell (e.g. no
    # `flag`) stays empty
    text = pd.read_csv(layout.benchmark(), dtype=str, keep_default_na=False)
    rows = [[_cell(v) for v in row] for row in text.itertuples(index=False)]
    return {"columns": columns, "rows": rows, "machine": str(machine)}


def _cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() or "unknown CPU"


def _cell(text: str) -> str:
    if text == "":
        return ""
    try:
        value = float(text)
    except ValueError:
        return text.replace("|", "\\|")
    return fmt(value, 4)


def _theory(layout: Layout) -> dict | None:
    """The theory tables as the theory partial reads them (missing cells are None)."""
    checks, summary = Path(layout.theory("checks.csv")), Path(layout.theory("summary.json"))
    if not (checks.exists() and summary.exists()):
        return None
    stationary = Path(layout.theory("stationary_1d.csv"))
    return {
        "checks": {r["name"]: r for r in _plain_records(pd.read_csv(checks))},
        "stationary_1d": _plain_records(pd.read_csv(stationary)) if stationary.exists() else [],
        "summary": json.loads(summary.read_text()),
    }


def _plain_records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts with NaN turned into None, so that a template's ``if`` sees no value."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in frame.to_dict("records")
    ]


def _noise(layout: Layout, datasets) -> dict | None:
    try:
        from sngrad.noise import report_context
    except ImportError:
        return None
    return report_context(layout, list(datasets))


# ----------------------------------------------------------------------------- provenance


def expected_inputs(layout: Layout, config: dict) -> list[str]:
    """The files the report reads, enumerated from the config (when no --inputs is given)."""
    datasets, runs = config.get("datasets", []), config.get("optimizers", [])
    files = [layout.data_meta(d) for d in datasets]
    for d in datasets:
        for run in runs:
            for b in config.get("batch_sizes", []):
                files += [
                    layout.run_file(name, d, run, b)
                    for name in (
                        "tuning.csv",
                        "best.json",
                        "tuning_provenance.json",
                        "metrics.csv",
                        "diagnostics.csv",
                        "provenance.json",
                    )
                ]
        files += notebook_tables(layout, "summary", d)
        files.append(layout.noise(d))
    for notebook in ("performance", "gradient_noise", "theory"):
        files += notebook_tables(layout, notebook)
    files += [layout.figure(name) for name in FIGURES]
    files += [layout.benchmark(), layout.run_started()]
    return files


def _started(record: dict | None) -> float | None:
    """Unix time from run_started.json (a number, or an ISO 8601 time)."""
    if not record:
        return None
    for key in ("started_unix", "unix_time", "timestamp", "time", "started", "started_at"):
        value = record.get(key)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.timestamp()
    return None


def elapsed(layout: Layout, now: float | None = None) -> dict:
    """Wall time from the workflow's start (run_started.json) to this rendering."""
    started = _started(_read_json(layout.run_started()))
    now = time.time() if now is None else now
    if started is None:
        return {"available": False, "text": NA, "started": NA}
    start = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return {
        "available": True,
        "text": minutes(now - started),
        "started": start,
        "seconds": now - started,
    }


def input_provenance(paths: list[str]) -> dict:
    """Digest of the inputs and what their own provenance records say.

    ``digest``: sha256 over the lines "<sha256 of file>  <path>" of the existing inputs in
    sorted order; ``commits``/``dirty``: what the run provenance files recorded.
    """
    files, absent = set(), 0
    for p in dict.fromkeys(paths):
        path = Path(p)
        if path.is_dir():  # e.g. a reference run's folder of checkpoints: every file in it
            files.update(str(f) for f in path.rglob("*") if f.is_file())
        elif path.is_file():
            files.add(str(path))
        else:
            absent += 1
    present = sorted(files)
    lines = [f"{provenance.sha256_file(p)}  {p}" for p in present]
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    commits, devices, dirty = set(), set(), False
    for p in present:
        if not p.endswith("provenance.json"):
            continue
        record = json.loads(Path(p).read_text())
        if record.get("git_commit"):
            commits.add(str(record["git_commit"]))
        dirty = dirty or bool(record.get("git_dirty"))
        device = record.get("device")
        for d in device if isinstance(device, list) else [device]:
            if d:
                devices.add(str(d))
    return {
        "n_inputs": len(present),
        "n_missing": absent,
        "digest": digest,
        "run_commits": sorted(commits),
        "runs_dirty": dirty,
        "devices": sorted(devices),
    }


def _inputs_arg(value: str | None) -> list[str] | None:
    """The report rule's input files: a JSON list, given inline or as ``@file``."""
    if value is None:
        return None
    listed = read_json_arg(value, "--inputs")
    if not isinstance(listed, list):
        raise SngradError(f"--inputs must be a JSON list of paths, got {type(listed).__name__}")
    return [str(p) for p in listed]


# ----------------------------------------------------------------------------- context


def collect(
    layout: Layout, config: dict, out, *, inputs: list[str] | None = None, now: float | None = None
) -> dict:
    """Everything the templates need, read from the profile's result tree."""
    out = Path(out)
    datasets = list(config.get("datasets", []))
    summary = _concat(layout.summary(d) for d in datasets)
    paired = _concat(layout.paired(d) for d in datasets)
    if summary.empty:
        summary = pd.DataFrame(columns=analysis.SUMMARY_COLUMNS)
    if paired.empty:
        paired = pd.DataFrame(columns=analysis.PAIRED_COLUMNS)
    epochs_rows = _paired_rows(paired, "equal_epochs")
    time_rows = _paired_rows(paired, "equal_time")
    inputs = expected_inputs(layout, config) if inputs is None else inputs
    prov = input_provenance(inputs)
    prov.update(
        # the checkout the workflow runs in (its working directory), not where sngrad is installed
        commit=provenance.git_commit(Path.cwd()),
        dirty=provenance.git_dirty(Path.cwd()),
        versions=provenance.package_versions(),
    )
    dataset_rows = _datasets(layout, config)
    for row in dataset_rows:  # one sigma_ref per dataset (the tuning records it in best.json)
        values = summary[summary["dataset"] == row["name"]]["sigma_ref"].dropna()
        row["sigma_ref"] = fmt(values.iloc[0]) if len(values) else NA
    dirty = prov["dirty"]
    prov["dirty_text"] = (
        "unknown (not a git checkout)" if dirty is None else ("yes" if dirty else "no")
    )
    return {
        "profile": layout.profile,
        "config": config,
        "config_hash": config_hash(config),
        "datasets": dataset_rows,
        "runs": list(config.get("optimizers", [])),
        "batch_sizes": list(config.get("batch_sizes", [])),
        "protocol": _protocol(config),
        "seed_tables": _seed_tables(config, summary, paired),
        "chosen": _chosen_rows(summary),
        "winners": _winners(summary),
        "paired": epochs_rows,
        "paired_time": time_rows,
        "findings": _findings(epochs_rows),
        "findings_time": _findings(time_rows),
        "prototype_rows": [r for r in epochs_rows if "@" in r["run"]],
        "significance": fmt(analysis.SIGNIFICANCE),
        "tuning": _tuning_facts(layout, config, summary),
        "lr_rows": _lr_rows(layout),
        "alpha_rows": _alpha_rows(layout),
        "shrink": _shrink_rows(layout),
        "training_length": _training_length(layout),
        "control_variates": _control_variates(layout, epochs_rows),
        "benchmark": _benchmark(layout, prov["devices"]),
        "elapsed": elapsed(layout, now),
        "provenance": prov,
        "figures": _figures(layout, out),
        "theory": _theory(layout),
        "noise": _noise(layout, datasets),
        "commands": _commands(layout.profile),
    }


def _concat(paths) -> pd.DataFrame:
    frames = [f for f in (_read_csv(p) for p in paths) if f is not None and len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _commands(profile: str) -> list[str]:
    configfile = "" if profile == "default" else f" --configfile config/{profile}.yaml"
    layout = Layout(profile)
    return [
        f"snakemake --cores 4{configfile}",
        f"snakemake --cores 4 {layout.report()}{configfile}",
    ]


def render_report(
    layout: Layout,
    template,
    out,
    *,
    config: dict,
    inputs: list[str] | None = None,
    now: float | None = None,
) -> str:
    """Render ``template`` with the profile's results and write it to ``out`` atomically."""
    import jinja2

    template = Path(template)
    if not template.is_file():
        raise SngradError(f"--template {template}: no such file")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template.parent),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = fmt
    env.filters["pct"] = pct
    context = collect(layout, config, out, inputs=inputs, now=now)
    text = env.get_template(template.name).render(**context)
    write_text(out, text)
    return text


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sngrad report",
        description="render results/<profile>/report.md from that profile's results",
    )
    parser.add_argument("--profile", required=True)
    parser.add_argument("--results-root", default="results")
    parser.add_argument("--template", default="paper/templates/report.md.j2")
    parser.add_argument("--out", help="default: results/<profile>/report.md")
    parser.add_argument("--config", required=True, help="resolved config: JSON or @file.json")
    parser.add_argument("--inputs", help="the report rule's inputs: JSON list or @file")
    args = parser.parse_args(argv)
    config = read_json_arg(args.config, "--config")
    if not isinstance(config, dict):
        raise SngradError("--config must be a JSON object (the resolved profile)")
    layout = Layout(args.profile, args.results_root)
    out = args.out or layout.report()
    render_report(layout, args.template, out, config=config, inputs=_inputs_arg(args.inputs))
    print(f"wrote {out}")
    return 0
