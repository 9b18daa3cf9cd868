# results/<profile>/report.md, rendered from the template and every result it reads; the list
# of those exact files goes to the report command (its provenance section).


rule report:
    input:
        **report_inputs(),
    output:
        L.report(),
    params:
        config=CONFIG_JSON,
        inputs=lambda wc, input: json.dumps(sorted(set(input))),
    conda:
        CONDA_ENV
    log:
        L.log("report", "report"),
    threads: 1
    resources:
        mem_mb=1000,
    shell:
        python(
            f"-m sngrad report {PROFILE_ARGS} "
            "--template {input.template:q} --out {output:q} --config {params.config:q} "
            "--inputs {params.inputs:q} > {log} 2>&1"
        )
