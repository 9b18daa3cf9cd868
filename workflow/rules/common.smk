# Shared pieces of the rules: the profile (read and checked before any job), the result layout
# of sngrad.layout, thread limits, and the one command line of each kind of job.

import json
import re
import shlex
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod
from snakemake_interface_executor_plugins.settings import ExecMode
from snakemake.utils import update_config

from sngrad import compile_cache
from sngrad import config as profiles
from sngrad import profile as profile_values
from sngrad import costs, ledger
from sngrad import runlock, runstart
from sngrad.data.recovery import repair as repair_splits
from sngrad.errors import SngradError
from sngrad.names import parse_run
from sngrad.layout import (
    PUBLISHING_PROFILE,
    TRAIN_FILES,
    TUNE_FILES,
    Layout,
    notebook_source,
    noise_enabled,
    notebook_tables,
    notebooks_run,
)
from sngrad.layout import report_inputs as layout_report_inputs
from sngrad.overrides import typed as typed_overrides

# ----------------------------------------------------------------------------- the profile
# Snakemake merges config files. A profile named with --configfile must replace the default
# instead (a merged dict would keep the default's datasets), so config/default.yaml is read
# only when no config file was given, and read here rather than by the `configfile:`
# directive so that a YAML error names its file and line.


# Every path of the workflow (profiles, results, templates) is relative to the repository root,
# so a run from elsewhere (`snakemake -s .../workflow/Snakefile`, `--directory`) stops here.
REPOSITORY = Path(workflow.basedir).parent
if Path.cwd().resolve() != REPOSITORY.resolve():
    print(f"sngrad: error: run snakemake from the repository root, not {Path.cwd()}: "
          f"cd {shlex.quote(str(REPOSITORY))} && snakemake --cores 4", file=sys.stderr)
    sys.exit(2)


def _shown(path):
    path = Path(path)
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _load_profile():
    files = [_shown(p) for p in workflow.overwrite_configfiles]
    overrides = typed_overrides(dict(workflow.config_settings.config))
    if files:
        loaded, source = dict(config), ", ".join(files)
    else:
        loaded, source = profile_values.read_yaml(profile_values.DEFAULT_PROFILE), profile_values.DEFAULT_PROFILE
    update_config(loaded, overrides)  # again over the files: nested values come as text
    if overrides:
        source += " (with --config)"
    schema = Path(workflow.basedir) / "schemas" / "config.schema.yaml"
    profiles.check_profile(loaded, source, schema)
    if loaded["profile"] == PUBLISHING_PROFILE:
        published = profile_values.read_yaml(profile_values.DEFAULT_PROFILE)
        problem = profiles.reserved_name_problem(loaded, source, published)
        if problem:
            raise SngradError(problem)
    return loaded


try:
    _profile = _load_profile()
except SngradError as err:
    # one line per problem, no traceback, before any job
    print(*(f"sngrad: error: {line}" for line in str(err).splitlines()), sep="\n", file=sys.stderr)
    sys.exit(2)
config.clear()
config.update(_profile)

L = Layout(config["profile"])
DATASETS = config["datasets"]
RUNS = config["optimizers"]
BATCH_SIZES = config["batch_sizes"]
PUBLISHES = config["profile"] == PUBLISHING_PROFILE
TRAINING_SPEC = profile_values.training_spec(config)
CONFIG_JSON = json.dumps(config, sort_keys=True)
# the profile's result tree for the report and publish commands
PROFILE_ARGS = f"--profile {shlex.quote(L.profile)} --results-root {shlex.quote(L.root)}"
NOTEBOOKS_RUN = notebooks_run(config)
# the noise study (its reference run, the noise jobs, the gradient_noise notebook) is defined
# only where the profile runs it: noise.enabled, which config check allows for MLPs alone
NOISE_STUDY = noise_enabled(config)


wildcard_constraints:
    # exactly the profile's names, so that results/<p>/{dataset}/... never captures
    # results/<p>/analysis/... and a run name's `+` and `@` need no escaping by the user
    dataset="|".join(map(re.escape, DATASETS)),
    optimizer="|".join(map(re.escape, RUNS)),
    batch_size="|".join(map(str, BATCH_SIZES)),


# ----------------------------------------------------------------------------- commands
# The interpreter running snakemake (the project's venv) runs every command, so that no job
# picks up another python from PATH; with --software-deployment-method conda each rule's
# environment (environment.yml, the same pins) provides `python` instead.
CONDA_ENV = "../../environment.yml"
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    PYTHON = "python"
else:
    PYTHON = shlex.quote(sys.executable)


# the folder is named on the machine that runs the job (a cluster's nodes may differ in CPU)
COMPILE_CACHE = " ".join(
    [f"{k}={shlex.quote(v)}" for k, v in compile_cache.SETTINGS.items()]
    + [f'JAX_COMPILATION_CACHE_DIR="$({PYTHON} -m sngrad.compile_cache)"']
)


def python(args, threads="{threads}"):
    """A shell command running `python ARGS` on `threads` cores; Snakemake fills {placeholders}.

    Each job gets its threads and no more: XLA's CPU backend and the BLAS libraries otherwise
    start one thread per machine core in every job, and `--cores N` would oversubscribe.
    Compiled XLA programs are kept in the user's cache folder, one per CPU type, and shared by
    every job, clone and profile (sngrad.compile_cache says why that cannot change a result).

    The job runs inside the ledger's frame (sngrad.ledger): the shell notes the wall clock
    before it and, after it, the CPU time of its processes (bash's `times`); a sngrad command
    adds its compilation and scan seconds through $SNGRAD_PHASES; the entry goes to
    results/<profile>/ledger/<stage>/<name>.json. The job's {log} names both side files.
    """
    limits = (
        f"sngrad_started=$EPOCHREALTIME; "
        f'export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false '
        f'intra_op_parallelism_threads={threads}" '
        f"OMP_NUM_THREADS={threads} OPENBLAS_NUM_THREADS={threads} MKL_NUM_THREADS={threads} "
        f"{COMPILE_CACHE} {ledger.PHASES_ENV}={ledger.phases_file('{log:q}')}; "
    )
    ledger_entry = (
        f"times > {ledger.times_file('{log:q}')}; "
        f"{PYTHON} -m sngrad.ledger record --log {{log:q}} --started $sngrad_started "
        f"--threads {threads}"
    )
    # a subshell, so that a failure anywhere in `args` (an `A && B`, a pipe) fails the job
    return f"{limits}({PYTHON} {args}); {ledger_entry}"


def threads_for(stage):
    return config["resources"]["threads"][stage]


def mem_for(stage):
    return config["resources"]["mem_mb"][stage]


def run_file(name, dataset="{dataset}", run="{optimizer}", batch_size="{batch_size}"):
    return L.run_file(name, dataset, run, batch_size)


def run_files(dataset, *names):
    """Files ``names`` of every (run, batch size) of one dataset."""
    return [run_file(n, dataset, r, b) for r in RUNS for b in BATCH_SIZES for n in names]


# what the performance notebook reads of every run (the data sidecars give its layer sizes)
PERFORMANCE_FILES = ("tuning.csv", "best.json", "metrics.csv", "diagnostics.csv")


def noise_tuned(dataset):
    """RUN=best.json of every tuned sngrad-on-sgd run of the profile."""
    bs = profile_values.reference_batch_size(config)
    return {run: run_file("best.json", dataset, run, bs) for run in profile_values.noise_runs(config)}


def report_inputs():
    """Everything the report reads (sngrad.layout.report_inputs, also what the report digests
    when rendered by hand)."""
    return layout_report_inputs(L, config)


# ----------------------------------------------------------------------------- job order
# Among the jobs ready to run, Snakemake starts those of higher priority first. The jobs that
# need no training (the data, the theory notebook, the reference run's tuning, the reference
# run and the noise study after it) go first, so that none of them is left for the end; then
# the cells by their counted cost per step, the costliest first (the longest-processing-time
# order, which leaves the short jobs to fill the cores at the end of the run).
EARLY = 1000


def cell_priority(wildcards):
    """EARLY for the reference run's cell, else 10x the run's counted step cost / SGD's."""
    batch = int(wildcards.batch_size)
    if (NOISE_STUDY and wildcards.optimizer == profile_values.REFERENCE_RUN
            and batch == profile_values.reference_batch_size(config)):
        return EARLY
    network = profile_values.architecture(config, wildcards.dataset)
    run = parse_run(wildcards.optimizer)  # the rule's run name, parsed where it enters
    ratio = costs.example_flops(run, network, batch) / costs.example_flops(
        parse_run("sgd"), network, batch)
    return round(10 * ratio)


def run_log(stage):
    return L.log(stage, "{dataset}", "{optimizer}", "bs{batch_size}")


def notebook_parameters(datasets, **extra):
    """The papermill parameters every analysis notebook takes (JSON for sngrad.notebook)."""
    values = {
        "profile": L.profile,
        "results_root": L.root,
        "datasets": list(datasets),
        "runs": RUNS,
        "batch_sizes": BATCH_SIZES,
        "config_json": CONFIG_JSON,
        **extra,
    }
    return json.dumps(values, sort_keys=True)


# Papermill executes each analysis notebook from its jupytext source (converted on the fly,
# so no intermediate notebook file), through sngrad.notebook: the venv's kernel, the cell
# outputs in the log, and a failure's cause (a full disk, a missing file) as its last line.
NOTEBOOK = python(
    "-m jupytext --to ipynb --output - {input.source:q} 2> {log} | "
    + PYTHON
    + " -m sngrad notebook {output.notebook:q} --source {input.source:q} "
    "--parameters {params.parameters:q} >> {log} 2>&1"
)


# ----------------------------------------------------------------------------- run handlers
# A run holds its profile's lock (sngrad.runlock: it records host, process id and start time;
# a killed run leaves no stale lock behind, and the jobs it left running are stopped before
# this run starts any) and records when the results it reports began: the report states the
# elapsed wall time since then. The start is kept across reruns of the same profile (a resumed
# run, a rerun of the report alone); a changed profile, or a results folder without a start,
# begins a new one.


def _recorded_data_sha256(dataset):
    """data_sha256 of every tuning, training and reference result of ``dataset`` so far."""
    found = set()
    for record in Path(L.base, dataset).glob("**/*.json"):
        if record.name not in ("tuning_provenance.json", "provenance.json", "reference.json"):
            continue
        try:
            raw = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        for where in (raw, raw.get("provenance") or {}):
            if isinstance(where, dict) and where.get("data_sha256"):
                found.add(where["data_sha256"])
    return found


# A corrupt or truncated splits file is rebuilt in place before Snakemake compares the files'
# times (sngrad.data.recovery.repair): the command a job's error prints is this workflow's own,
# so one run recovers, and the results made from the good bytes are kept. Not in the jobs a
# cluster runs (they parse this file too), only in the process that plans the run.
if workflow.exec_mode == ExecMode.DEFAULT:
    try:
        for _dataset in DATASETS:
            _done = repair_splits(L.data(_dataset), _recorded_data_sha256(_dataset))
            if _done:
                print(f"sngrad: {_done}", file=sys.stderr)
    except (SngradError, OSError) as err:
        print(f"sngrad: error: cannot rebuild a corrupt splits file: {err}", file=sys.stderr)
        sys.exit(2)


onstart:
    try:
        runlock.acquire(L.run_lock(), L.profile)
        runstart.record(L.run_started(), CONFIG_JSON, sys.argv)
    except SngradError as err:
        print(f"sngrad: error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        print(
            f"sngrad: error: {err.filename or L.base}: cannot write the run's lock or start "
            f"({err.strerror or err}); make the results folder writable (or free space) "
            "and rerun",
            file=sys.stderr,
        )
        sys.exit(2)


onsuccess:
    runlock.release(L.run_lock())


onerror:
    runlock.release(L.run_lock())
