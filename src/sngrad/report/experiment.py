"""The experiment section (experiment.md.j2): datasets and their sources, the tuning protocol,
the prototype's alphas, and what the tuning met (diverged settings, hard bounds)."""

from __future__ import annotations

import pandas as pd

from sngrad import profile as profile_values
from sngrad.architecture import Architecture, model_kind
from sngrad.errors import SngradError
from sngrad.layout import Layout
from sngrad.names import parse_run
from sngrad.report.format import NA, fmt, missing, number
from sngrad.report.read import (
    config_value,
    read_csv,
    read_json,
    records,
    truthy,
)

# Facts about the prototype's code (shared/PROTOTYPE.md): its default alphas, and its loss,
# the mean over the 10 one-hot entries, i.e. our cross-entropy divided by 10. Its gradients
# and sigma are a tenth of ours, so alpha (which multiplies sigma) converts to alpha / 10 for
# I and III; II compares mu^2 with alpha sigma^2 and is scale-free.
PROTOTYPE_ALPHA = {"I": 1.0, "II": 0.05, "III": 1.0}


PROTOTYPE_LOSS_DIVISOR = 10


SCALE_FREE = ("II",)


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


def _architecture(config: dict, dataset: str) -> Architecture | None:
    """The profile's network on ``dataset`` (:func:`sngrad.profile.architecture`), or None
    where the profile's ``model`` or the dataset's registry entry does not give one."""
    try:
        return profile_values.architecture(config, dataset)
    except (SngradError, KeyError, TypeError):
        return None


def network_text(config: dict, dataset: str) -> str:
    """The network of ``dataset``'s row: ``784-64-10`` for an MLP, else
    :meth:`~sngrad.architecture.Architecture.describe`'s layers."""
    net = _architecture(config, dataset)
    return NA if net is None else net.describe()


def hidden_text(config: dict) -> str:
    """The hidden widths of an MLP (``1024, 1024``, ``none``), else the layers of the network
    on the profile's first dataset."""
    names = config.get("datasets") or []
    net = _architecture(config, names[0]) if names else None
    if net is None:  # an incomplete profile: what its model section says
        return ", ".join(str(h) for h in config_value(config, "model.hidden", []) or []) or "none"
    if net.kind == "mlp":
        return ", ".join(str(h) for h in net.widths[1:-1]) or "none"
    return net.describe()


def datasets(layout: Layout, config: dict) -> list[dict]:
    rows = []
    for name in config.get("datasets", []):
        meta = read_json(layout.data_meta(name)) or {}
        sizes = meta.get("sizes", {})
        line, hashes = _source_lines(meta.get("source") or {})
        network = network_text(config, name)
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


def tuning_facts(layout: Layout, summary: pd.DataFrame) -> dict:
    """Diverged tuning settings, cells without a valid setting, cells at a hard bound, and per
    tuned axis the picks that are interior, at an edge of what was tried, or at a hard bound;
    per run the settings tried and the final resolution of each axis.

    From the performance notebook's ``lr_sensitivity.csv`` (settings tried and diverged per
    cell), ``diverged_settings.csv`` (the diverged settings themselves, in grid order) and
    ``tuning_axes.csv`` (best.json's record of each tuned axis).
    """
    cells = read_csv(layout.analysis("lr_sensitivity.csv"))
    bad_settings = read_csv(layout.analysis("diverged_settings.csv"))
    diverged = []
    total = 0
    for cell in records(cells):
        total += int(cell["settings"])
        if not int(cell["diverged_settings"]):
            continue
        bad = bad_settings[
            (bad_settings["dataset"] == cell["dataset"])
            & (bad_settings["optimizer"] == cell["optimizer"])
            & (bad_settings["batch_size"] == cell["batch_size"])
        ]
        diverged.append(
            {
                "dataset": cell["dataset"],
                "run": cell["optimizer"],
                "batch_size": int(cell["batch_size"]),
                "count": f"{int(cell['diverged_settings'])} of {int(cell['settings'])}",
                "settings": "; ".join(_setting_text(r) for r in records(bad)),
            }
        )
    chosen = records(summary)
    at_bound = [
        f"`{r['run']}` on {r['dataset']}, B = {int(r['batch_size'])}"
        for r in chosen
        if truthy(r["at_bound"])
    ]
    no_valid = [
        f"`{r['run']}` on {r['dataset']}, B = {int(r['batch_size'])}"
        for r in chosen
        if truthy(r["all_diverged"])
    ]
    axes = read_csv(layout.analysis("tuning_axes.csv"))
    return {
        "axes": _axis_counts(axes),
        "runs": _run_searches(axes),
        "diverged": diverged,
        "at_bound": at_bound,
        "no_valid": no_valid,
        "cells": len(chosen),
        "settings": total,
        "n_diverged": sum(int(d["count"].split()[0]) for d in diverged),
    }


AXIS_NAMES = {"learning_rate": "learning rate", "step": "step eta/alpha (I, II)",
              "alpha": "scale-free alpha", "momentum": "1 - momentum"}


def _axis_counts(axes: pd.DataFrame) -> list[dict]:
    """Per tuned axis: cells, and how many picks are interior, at an edge, at a bound."""
    rows = []
    for axis, name in AXIS_NAMES.items():
        part = axes[axes["axis"] == axis] if len(axes) else axes
        if not len(part):
            continue
        status = part["status"].astype(str)
        rows.append({"axis": name, "cells": len(part),
                     **{s: int((status == s).sum()) for s in ("interior", "edge", "bound")}})
    return rows


def _run_searches(axes: pd.DataFrame) -> list[dict]:
    """Per run: the settings tried per cell (range over cells) and each axis's resolution."""
    rows = []
    if not len(axes):
        return rows
    for run, part in axes.groupby("optimizer", sort=False):
        trials = part.drop_duplicates(["dataset", "batch_size"])["trials"].astype(int)
        spread = f"{trials.min()}" if trials.min() == trials.max() else (
            f"{trials.min()}-{trials.max()}")
        resolution = part.drop_duplicates("axis").set_index("axis")["resolution"]
        rows.append({"run": run, "trials": spread,
                     "resolution": ", ".join(f"{name} x{fmt(resolution[axis], 3)}"
                                             for axis, name in AXIS_NAMES.items()
                                             if axis in resolution.index)})
    return rows


def _setting_text(r: dict) -> str:
    parts = [f"$\\eta$ {fmt(r['learning_rate'])}"]
    if not missing(r.get("momentum")):
        parts.append(f"m {fmt(r['momentum'])}")
    if not missing(r.get("alpha_scaled")):
        parts.append(f"scale-free $\\alpha$ {fmt(r['alpha_scaled'])}")
    elif not missing(r.get("alpha")):
        parts.append(f"$\\alpha$ {fmt(r['alpha'])}")
    return ", ".join(parts)


def protocol(config: dict) -> dict:
    """The tuning protocol's numbers, formatted from the config (n/a where a key is absent)."""
    tune = config.get("tune", {}) or {}
    alpha = tune.get("alpha", {}) or {}

    def span(pair):  # a hard bound of 1000 reads "1000", not "1e+03"
        return f"[{number(pair[0])}, {number(pair[1])}]" if isinstance(pair, list | tuple) else NA

    return {
        "lr_range": f"[{fmt(tune.get('lr_min'))}, {fmt(tune.get('lr_max'))}]",
        "lr_per_decade": fmt(tune.get("lr_per_decade")),
        "lr_bounds": span(tune.get("lr_bounds")),
        "axis_points": fmt(tune.get("axis_points")),
        "one_minus_momentum": span(tune.get("one_minus_momentum")),
        "momentum_tuned": isinstance(tune.get("one_minus_momentum"), list | tuple),
        "fixed_momentum": NA if isinstance(tune.get("one_minus_momentum"), list | tuple | None)
        else fmt(1 - tune["one_minus_momentum"]),
        "one_minus_momentum_bounds": span(tune.get("one_minus_momentum_bounds")),
        "alpha": {v: span(alpha.get(v)) for v in ("I", "II", "III")},
        "alpha_bounds": {v: span((tune.get("alpha_bounds") or {}).get(v))
                         for v in ("I", "II", "III")},
        "tune_seeds": ", ".join(str(s) for s in tune.get("seeds", [])) or NA,
        "n_tune_seeds": len(tune.get("seeds", [])),
        "final_seeds": ", ".join(str(s) for s in config_value(config, "train.seeds", [])) or NA,
        "n_final_seeds": len(config_value(config, "train.seeds", []) or []),
        "epochs": fmt(config_value(config, "train.epochs"), 6),
        "schedule": str(config_value(config, "train.schedule", NA)),
        "backend": str(config_value(config, "train.backend", NA)),
        "diverge_loss": fmt(config_value(config, "train.diverge_loss"), 6),
        "hidden": hidden_text(config),
        "network_kind": model_kind(config.get("model") or {}),
        "init_seed": str(config_value(config, "model.init_seed", NA)),
        "train_size": str(config_value(config, "data.train_size", "all") or "all"),
        "val_fraction": fmt(config_value(config, "data.val_fraction")),
        "batch_sizes": ", ".join(str(b) for b in config.get("batch_sizes", [])),
        "prototype": _prototype_rows(config),
        "prototype_runs": [r for r in config.get("optimizers", []) if "@" in r],
    }


def _prototype_rows(config: dict) -> list[dict]:
    """The prototype's alphas, their value on our loss, and the fixed-alpha run of each."""
    fixed = {run.variant: run.name for run in map(parse_run, config.get("optimizers", []))
             if run.fixed_alpha is not None}
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
