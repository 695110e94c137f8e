# circuitflow: find and explain the circuits language models use for arithmetic.
# Run: snakemake --cores all   (see README.md). Stages live in workflow/rules/, logic in src/circuitflow/.
from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless config files are given on the command line (--configfile): those replace it
# instead of being merged into it, so a real-model config does not inherit the toy models.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


# Jobs run in this image with --sdm apptainer (containers/Dockerfile; README "Software environments").
container: f"{workflow.basedir}/containers/circuitflow.sif"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/prompts.smk"
include: "workflow/rules/circuits.smk"
include: "workflow/rules/positions.smk"
include: "workflow/rules/localization.smk"
include: "workflow/rules/heuristics.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/cluster.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
        rules.report.output,
