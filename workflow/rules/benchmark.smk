# Measured cost of each step against the same-process SGD step (benchmarks/step_time.py). The
# job asks for every core Snakemake has, so no other job shares the machine while it times.
# No verdict reads it (equal compute is counted, sngrad.costs), so it is not part of `all`:
# `make bench` runs the target `bench`, and the report of the next run prints its tables.


# one job, one log, one ledger entry: the single-run steps, then the engine's
STEP_TIMES = (
    "{input.script:q} --networks {params.networks} --batch-sizes {params.batch_sizes} "
    "--repeats {params.repeats} --threads {params.threads} --out {output.step:q} > {log} 2>&1"
)
ENGINE_STEP_TIMES = (
    "{input.script:q} --engine --networks {params.study_network} "
    "--batch-sizes {params.batch_sizes} --repeats 3 --retries 1 --steps 62 "
    "--threads {params.threads} --out {output.engine:q} >> {log} 2>&1"
)


rule bench:
    """The step-time benchmark of the profile alone."""
    input:
        L.benchmark(),
        L.benchmark_engine(),


rule benchmark:
    input:
        script="benchmarks/step_time.py",
    output:
        step=L.benchmark(),
        engine=L.benchmark_engine(),
    params:
        networks=",".join("-".join(map(str, n)) for n in config["benchmark"]["networks"]),
        batch_sizes=",".join(map(str, config["benchmark"]["batch_sizes"])),
        repeats=config["benchmark"]["repeats"],
        # the engine's step on the study network (the first of the list), K = the final seeds
        study_network="-".join(map(str, config["benchmark"]["networks"][0])),
        threads=threads_for("benchmark"),
    conda:
        CONDA_ENV
    log:
        L.log("benchmark", "step_time"),
    threads: workflow.cores
    resources:
        mem_mb=mem_for("benchmark"),
    shell:
        python(f"{STEP_TIMES} && {PYTHON} {ENGINE_STEP_TIMES}", threads="{params.threads}")
