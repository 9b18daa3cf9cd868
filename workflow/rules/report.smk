# paper/report.md, rendered from the templates and everything under results/.


rule report:
    input:
        **report_inputs(),
    output:
        report="paper/report.md",
    params:
        config=json.dumps(config, sort_keys=True),
    conda:
        CONDA_ENV
    log:
        "logs/report.log",
    threads: 1
    resources:
        mem_mb=1000,
    shell:
        python(
            "-m sngrad report --results results --template {input.template} "
            "--out {output.report} --figures paper/figures --config {params.config:q} "
            "> {log} 2>&1",
            limit_threads=False,
        )
