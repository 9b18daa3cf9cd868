# The chosen setting retrained on the final seeds, and the sgd reference run whose checkpoints
# the noise study measures at. Both write their files even when every setting diverged
# (best.json "all_diverged"), so a diverged cell never stops the DAG.


rule train:
    input:
        data=L.data("{dataset}"),
        hparams=run_file("best.json"),
    output:
        **{Path(name).stem: run_file(name) for name in TRAIN_FILES},
    params:
        spec=TRAINING_SPEC,
        out_dir=lambda wc: L.run_dir(wc.dataset, wc.optimizer, wc.batch_size),
    conda:
        CONDA_ENV
    log:
        run_log("train"),
    priority: cell_priority
    threads: threads_for("train")
    resources:
        mem_mb=mem_for("train"),
    shell:
        python(
            "-m sngrad train --data {input.data:q} --optimizer {wildcards.optimizer:q} "
            "--batch-size {wildcards.batch_size} --spec {params.spec:q} "
            "--hparams {input.hparams:q} --out-dir {params.out_dir:q} > {log} 2>&1"
        )


# the noise study's own (common.smk's NOISE_STUDY): a profile without it trains no reference
if NOISE_STUDY:

    rule reference:
        input:
            data=L.data("{dataset}"),
            hparams=run_file(
                "best.json",
                run=profile_values.REFERENCE_RUN,
                batch_size=profile_values.reference_batch_size(config),
            ),
        output:
            directory(L.reference_dir("{dataset}")),
        params:
            spec=TRAINING_SPEC,
            batch_size=profile_values.reference_batch_size(config),
        conda:
            CONDA_ENV
        log:
            L.log("reference", "{dataset}"),
        priority: EARLY
        threads: threads_for("reference")
        resources:
            mem_mb=mem_for("reference"),
        shell:
            python(
                "-m sngrad reference --data {input.data:q} --batch-size {params.batch_size} "
                "--spec {params.spec:q} --hparams {input.hparams:q} --out-dir {output:q} "
                "> {log} 2>&1"
            )
