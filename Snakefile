# MHSA-Net reproducibility harness: config.yaml -> synthetic data / real-root checks -> one
# training job per deduplicated cell -> the paper's tables and figures (+ HTML report).
#
#   snakemake --profile workflow/profiles/local tables                      # demo preset
#   snakemake --profile workflow/profiles/local tables --config preset=paper
#   snakemake --report results/report.html                                  # after a run
#
# See docs/workflow.md.

from snakemake.utils import min_version, validate

from mhsa.study.keys import SCHEMA_PATH

min_version("9.0")


# config.yaml read with the project's strict YAML loader before Snakemake's own (docs/reliability.md)
include: "workflow/rules/config_files.smk"


configfile: "config.yaml"


# the schema of the mhsa package that runs the jobs: one file, also the source of the study's key sets
validate(config, schema=str(SCHEMA_PATH))


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/tables.smk"


report: "workflow/report/workflow.rst"


onstart:
    check_results_dir()
    check_cluster_tracking()
    check_real_data()
    start_warm_worker()


onsuccess:
    stop_warm_worker()


onerror:
    stop_warm_worker()


rule all:
    default_target: True
    input:
        rules.tables.output,
