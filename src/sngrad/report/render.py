"""Render results/<profile>/report.md from the result files of one profile.

The report collects and formats; it computes no statistic of its own. Every number comes
from a table a notebook or job wrote under ``results/<profile>/`` (paths from
:mod:`sngrad.layout`; the notebooks' tables are `NOTEBOOK_TABLES` there) or a provenance sidecar,
and reaches the Jinja2 templates as a finished string (:mod:`sngrad.report.format`): the
templates only lay text out. Template X is filled by ``sngrad/report/X.py``. A part whose rule
has not run becomes a sentence saying so, never a blank cell or "nan".

    python -m sngrad report --profile P --results-root results \
        --template paper/templates/report.md.j2 --out results/P/report.md \
        --config @config.json [--inputs @inputs.json]

``--inputs`` lists the report rule's input files (a JSON list); their
digests make the report's provenance. Without it the inputs are enumerated from the config."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from sngrad import provenance
from sngrad.errors import SngradError
from sngrad.io import write_text
from sngrad.layout import Layout
from sngrad.report import (
    batch_sizes,
    experiment,
    figures,
    implementation,
    ledger,
    noise,
    references,
    reproducibility,
    results,
    scope,
    summary,
    theory,
)
from sngrad.report.format import array, fixed, fmt, pct
from sngrad.report.read import (
    concat,
)
from sngrad.spec import read_json_arg
from sngrad.tables import PAIRED_COLUMNS, SIGNIFICANCE, SUMMARY_COLUMNS


def collect(
    layout: Layout, config: dict, out, *, inputs: list[str] | None = None, now: float | None = None
) -> dict:
    """Everything the templates need, read from the profile's result tree."""
    out = Path(out)
    datasets = list(config.get("datasets", []))
    summary_table = concat(layout.summary(d) for d in datasets)
    paired_table = concat(layout.paired(d) for d in datasets)
    if summary_table.empty:
        summary_table = pd.DataFrame(columns=SUMMARY_COLUMNS)
    if paired_table.empty:
        paired_table = pd.DataFrame(columns=PAIRED_COLUMNS)
    primary = (config.get("train") or {}).get("schedule", "constant")
    arm = "constant" if primary != "constant" else None  # the constant-rate arm, if any
    epochs_rows = results.paired_rows(paired_table, "equal_epochs", schedule=primary)
    compute_rows = results.paired_rows(paired_table, "equal_compute", schedule=primary)
    loss_rows = results.paired_rows(paired_table, "equal_epochs", "train_loss", primary)
    arm_rows = [*results.paired_rows(paired_table, "equal_epochs", schedule=arm),
                *results.paired_rows(paired_table, "equal_epochs", "train_loss", arm)
                ] if arm else []
    inputs = reproducibility.expected_inputs(layout, config) if inputs is None else inputs
    prov = reproducibility.input_provenance(inputs)
    prov.update(
        # the checkout the workflow runs in (its working directory), not where sngrad is installed
        commit=provenance.git_commit(Path.cwd()),
        dirty=provenance.git_dirty(Path.cwd()),
        versions=provenance.package_versions(),
    )
    dataset_rows = experiment.datasets(layout, config)
    elapsed = reproducibility.elapsed(layout, now)
    dirty = prov["dirty"]
    prov["dirty_text"] = (
        "unknown (not a git checkout)" if dirty is None else ("yes" if dirty else "no")
    )
    return {
        "profile": layout.profile,
        "config": config,
        "config_hash": reproducibility.config_hash(config),
        "datasets": dataset_rows,
        "runs": list(config.get("optimizers", [])),
        "batch_sizes": list(config.get("batch_sizes", [])),
        "protocol": experiment.protocol(config),
        "seed_tables": results.seed_tables(config, summary_table, paired_table),
        "batch": batch_sizes.report_context(layout, config),
        "chosen": results.chosen_rows(summary_table),
        "winners": summary.winners(layout, datasets),
        "paired": epochs_rows,
        "paired_compute": compute_rows,
        "paired_loss": loss_rows,
        "findings_loss": summary.findings(loss_rows),
        "families": results.families(paired_table),
        "no_op": results.no_op_rows(paired_table),
        "scope": scope.report_context(config),
        "references": references.context(),
        "schedules": results.schedule_rows(layout, datasets),
        "primary_schedule": primary,
        "paired_arm": arm_rows,
        "findings_arm": summary.findings(arm_rows),
        "findings": summary.findings(epochs_rows),
        "findings_compute": summary.findings(compute_rows),
        "prototype_rows": [r for r in epochs_rows if "@" in r["run"]],
        "significance": fmt(SIGNIFICANCE),
        "tuning": experiment.tuning_facts(layout, summary_table),
        "lr_rows": results.lr_rows(layout),
        "alpha_rows": results.alpha_rows(layout),
        "shrink": results.shrink_rows(layout),
        "training_length": results.training_length(layout),
        "control_variates": results.control_variates(layout, epochs_rows),
        "benchmark": implementation.benchmark(layout, prov["devices"]),
        "engine": implementation.engine_rows(layout),
        "elapsed": elapsed,
        "ledger": ledger.context(layout, config, elapsed.get("seconds")),
        "provenance": prov,
        "figures": figures.figures(layout, out),
        "theory": theory.theory(layout),
        "noise": noise.report_context(layout, datasets, config),
        "commands": reproducibility.commands(layout.profile),
    }


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
    env.filters["fixed"] = fixed
    env.filters["array"] = array
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
    inputs = reproducibility.inputs_arg(args.inputs)
    render_report(layout, args.template, out, config=config, inputs=inputs)
    print(f"wrote {out}")
    return 0
