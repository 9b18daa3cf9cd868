# One dataset's splits, prepared once per profile and shared by every run on it.


rule data:
    output:
        npz=L.data("{dataset}"),
        meta=L.data_meta("{dataset}"),
    params:
        seed=config["data"]["seed"],
        val_fraction=config["data"]["val_fraction"],
        # null: every training example (the command's default)
        train_size=(
            ""
            if config["data"]["train_size"] is None
            else f"--train-size {config['data']['train_size']}"
        ),
    conda:
        CONDA_ENV
    log:
        L.log("data", "{dataset}"),
    priority: EARLY
    threads: threads_for("data")
    resources:
        mem_mb=mem_for("data"),
    shell:
        python(
            "-m sngrad data prepare {wildcards.dataset} --out {output.npz:q} "
            "--seed {params.seed} --val-fraction {params.val_fraction} {params.train_size} "
            "> {log} 2>&1"
        )
