"""Where every result of a profile lives, and which notebook makes which figure.

One profile, one tree: everything ``snakemake --configfile config/P.yaml`` computes goes under
``results/P/``, its rendered report and figures included. ``paper/report.md`` and
``paper/figures/`` are a published copy of the *default* profile's report, written by the last
step of a default run; no rule has them as an output or an input, so Snakemake can never take
the committed copy for an up-to-date result.

The rules, the notebooks and :mod:`sngrad.report` all build paths here, so a name is spelled
once. Methods return ``str`` so that Snakemake wildcards pass through unchanged::

    Layout("default").run_file("tuning.csv", "{dataset}", "{optimizer}", "{batch_size}")
    # 'results/default/{dataset}/{optimizer}/bs{batch_size}/tuning.csv'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

RESULTS = "results"
PUBLISHED_REPORT = "paper/report.md"
PUBLISHED_FIGURES = "paper/figures"
TEMPLATES = "paper/templates"
REPORT_TEMPLATE = f"{TEMPLATES}/report.md.j2"
NOTEBOOK_SOURCES = "analysis"  # jupytext sources analysis/<name>.py of the executed notebooks
LOGS = "logs"
PUBLISHING_PROFILE = "default"
NOISE_SUMMARY = "noise_summary.csv"  # the gradient_noise notebook's table, under analysis/


@dataclass(frozen=True)
class Figure:
    """A figure of the report: its file stem, the notebook that draws it, what it shows."""

    name: str
    notebook: str
    caption: str


_FIGURES = (
    # analysis/performance.py: the comparison of optimizers
    Figure("learning_curves", "performance",
           "Validation accuracy and training loss per epoch, mean and band over final seeds"),
    Figure("lr_sensitivity", "performance",
           "Mean validation accuracy over tuning seeds against the learning rate"),
    Figure("alpha_sensitivity", "performance",
           "Mean validation accuracy against scale-free alpha at the best learning rate"),
    Figure("equal_compute", "performance",
           "Test accuracy against counted compute, in SGD epochs (sngrad.costs)"),
    Figure("shrink_over_training", "performance",
           "Mean factor f and share of coordinates with f < 1, per layer, over training"),
    Figure("control_variates", "performance",
           "Control variates: achieved variance reduction and median lambda over training"),
    # analysis/gradient_noise.py: the noise study at fixed parameters
    Figure("noise_vs_batch", "gradient_noise",
           "Per-example sigma and noise of the batch mean against the batch size"),
    Figure("snr_vs_batch", "gradient_noise",
           "Batch signal-to-noise ratio against the batch size, with the pure-noise reference"),
    Figure("noise_scale_over_training", "gradient_noise",
           "Gradient noise scale B_simple (unbiased) at each checkpoint"),
    Figure("shrink_vs_batch", "gradient_noise",
           "Share of coordinates each variant shrinks, against the batch size"),
    # analysis/batch_sizes.py: the study over batch sizes
    Figure("batch_size_trend", "batch_sizes",
           "Each run's paired difference in test accuracy from its base against the batch"
           " size, with Holm-level intervals"),
    Figure("lr_vs_batch_size", "batch_sizes",
           "Chosen learning rate against the batch size, beside linear and square-root"
           " scaling"),
    # analysis/theory.py: the theory checks
    Figure("theory_stationary_1d", "theory",
           "Stationary variance of SGD on a 1-D quadratic against the exact and the"
           " continuous-time prediction"),
    Figure("theory_batch_temperature", "theory",
           "Temperature against batch size, and against eta / B"),
    Figure("theory_double_well", "theory",
           "Double well: histogram of the iterates against the Gibbs density"),
    Figure("theory_two_temperatures", "theory",
           "Two temperatures, one temperature, and a coupled quadratic against the Lyapunov"
           " solutions"),
    Figure("theory_sngrad_variants", "theory",
           "Per-coordinate temperatures of SGD and sngrad I, II, III, and the fluctuation"
           " identity"),
    Figure("theory_lecture_quadratic", "theory",
           "Gradient descent below, near and above 2 / lambda_max, momentum, Adam"),
    Figure("theory_control_variate", "theory",
           "Control variates: variance against the distance from the snapshot, and the bias"
           " of an estimated coefficient"),
)

FIGURES: dict[str, Figure] = {f.name: f for f in _FIGURES}
NOTEBOOKS = tuple(dict.fromkeys(f.notebook for f in _FIGURES))


def figures_of(notebook: str) -> list[Figure]:
    """The figures one notebook draws, in manifest order."""
    return [f for f in _FIGURES if f.notebook == notebook]


@dataclass(frozen=True)
class Layout:
    """The result tree of one profile: ``<root>/<profile>/...``."""

    profile: str
    root: str = RESULTS

    @property
    def base(self) -> str:
        return f"{self.root}/{self.profile}"

    # ------------------------------------------------------------------ data
    def data(self, dataset: str) -> str:
        """Prepared splits (``.npz``); the sidecar is :meth:`data_meta`."""
        return f"{self.base}/data/{dataset}.npz"

    def data_meta(self, dataset: str) -> str:
        return f"{self.base}/data/{dataset}.json"

    # ------------------------------------------------------------------ tune and train
    def run_dir(self, dataset: str, optimizer: str, batch_size) -> str:
        return f"{self.base}/{dataset}/{optimizer}/bs{batch_size}"

    def run_file(self, name: str, dataset: str, optimizer: str, batch_size) -> str:
        return f"{self.run_dir(dataset, optimizer, batch_size)}/{name}"

    def reference_dir(self, dataset: str) -> str:
        """Parameters of the noise study's reference run at its checkpoints."""
        return f"{self.base}/{dataset}/reference"

    def summary(self, dataset: str) -> str:
        return f"{self.base}/{dataset}/summary.csv"

    def paired(self, dataset: str) -> str:
        return f"{self.base}/{dataset}/paired.csv"

    def winners(self, dataset: str) -> str:
        """Per batch size, the run with the best final validation accuracy."""
        return f"{self.base}/{dataset}/winners.csv"

    def schedules(self, dataset: str) -> str:
        """Per run with a constant-rate arm, the theory's prediction tested."""
        return f"{self.base}/{dataset}/schedules.csv"

    def batch_trend(self, dataset: str) -> str:
        """Per run with a base, the change of its paired difference over the batch sizes."""
        return f"{self.base}/{dataset}/batch_trend.csv"

    # ------------------------------------------------------------------ studies and notebooks
    def noise(self, dataset: str) -> str:
        return f"{self.base}/noise/{dataset}.csv"

    def analysis(self, name: str) -> str:
        return f"{self.base}/analysis/{name}"

    def notebook(self, name: str) -> str:
        """The executed copy of ``analysis/<name>.py``."""
        return f"{self.base}/notebooks/{name}.ipynb"

    def theory(self, name: str) -> str:
        return f"{self.base}/theory/{name}"

    def benchmark(self) -> str:
        return f"{self.base}/benchmark/step_time.csv"

    def benchmark_engine(self) -> str:
        """The training engine's own step, measured against the counted cost."""
        return f"{self.base}/benchmark/engine.csv"

    # ------------------------------------------------------------------ report
    def figures_dir(self) -> str:
        return f"{self.base}/figures"

    def figure(self, name: str) -> str:
        if name not in FIGURES:
            raise KeyError(f"unknown figure {name!r}; known: {', '.join(FIGURES)}")
        return f"{self.figures_dir()}/{name}.png"

    def figures(self, notebook: str) -> list[str]:
        return [self.figure(f.name) for f in figures_of(notebook)]

    def report(self) -> str:
        return f"{self.base}/report.md"

    def published_marker(self) -> str:
        """Written by the publish step after copying the report into paper/."""
        return f"{self.base}/published.json"

    def run_started(self) -> str:
        """When the run that builds the report began (the Snakefile's onstart handler)."""
        return f"{self.base}/run_started.json"

    def run_lock(self) -> str:
        """Process id of the snakemake run working on this profile (:mod:`sngrad.runlock`)."""
        return f"{self.base}/.run.lock"

    def log(self, stage: str, *names) -> str:
        """A job's log: ``logs/<profile>/<stage>/<name>/.../<last>.log`` (outside results/)."""
        return "/".join([LOGS, self.profile, stage, *map(str, names)]) + ".log"

    @staticmethod
    def of_log(log: str) -> tuple[Layout, str, list[str]]:
        """(layout, stage, names) of a job's :meth:`log` path."""
        parts = Path(log).parts
        if len(parts) < 4 or parts[0] != LOGS or not parts[-1].endswith(".log"):
            raise ValueError(f"{log!r} is not a job log ({LOGS}/<profile>/<stage>/.../x.log)")
        return Layout(parts[1]), parts[2], [*parts[3:-1], parts[-1].removesuffix(".log")]

    # ------------------------------------------------------------------ the ledger
    def ledger_dir(self) -> str:
        return f"{self.base}/ledger"

    def ledger(self, stage: str, *names) -> str:
        """A job's ledger entry (sngrad.ledger), named as its :meth:`log`."""
        return "/".join([self.ledger_dir(), stage, *map(str, names)]) + ".json"


def notebook_source(name: str) -> str:
    """The jupytext source of an analysis notebook."""
    return f"{NOTEBOOK_SOURCES}/{name}.py"


def published_paths(root: str | Path = ".") -> tuple[Path, Path]:
    """(report, figures folder) of the published copy under ``root``."""
    root = Path(root)
    return root / PUBLISHED_REPORT, root / PUBLISHED_FIGURES


# Tables each notebook writes, relative to the profile's base folder (besides its figures and
# its executed copy). The summary notebook runs once per dataset (``{dataset}`` filled in), so a
# single dataset's target needs nothing from the other datasets.
NOTEBOOK_TABLES: dict[str, tuple[str, ...]] = {
    "summary": ("{dataset}/summary.csv", "{dataset}/paired.csv", "{dataset}/winners.csv",
                "{dataset}/schedules.csv", "{dataset}/batch_trend.csv"),
    "performance": (
        "analysis/lr_sensitivity.csv",
        "analysis/alpha_sensitivity.csv",
        "analysis/alpha_summary.csv",
        "analysis/diverged_settings.csv",
        "analysis/tuning_axes.csv",
        "analysis/training_length.csv",
        "analysis/shrink.csv",
        "analysis/control_variates.csv",
    ),
    "gradient_noise": (f"analysis/{NOISE_SUMMARY}",),
    "batch_sizes": ("analysis/lr_scaling.csv",),
    "theory": ("theory/checks.csv", "theory/stationary_1d.csv", "theory/summary.json"),
}


def notebook_tables(layout: Layout, notebook: str, dataset: str = "{dataset}") -> list[str]:
    """The tables ``notebook`` writes under ``layout`` (paths as str)."""
    return [f"{layout.base}/{t.format(dataset=dataset)}" for t in NOTEBOOK_TABLES[notebook]]


# ----------------------------------------------------------------------------- the report's inputs
TUNE_FILES = ("tuning.csv", "best.json", "tuning_provenance.json")  # what a tune job writes
TRAIN_FILES = ("metrics.csv", "diagnostics.csv", "budget.csv", "provenance.json")  # a train job
SEED_DESIGN = "config/paper.yaml"  # the seed's design, which the report's scope section counts


def noise_enabled(config: Mapping) -> bool:
    """Whether the profile runs the noise study and its reference run (what the workflow
    plans, the cost model counts and the report says): ``noise.enabled``, true where the key
    (or, in a partial config the report renders from, the section) is left out."""
    return bool((config.get("noise") or {}).get("enabled", True))


def notebooks_run(config: Mapping) -> list[str]:
    """The figure-drawing notebooks a profile runs (the theory one, and the noise study's
    gradient_noise, only when enabled)."""
    theory = (config.get("theory") or {}).get("enabled", True)
    skipped = {"theory": not theory, "gradient_noise": not noise_enabled(config)}
    return [n for n in NOTEBOOKS if not skipped.get(n)]


def notebook_outputs(layout: Layout, notebook: str) -> list[str]:
    """What a notebook of :data:`NOTEBOOKS` writes: its tables, figures and executed copy."""
    return [*notebook_tables(layout, notebook), *layout.figures(notebook),
            layout.notebook(notebook)]


def report_inputs(layout: Layout, config: Mapping) -> dict[str, list[str]]:
    """Every file the report reads, by kind: the inputs of the workflow's report rule (and
    targets of its default rule), and what the report digests when rendered by hand. The
    benchmark is its own target (``make bench``): its tables count when they exist. A profile
    without the noise study (:func:`noise_enabled`) has no ``reference`` and
    ``noise`` entries."""
    datasets, runs = config.get("datasets", []), config.get("optimizers", [])
    sizes = config.get("batch_sizes", [])
    inputs = {
        "template": [REPORT_TEMPLATE],
        "partials": sorted(str(p) for p in Path(TEMPLATES).glob("*.md.j2")
                           if str(p) != REPORT_TEMPLATE),
        "data": [layout.data_meta(d) for d in datasets],
        "seed_design": [SEED_DESIGN],
        "runs": [layout.run_file(name, d, run, b) for d in datasets for run in runs
                 for b in sizes for name in (*TUNE_FILES, *TRAIN_FILES)],
        "reference": [layout.reference_dir(d) for d in datasets],
        "noise": [layout.noise(d) for d in datasets],
        "summaries": [f for d in datasets for f in notebook_tables(layout, "summary", d)],
        "benchmark": [f for f in (layout.benchmark(), layout.benchmark_engine())
                      if Path(f).exists()],
    }
    if not noise_enabled(config):
        del inputs["reference"], inputs["noise"]
    for name in notebooks_run(config):
        inputs[name] = notebook_outputs(layout, name)
    return inputs
