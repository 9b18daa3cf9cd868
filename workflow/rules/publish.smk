# The published copy: results/default/report.md and its figures into paper/ (default profile
# only). paper/ is neither an input nor an output of any rule, so Snakemake can never take the
# committed copy for an up-to-date result; the rule's output is a marker under results/.
# The report and its figures are published as one set (sngrad.publish: built beside paper/
# and switched in one rename), so a kill, a full disk or an I/O error leaves the previous
# complete set, and rerunning the same command publishes the new one.


if PUBLISHES:

    rule publish:
        input:
            report=L.report(),
            figures=[f for name in NOTEBOOKS_RUN for f in L.figures(name)],
        output:
            L.published_marker(),
        conda:
            CONDA_ENV
        log:
            L.log("publish", "publish"),
        threads: 1
        shell:
            python(f"-m sngrad publish {PROFILE_ARGS} > {{log}} 2>&1")


FINAL_TARGET = L.published_marker() if PUBLISHES else L.report()
