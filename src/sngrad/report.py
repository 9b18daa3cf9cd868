"""Render paper/report.md from the result files of the pipeline.

Every number in the report is read here from a file under ``results/`` (the formats of
docs/CONTRACTS.md and of the analysis notebooks) and handed to the Jinja2 template as data;
the template only lays it out. Missing optional parts (theory, alpha sweep, benchmark) turn
into a sentence saying which rule has not run, never into a blank cell.

    python -m sngrad report --results results --template paper/templates/report.md.j2 \
        --out paper/report.md --figures paper/figures --config '<resolved config JSON>'
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import subprocess
from collections import defaultdict
from importlib import metadata
from pathlib import Path

from sngrad.errors import SngradError

# Package versions printed in the reproducibility section.
PACKAGES = ("jax", "jaxlib", "optax", "numpy", "pandas", "snakemake", "papermill", "jupytext")

# Figures the analysis rules write; the template shows the ones that exist.
FIGURES = (
    "learning_curves",
    "accuracy_vs_batch_size",
    "lr_sensitivity",
    "gradient_snr",
    "noise_scale",
    "sngrad_factors",
    "alpha_sensitivity",
)


# ----------------------------------------------------------------------------- formatting


def _missing(x) -> bool:
    if x is None or x == "":
        return True
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return False


def fmt(x, digits: int = 3) -> str:
    """``digits`` significant digits; missing values read "n/a" (never "nan")."""
    if _missing(x):
        return "n/a"
    if isinstance(x, str):
        try:
            x = float(x)
        except ValueError:
            return x
    return f"{float(x):.{digits}g}"


def pct(x, decimals: int = 2) -> str:
    """A fraction as a percentage with fixed decimals (0.9734 -> 97.34)."""
    return "n/a" if _missing(x) else f"{100 * float(x):.{decimals}f}"


def _number(text: str):
    """CSV cell -> int, float, bool, None or the string itself."""
    if text in ("", "nan", "NaN", "None"):
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


# ----------------------------------------------------------------------------- context


def config_hash(config: dict) -> str:
    """sha256 of the resolved config as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _datasets(results: Path, config: dict) -> list[dict]:
    rows = []
    for name in config["datasets"]:
        path = results / "data" / f"{name}.json"
        meta = _read_json(path) if path.exists() else {}
        sizes = meta.get("sizes", {})
        dim, classes = meta.get("feature_dim"), meta.get("num_classes")
        layers = [dim, *config["model"]["hidden"], classes]
        rows.append(
            {
                "name": name,
                "description": meta.get("description", ""),
                "n_train": sizes.get("train"),
                "n_val": sizes.get("val"),
                "n_test": sizes.get("test"),
                "feature_dim": dim,
                "num_classes": classes,
                "network": "-".join("?" if n is None else str(n) for n in layers),
            }
        )
    return rows


def _grid(rows: list[dict]) -> dict:
    """summary rows -> {dataset: {batch_size: {optimizer: row}}}."""
    grid: dict = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        grid[row["dataset"]][row["batch_size"]][row["optimizer"]] = row
    return {d: dict(by_bs) for d, by_bs in grid.items()}


def _findings(paired: list[dict]) -> dict:
    """What the paired comparisons support: CIs above zero, below zero, or across it."""
    better = [r for r in paired if r["excludes_zero"] and r["diff_mean"] > 0]
    worse = [r for r in paired if r["excludes_zero"] and r["diff_mean"] < 0]
    unclear = [r for r in paired if not r["excludes_zero"]]
    return {"better": better, "worse": worse, "unclear": unclear, "total": len(paired)}


def _best_per_setting(summary: list[dict]) -> list[dict]:
    """The optimizer with the highest mean test accuracy for each dataset and batch size."""
    best: dict = {}
    for row in summary:
        key = (row["dataset"], row["batch_size"])
        acc = row["test_accuracy_mean"]
        if _missing(acc):
            continue
        if key not in best or acc > best[key]["test_accuracy_mean"]:
            best[key] = row
    return [best[k] for k in sorted(best)]


def _benchmark(results: Path) -> dict | None:
    path = results / "benchmark" / "step_time.csv"
    if not path.exists():
        return None
    rows = read_csv(path)
    # the method names are "dense" or "sngrad-dense": the backend the training uses
    dense = [r for r in rows if str(r["method"]).endswith("dense")]
    return {"rows": rows, "dense": dense, "sizes": rows[0]["sizes"] if rows else ""}


def _alpha(results: Path) -> list[dict] | None:
    """Per (dataset, optimizer): the best alpha and the spread of test accuracy over alphas."""
    path = results / "analysis" / "alpha_sensitivity.csv"
    if not path.exists():
        return None
    groups: dict = defaultdict(list)
    for row in read_csv(path):
        groups[(row["dataset"], row["optimizer"], row["batch_size"])].append(row)
    out = []
    for (dataset, optimizer, batch_size), rows in sorted(groups.items()):
        scored = [r for r in rows if not _missing(r["test_accuracy_mean"])]
        if not scored:
            continue
        top = max(scored, key=lambda r: r["test_accuracy_mean"])
        low = min(scored, key=lambda r: r["test_accuracy_mean"])
        out.append(
            {
                "dataset": dataset,
                "optimizer": optimizer,
                "batch_size": batch_size,
                "alphas": [r["alpha"] for r in rows],
                "best_alpha": top["alpha"],
                "best": top["test_accuracy_mean"],
                "worst": low["test_accuracy_mean"],
                "spread": top["test_accuracy_mean"] - low["test_accuracy_mean"],
            }
        )
    return out


def _theory(results: Path) -> dict | None:
    theory = results / "theory"
    if not (theory / "checks.csv").exists():
        return None
    return {
        "checks": {row["name"]: row for row in read_csv(theory / "checks.csv")},
        "stationary_1d": read_csv(theory / "stationary_1d.csv"),
        "summary": _read_json(theory / "summary.json"),
    }


def _wall_time(record: dict) -> float:
    for key in ("wall_time", "wall_time_s", "wall_seconds", "seconds"):
        if isinstance(record.get(key), int | float):
            return float(record[key])
    return 0.0


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"


def _provenance(results: Path, config: dict) -> dict:
    records = [
        _read_json(p)
        for name in ("provenance.json", "tuning_provenance.json", "alpha_sweep_provenance.json")
        for p in sorted(results.glob(f"*/*/bs*/{name}"))
        if p.parts[-4] in config["datasets"]
    ]
    devices = sorted(
        {
            str(device)
            for r in records
            # one device name or the list of jax.devices()
            for device in (r["device"] if isinstance(r.get("device"), list) else [r.get("device")])
            if device
        }
    )
    commits = sorted({str(r["git_commit"]) for r in records if r.get("git_commit")})
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "runs": len(records),
        "wall_time_s": sum(_wall_time(r) for r in records),
        "devices": devices or ["unknown"],
        "run_commits": commits,
        "commit": _git_commit(),
        "versions": versions,
    }


def _commands(profile: str, datasets: list[str]) -> list[str]:
    configfile = "" if profile == "default" else f" --configfile config/{profile}.yaml"
    first = datasets[0] if datasets else "digits"
    return [
        f"snakemake --cores 4{configfile}",
        f"snakemake --cores 4{configfile} results/{first}/summary.csv",
        f"snakemake --cores 4{configfile} paper/report.md",
    ]


def collect(results_dir, out, figures_dir, config: dict) -> dict:
    """Everything the template needs, read from ``results_dir``."""
    results, out, figures = Path(results_dir), Path(out), Path(figures_dir)
    summary = [
        row
        for d in config["datasets"]
        if (results / d / "summary.csv").exists()
        for row in read_csv(results / d / "summary.csv")
    ]
    paired = [
        row
        for d in config["datasets"]
        if (results / d / "paired.csv").exists()
        for row in read_csv(results / d / "paired.csv")
    ]
    noise_path = results / "analysis" / "gradient_noise.csv"
    lr_path = results / "analysis" / "lr_sensitivity.csv"
    theory = _theory(results)
    provenance = _provenance(results, config)
    if theory:
        provenance["wall_time_s"] += _wall_time(theory["summary"])
    return {
        "config": config,
        "profile": config.get("profile", "unknown"),
        "config_hash": config_hash(config),
        "datasets": _datasets(results, config),
        "optimizers": config["optimizers"],
        "batch_sizes": config["batch_sizes"],
        "summary": summary,
        "grid": _grid(summary),
        "paired": paired,
        "findings": _findings(paired),
        "best": _best_per_setting(summary),
        "benchmark": _benchmark(results),
        "gradient_noise": [r for r in read_csv(noise_path) if r.get("reference")]
        if noise_path.exists()
        else None,
        "lr_sensitivity": read_csv(lr_path) if lr_path.exists() else None,
        "alpha": _alpha(results),
        "theory": theory,
        # every known name, None where no rule wrote the figure (StrictUndefined stays happy)
        "figures": {
            name: os.path.relpath(figures / f"{name}.png", out.parent).replace(os.sep, "/")
            if (figures / f"{name}.png").exists()
            else None
            for name in FIGURES
        },
        "provenance": provenance,
        "commands": _commands(config.get("profile", "default"), config["datasets"]),
    }


def render_report(results_dir, template, out, figures_dir, *, config: dict | None = None) -> str:
    """Render ``template`` with the results and write it to ``out`` atomically."""
    import jinja2

    if config is None:
        raise SngradError("render_report needs the resolved config (--config JSON or @file)")
    template = Path(template)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template.parent),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = fmt
    env.filters["pct"] = pct
    text = env.get_template(template.name).render(**collect(results_dir, out, figures_dir, config))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    return text


def _config_arg(value: str) -> dict:
    try:
        text = Path(value[1:]).read_text() if value.startswith("@") else value
        return json.loads(text)
    except (OSError, json.JSONDecodeError) as err:
        raise SngradError(f"--config: not a JSON object or @file ({err})") from None


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sngrad report", description="render paper/report.md from results/"
    )
    parser.add_argument("--results", default="results", help="results directory")
    parser.add_argument("--template", default="paper/templates/report.md.j2")
    parser.add_argument("--out", default="paper/report.md")
    parser.add_argument("--figures", default="paper/figures", help="where the figures are")
    parser.add_argument("--config", required=True, help="resolved config: JSON or @file.json")
    args = parser.parse_args(argv)
    render_report(
        args.results, args.template, args.out, args.figures, config=_config_arg(args.config)
    )
    print(f"wrote {args.out}")
    return 0
