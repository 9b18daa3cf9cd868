# Measured cost of a sngrad step against a plain SGD step (the report's overhead numbers).


rule benchmark:
    input:
        script="benchmarks/step_time.py",
    output:
        csv="results/benchmark/step_time.csv",
    params:
        sizes=comma_list(config["benchmark"]["sizes"]),
        batch_sizes=comma_list(config["benchmark"]["batch_sizes"]),
        backends=comma_list(config["benchmark"]["backends"]),
        repeats=config["benchmark"]["repeats"],
    conda:
        CONDA_ENV
    log:
        "logs/benchmark/step_time.log",
    threads: threads_for("benchmark")
    resources:
        mem_mb=mem_for("benchmark"),
    shell:
        python(
            "{input.script} --sizes {params.sizes} "
            "--batch-sizes {params.batch_sizes} --repeats {params.repeats} "
            "--backends {params.backends} --out {output.csv} > {log} 2>&1"
        )
