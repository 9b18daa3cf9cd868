# The tuning protocol for one (dataset, run, batch size) on the validation split
# (sngrad.train.protocol); a killed job resumes from its checkpoint in the run folder.


rule tune:
    input:
        data=L.data("{dataset}"),
    output:
        **{Path(name).stem: run_file(name) for name in TUNE_FILES},
    params:
        spec=TRAINING_SPEC,
        out_dir=lambda wc: L.run_dir(wc.dataset, wc.optimizer, wc.batch_size),
    conda:
        CONDA_ENV
    log:
        run_log("tune"),
    priority: cell_priority
    threads: threads_for("tune")
    resources:
        mem_mb=mem_for("tune"),
    shell:
        python(
            "-m sngrad tune --data {input.data:q} --optimizer {wildcards.optimizer:q} "
            "--batch-size {wildcards.batch_size} --spec {params.spec:q} "
            "--out-dir {params.out_dir:q} > {log} 2>&1"
        )
