"""The sngrad study: data -> tune -> train -> analysis notebooks -> paper/report.md.

    snakemake --cores 4                                   # default profile (config/default.yaml)
    snakemake --cores 4 --configfile config/smoke.yaml    # another profile, replacing the default
    snakemake --cores 4 results/digits/summary.csv        # one dataset only
"""

from snakemake.utils import min_version

min_version("9.0")


# Snakemake merges config files; a profile named with --configfile must replace the default
# instead (a merged dict would keep the default's datasets), so the default is loaded only
# when no config file was given on the command line.
if not workflow.overwrite_configfiles:

    configfile: "config/default.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/theory.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        "paper/report.md",
