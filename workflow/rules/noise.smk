# The gradient-noise study at the reference run's checkpoints (sngrad.noise): batch sizes from
# noise.min_batch_size doubling up to noise.max_batch_size (capped by the training split), the
# batches drawn with noise.seed, and the factors
# of each tuned sngrad variant on sgd at its chosen alpha.


rule noise:
    input:
        data=L.data("{dataset}"),
        reference=L.reference_dir("{dataset}"),
        tuned=lambda wc: list(noise_tuned(wc.dataset).values()),
    output:
        L.noise("{dataset}"),
    params:
        tuned=lambda wc: " ".join(
            shlex.quote(f"{run}={path}") for run, path in noise_tuned(wc.dataset).items()
        ),
        batch_sizes=lambda wc: ",".join(map(str, profile_values.noise_batch_sizes(config, wc.dataset))),
        batches=config["noise"]["batches"],
        seed=config["noise"]["seed"],
    conda:
        CONDA_ENV
    log:
        L.log("noise", "{dataset}"),
    priority: EARLY
    threads: threads_for("noise")
    resources:
        mem_mb=mem_for("noise"),
    shell:
        python(
            "-m sngrad noise --data {input.data:q} --reference-dir {input.reference:q} "
            "--tuned {params.tuned} --batch-sizes {params.batch_sizes} "
            "--batches {params.batches} --seed {params.seed} --out {output:q} > {log} 2>&1"
        )
