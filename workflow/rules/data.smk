# One dataset's splits, prepared once and shared by every run on it.


rule data:
    output:
        npz="results/data/{dataset}.npz",
        meta="results/data/{dataset}.json",
    params:
        seed=config["data"]["seed"],
        val_fraction=config["data"]["val_fraction"],
    conda:
        CONDA_ENV
    log:
        "logs/data/{dataset}.log",
    threads: threads_for("data")
    resources:
        mem_mb=mem_for("data"),
    shell:
        python(
            "-m sngrad data prepare {wildcards.dataset} --out {output.npz} "
            "--seed {params.seed} --val-fraction {params.val_fraction} > {log} 2>&1"
        )
