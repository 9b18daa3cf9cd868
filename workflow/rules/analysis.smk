# The analysis notebooks (analysis/<name>.py, jupytext percent format), executed by papermill
# with the parameters of notebook_parameters(); each writes the tables of
# sngrad.layout.NOTEBOOK_TABLES and the figures of the manifest (sngrad.layout.FIGURES), and its
# executed copy is kept under results/<profile>/notebooks/.


rule summary:
    """One dataset's aggregate: needs only that dataset's runs (a single-dataset target)."""
    input:
        source=notebook_source("summary"),
        runs=lambda wc: run_files(wc.dataset, "best.json", "metrics.csv", "budget.csv"),
    output:
        *notebook_tables(L, "summary"),
        notebook=L.notebook("summary_{dataset}"),
    params:
        parameters=lambda wc: notebook_parameters([wc.dataset]),
    conda:
        CONDA_ENV
    log:
        L.log("notebooks", "summary_{dataset}"),
    threads: threads_for("analysis")
    resources:
        mem_mb=mem_for("analysis"),
    shell:
        NOTEBOOK


rule performance:
    """The comparison of optimizers across datasets (learning curves, sensitivity, equal compute)."""
    input:
        source=notebook_source("performance"),
        runs=[f for d in DATASETS for f in run_files(d, *PERFORMANCE_FILES)],
        data=[L.data_meta(d) for d in DATASETS],
    output:
        *notebook_tables(L, "performance"),
        *L.figures("performance"),
        notebook=L.notebook("performance"),
    params:
        parameters=notebook_parameters(DATASETS),
    conda:
        CONDA_ENV
    log:
        L.log("notebooks", "performance"),
    threads: threads_for("analysis")
    resources:
        mem_mb=mem_for("analysis"),
    shell:
        NOTEBOOK


# the noise study's own (common.smk's NOISE_STUDY): a profile without it has no noise tables
if NOISE_STUDY:

    rule gradient_noise:
        """The noise study's tables and figures, every dataset."""
        input:
            source=notebook_source("gradient_noise"),
            noise=[L.noise(d) for d in DATASETS],
        output:
            *notebook_tables(L, "gradient_noise"),
            *L.figures("gradient_noise"),
            notebook=L.notebook("gradient_noise"),
        params:
            parameters=notebook_parameters(DATASETS),
        conda:
            CONDA_ENV
        log:
            L.log("notebooks", "gradient_noise"),
        threads: threads_for("analysis")
        resources:
            mem_mb=mem_for("analysis"),
        shell:
            NOTEBOOK


rule batch_sizes:
    """The trend over batch sizes: paired differences and chosen learning rates, every dataset."""
    input:
        source=notebook_source("batch_sizes"),
        summaries=[f for d in DATASETS for f in notebook_tables(L, "summary", d)],
        best=[f for d in DATASETS for f in run_files(d, "best.json")],
    output:
        *notebook_tables(L, "batch_sizes"),
        *L.figures("batch_sizes"),
        notebook=L.notebook("batch_sizes"),
    params:
        parameters=notebook_parameters(DATASETS),
    conda:
        CONDA_ENV
    log:
        L.log("notebooks", "batch_sizes"),
    threads: threads_for("analysis")
    resources:
        mem_mb=mem_for("analysis"),
    shell:
        NOTEBOOK


rule theory:
    """Theory checks and figures (SGD as an SDE, stationary densities); no training data."""
    input:
        source=notebook_source("theory"),
    output:
        *notebook_tables(L, "theory"),
        *L.figures("theory"),
        notebook=L.notebook("theory"),
    params:
        parameters=notebook_parameters(
            DATASETS,
            out_dir=str(Path(L.theory("x")).parent),
            figures_dir=L.figures_dir(),
            scale=config["theory"]["scale"],
            seed=config["theory"]["seed"],
        ),
    conda:
        CONDA_ENV
    log:
        L.log("notebooks", "theory"),
    priority: EARLY
    threads: threads_for("theory")
    resources:
        mem_mb=mem_for("theory"),
    shell:
        NOTEBOOK
