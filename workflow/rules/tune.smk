# Hyper-parameter search for one (dataset, optimizer, batch size) on the validation split.


rule tune:
    input:
        data="results/data/{dataset}.npz",
    output:
        tuning="results/{dataset}/{optimizer}/bs{batch_size}/tuning.csv",
        best="results/{dataset}/{optimizer}/bs{batch_size}/best.json",
        provenance="results/{dataset}/{optimizer}/bs{batch_size}/tuning_provenance.json",
    params:
        spec=training_spec(),
    conda:
        CONDA_ENV
    log:
        "logs/tune/{dataset}/{optimizer}/bs{batch_size}.log",
    threads: threads_for("tune")
    resources:
        mem_mb=mem_for("tune"),
    shell:
        python(
            "-m sngrad tune --data {input.data} "
            "--optimizer {wildcards.optimizer:q} --batch-size {wildcards.batch_size} "
            '--spec {params.spec:q} --out-dir "$(dirname {output.best:q})" > {log} 2>&1'
        )
