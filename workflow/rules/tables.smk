# The paper's tables and figures from the cells' metrics.json, and each cell's attention
# overlay (drawn from its attention.npz and logged to the cell's MLflow run with its `feeds` tag).


rule tables:
    input:
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
        # The rerun trigger, and what the script reads: the resolved config, the cells and the
        # table/figure rows. Editing a title, a row's name or test mode, or a `plot:` entry
        # reruns this rule only; what retrains a cell is in train_cell's own params.
        study=study_data(),
        # Directories from the declared files (local copies under remote storage); derived
        # params are no rerun trigger.
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
