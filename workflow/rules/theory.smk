# Theory checks and figures (analysis/theory.py): SGD as an SDE, stationary densities.


rule theory:
    input:
        notebook="results/notebooks/theory.ipynb",
    output:
        checks="results/theory/checks.csv",
        stationary="results/theory/stationary_1d.csv",
        summary="results/theory/summary.json",
        notebook="results/theory/theory.ipynb",
        figures=theory_outputs()[4:],
    params:
        parameters=notebook_params(
            out_dir="results/theory",
            figures_dir="paper/figures",
            scale=config["theory"]["scale"],
            seed=config["theory"]["seed"],
        ),
    conda:
        CONDA_ENV
    log:
        "logs/theory/theory.log",
    threads: threads_for("theory")
    resources:
        mem_mb=mem_for("theory"),
    shell:
        PAPERMILL
