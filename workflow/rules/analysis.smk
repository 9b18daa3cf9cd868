# Analysis notebooks (jupytext percent-format analysis/*.py), converted to .ipynb and executed
# by papermill; the executed notebook is kept next to the tables it wrote.


rule notebook:
    input:
        "analysis/{notebook}.py",
    output:
        "results/notebooks/{notebook}.ipynb",
    conda:
        CONDA_ENV
    log:
        "logs/notebook/{notebook}.log",
    threads: 1
    resources:
        mem_mb=500,
    shell:
        python(
            "-m jupytext --to ipynb --output {output} {input} > {log} 2>&1",
            limit_threads=False,
        )


rule summary:
    """Per-dataset aggregate: depends only on that dataset's runs (single-dataset target)."""
    input:
        notebook="results/notebooks/summary.ipynb",
        best=lambda wc: run_files(wc.dataset, "best.json"),
        metrics=lambda wc: run_files(wc.dataset, "metrics.csv"),
    output:
        summary="results/{dataset}/summary.csv",
        paired="results/{dataset}/paired.csv",
        notebook="results/{dataset}/summary.ipynb",
    params:
        parameters=lambda wc: notebook_params(
            dataset=wc.dataset,
            results_dir="results",
            optimizers=config["optimizers"],
            batch_sizes=config["batch_sizes"],
        ),
    conda:
        CONDA_ENV
    log:
        "logs/analysis/summary_{dataset}.log",
    threads: threads_for("analysis")
    resources:
        mem_mb=mem_for("analysis"),
    shell:
        PAPERMILL


rule performance:
    """Learning curves, accuracy against batch size, learning-rate sensitivity."""
    input:
        notebook="results/notebooks/performance.ipynb",
        summaries=all_datasets("results/{dataset}/summary.csv"),
        metrics=[f for d in config["datasets"] for f in run_files(d, "metrics.csv")],
        tuning=[f for d in config["datasets"] for f in run_files(d, "tuning.csv")],
    output:
        notebook="results/analysis/performance.ipynb",
        table="results/analysis/lr_sensitivity.csv",
        curves="paper/figures/learning_curves.png",
        batch="paper/figures/accuracy_vs_batch_size.png",
        lr="paper/figures/lr_sensitivity.png",
    params:
        parameters=notebook_params(
            datasets=config["datasets"],
            optimizers=config["optimizers"],
            batch_sizes=config["batch_sizes"],
            results_dir="results",
            out_dir="results/analysis",
            figures_dir="paper/figures",
        ),
    conda:
        CONDA_ENV
    log:
        "logs/analysis/performance.log",
    threads: threads_for("analysis")
    resources:
        mem_mb=mem_for("analysis"),
    shell:
        PAPERMILL


rule gradient_noise:
    """SNR per layer over training, noise scale against batch size, sngrad scale factors."""
    input:
        notebook="results/notebooks/gradient_noise.ipynb",
        diagnostics=[f for d in config["datasets"] for f in run_files(d, "diagnostics.csv")],
    output:
        notebook="results/analysis/gradient_noise.ipynb",
        table="results/analysis/gradient_noise.csv",
        snr="paper/figures/gradient_snr.png",
        noise="paper/figures/noise_scale.png",
        factors="paper/figures/sngrad_factors.png",
    params:
        parameters=notebook_params(
            datasets=config["datasets"],
            optimizers=config["optimizers"],
            batch_sizes=config["batch_sizes"],
            results_dir="results",
            out_dir="results/analysis",
            figures_dir="paper/figures",
        ),
    conda:
        CONDA_ENV
    log:
        "logs/analysis/gradient_noise.log",
    threads: threads_for("analysis")
    resources:
        mem_mb=mem_for("analysis"),
    shell:
        PAPERMILL


rule alpha_sensitivity:
    """Validation and test accuracy of each sngrad variant against alpha."""
    input:
        notebook="results/notebooks/alpha_sensitivity.ipynb",
        sweeps=[f for d in config["datasets"] for f in alpha_files(d)],
    output:
        notebook="results/analysis/alpha_sensitivity.ipynb",
        table="results/analysis/alpha_sensitivity.csv",
        figure="paper/figures/alpha_sensitivity.png",
    params:
        parameters=notebook_params(
            datasets=config["datasets"],
            optimizers=config["alpha_sweep"]["optimizers"],
            batch_size=config["alpha_sweep"]["batch_size"],
            results_dir="results",
            out_dir="results/analysis",
            figures_dir="paper/figures",
        ),
    conda:
        CONDA_ENV
    log:
        "logs/analysis/alpha_sensitivity.log",
    threads: threads_for("analysis")
    resources:
        mem_mb=mem_for("analysis"),
    shell:
        PAPERMILL
