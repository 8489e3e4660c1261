# The paper's tables and figures from the cells' metrics.json, and each cell's attention
# overlay (drawn from its attention.npz and logged to the cell's MLflow run with its `feeds` tag).


# The study as a file for the tables step: its digest is the rerun trigger, so the file is rewritten
# (and the tables rebuilt) when a title, a row, a test mode or a plot changes, and never otherwise;
# what retrains a cell is in train_cell's own params. Seconds of work: local on a cluster too.
localrules:
    study,


rule study:
    output:
        STUDY_FILE,
    log:
        f"{RESULTS}/logs/study.log",
    params:
        digest=STUDY.digest(),
    run:
        write_study_file(output[0], log[0])


rule tables:
    input:
        study=STUDY_FILE,
        metrics=all_metrics(),
        attention=all_attention(),
    output:
        *table_outputs(),
        figures=report(
            directory(f"{RESULTS}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
        overlays=all_overlays(),
    log:
        f"{RESULTS}/logs/tables.log",
    conda:
        "../../envs/mhsa.yaml"
    threads: 2  # overlays and MLflow beside the figures (the last job: the cores are free)
    params:
        # Directories from the declared files (local copies under remote storage); derived
        # params are no rerun trigger. The study comes as a file (input.study), not a param:
        # the report repeats a job's params beside each of its files.
        runs_dir=runs_dir_from_input,
        tables_dir=tables_dir_from_output,
    script:
        "../scripts/tables.py"


# Diagnostics of every cell family (the seeds of one configuration): per-branch Rank-1, attention
# entropy and head overlap, weighted loss curves. Not part of `tables` (a figure per family costs
# seconds): `snakemake diagnostics --cores 2`.
rule diagnostics:
    input:
        metrics=all_metrics(),
    output:
        directory(f"{RESULTS}/figures/diagnostics"),
    log:
        f"{RESULTS}/logs/diagnostics.log",
    conda:
        "../../envs/mhsa.yaml"
    script:
        "../scripts/diagnostics.py"
