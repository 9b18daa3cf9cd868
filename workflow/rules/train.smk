# The chosen setting retrained on fresh seeds, and the alpha sensitivity of sngrad variants.


rule train:
    input:
        data="results/data/{dataset}.npz",
        hparams="results/{dataset}/{optimizer}/bs{batch_size}/best.json",
    output:
        metrics="results/{dataset}/{optimizer}/bs{batch_size}/metrics.csv",
        diagnostics="results/{dataset}/{optimizer}/bs{batch_size}/diagnostics.csv",
        provenance="results/{dataset}/{optimizer}/bs{batch_size}/provenance.json",
    params:
        spec=training_spec(),
    conda:
        CONDA_ENV
    log:
        "logs/train/{dataset}/{optimizer}/bs{batch_size}.log",
    threads: threads_for("train")
    resources:
        mem_mb=mem_for("train"),
    shell:
        python(
            "-m sngrad train --data {input.data} "
            "--optimizer {wildcards.optimizer:q} --batch-size {wildcards.batch_size} "
            "--spec {params.spec:q} --hparams {input.hparams} "
            '--out-dir "$(dirname {output.metrics:q})" > {log} 2>&1'
        )


rule alpha_sweep:
    input:
        data="results/data/{dataset}.npz",
        hparams="results/{dataset}/{optimizer}/bs{batch_size}/best.json",
    output:
        sweep="results/{dataset}/{optimizer}/bs{batch_size}/alpha_sweep.csv",
        provenance="results/{dataset}/{optimizer}/bs{batch_size}/alpha_sweep_provenance.json",
    params:
        spec=training_spec(),
        alphas=",".join(str(a) for a in config["alpha_sweep"]["alphas"]),
    conda:
        CONDA_ENV
    log:
        "logs/alpha_sweep/{dataset}/{optimizer}/bs{batch_size}.log",
    threads: threads_for("train")
    resources:
        mem_mb=mem_for("train"),
    shell:
        python(
            "-m sngrad alpha-sweep --data {input.data} "
            "--optimizer {wildcards.optimizer:q} --batch-size {wildcards.batch_size} "
            "--spec {params.spec:q} --hparams {input.hparams} --alphas {params.alphas} "
            '--out-dir "$(dirname {output.sweep:q})" > {log} 2>&1'
        )
