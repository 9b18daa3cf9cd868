# Shared helpers of the rules: config validation, paths, the training spec, thread limits.

import json
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate


SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
validate(config, schema=str(SCHEMA))
KNOWN_DATASETS = yaml.safe_load(SCHEMA.read_text())["$defs"]["dataset"]["enum"]

# The interpreter running snakemake (the project's venv) runs every command, so that no job
# picks up another python from PATH; with --software-deployment-method conda each rule's
# environment (environment.yml, the same pins) provides `python` instead.
CONDA_ENV = "../../environment.yml"
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    PYTHON = "python"
else:
    PYTHON = shlex.quote(sys.executable)

# Each job gets `threads` cores and no more: XLA's CPU backend and the BLAS libraries otherwise
# start one thread per machine core in every job, and `--cores N` would oversubscribe.
# Compiled XLA programs are kept on disk and shared between jobs: compilation, not training,
# is most of a small job's time, and programs recur (the same network initialisation at every
# batch size, everything on a rerun). A cache entry is a pure function of the program, so a
# stale one cannot change a result.
THREAD_LIMITS = (
    'export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false '
    'intra_op_parallelism_threads={threads}" '
    "OMP_NUM_THREADS={threads} OPENBLAS_NUM_THREADS={threads} MKL_NUM_THREADS={threads} "
    "JAX_COMPILATION_CACHE_DIR=.cache/jax JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0.2; "
)


wildcard_constraints:
    # Only known names, so that results/{dataset}/... never captures results/analysis/...
    dataset="|".join(KNOWN_DATASETS),
    optimizer=r"[a-z]+(\+sngrad[123])?",
    batch_size="[0-9]+",
    notebook="[a-z0-9_]+",


def threads_for(stage):
    return config["resources"]["threads"][stage]


def mem_for(stage):
    return config["resources"]["mem_mb"][stage]


def training_spec():
    """The JSON spec of docs/CONTRACTS.md, passed to tune/train/alpha-sweep as a param."""
    spec = {
        "hidden": config["model"]["hidden"],
        "init_seed": config["model"]["init_seed"],
        "tune": config["tune"],
        **{key: config["train"][key] for key in config["train"]},
    }
    return json.dumps(spec, sort_keys=True)


def run_file(name, dataset="{dataset}", optimizer="{optimizer}", batch_size="{batch_size}"):
    return f"results/{dataset}/{optimizer}/bs{batch_size}/{name}"


def runs(dataset):
    """(optimizer, batch size) pairs of the main comparison on one dataset."""
    return [(opt, bs) for opt in config["optimizers"] for bs in config["batch_sizes"]]


def run_files(dataset, name):
    return [run_file(name, dataset, opt, bs) for opt, bs in runs(dataset)]


def alpha_files(dataset):
    bs = config["alpha_sweep"]["batch_size"]
    return [run_file("alpha_sweep.csv", dataset, opt, bs) for opt in config["alpha_sweep"]["optimizers"]]


def all_datasets(pattern):
    return [pattern.format(dataset=d) for d in config["datasets"]]


def comma_list(values):
    return ",".join(str(v) for v in values)


def report_inputs():
    """Everything the report reads; rules are referenced, so report.smk comes last."""
    inputs = {
        "template": "paper/templates/report.md.j2",
        "partials": sorted(
            str(p) for p in Path("paper/templates").glob("*.md.j2") if p.name != "report.md.j2"
        ),
        "summaries": all_datasets("results/{dataset}/summary.csv"),
        "paired": all_datasets("results/{dataset}/paired.csv"),
        "data": all_datasets("results/data/{dataset}.json"),
        # the report sums the wall times of every tuning and training job
        "provenance": [
            f
            for d in config["datasets"]
            for name in ["tuning_provenance.json", "provenance.json"]
            for f in run_files(d, name)
        ],
        "performance": rules.performance.output,
        "gradient_noise": rules.gradient_noise.output,
        "benchmark": rules.benchmark.output.csv,
    }
    if config["alpha_sweep"]["optimizers"]:
        inputs["alpha"] = rules.alpha_sensitivity.output
        inputs["sweep_provenance"] = [
            f.replace("alpha_sweep.csv", "alpha_sweep_provenance.json")
            for d in config["datasets"]
            for f in alpha_files(d)
        ]
    if config["theory"]["enabled"]:
        inputs["theory"] = theory_outputs()
    return inputs


def notebook_params(**values):
    """Papermill parameters as one YAML (JSON) string for `papermill -y`."""
    return json.dumps(values, sort_keys=True)


def theory_outputs():
    from_notebook = [
        "results/theory/checks.csv",
        "results/theory/stationary_1d.csv",
        "results/theory/summary.json",
        "results/theory/theory.ipynb",
    ]
    figures = [
        f"paper/figures/theory_{name}.png"
        for name in [
            "stationary_1d",
            "batch_temperature",
            "double_well",
            "two_temperatures",
            "sngrad_variants",
            "lecture_quadratic",
        ]
    ]
    return from_notebook + figures


def python(args, limit_threads=True):
    """A shell command running `python ARGS`; Snakemake fills the {placeholders} of ARGS."""
    return f"{THREAD_LIMITS if limit_threads else ''}{PYTHON} {args}"


# Papermill runs each analysis notebook: `-k python3` is the venv's kernel; the log keeps the
# cell outputs so that a failing notebook explains itself.
PAPERMILL = python(
    "-m papermill {input.notebook} {output.notebook} -k python3 "
    "--log-output -y {params.parameters:q} > {log} 2>&1"
)
