# Data: synthetic stand-ins (data_source: synthetic) and the MLflow store. Real data sets are
# not produced by the workflow; `check_real_data` (onstart, common.smk) verifies their roots
# before any job of a real run starts.


rule synthetic_dataset:
    output:
        f"{RESULTS}/synthetic/{{name}}/{COMPLETE_MARKER}",
    log:
        f"{RESULTS}/logs/synthetic/{{name}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthetic/{{name}}.tsv"
    wildcard_constraints:
        name=DATASET_PATTERN,
    conda:
        "../../envs/mhsa.yaml"
    params:
        root=synthetic_root,
        layout=synthetic_layout,
        seed=synthetic_seed,
        synthetic=synthetic_generator,
    script:
        "../scripts/synthetic_dataset.py"


# `model.pretrained: seeded` (the rehearsal preset): a seeded random ResNet state dict, written once and
# loaded by each cell through the `model.pretrained: <path>` path (no ImageNet weights offline).
rule seeded_weights:
    output:
        f"{RESULTS}/pretrained/seeded-{{backbone}}.pth",
    log:
        f"{RESULTS}/logs/seeded_weights/{{backbone}}.log",
    wildcard_constraints:
        backbone="resnet18|resnet34|resnet50",
    conda:
        "../../envs/mhsa.yaml"
    params:
        seed=0,
    script:
        "../scripts/seeded_weights.py"


# Seconds of work each: on a cluster they run on the submitting node, not as SLURM jobs.
localrules:
    mlflow_store,
    synthetic_dataset,
    seeded_weights,


rule mlflow_store:
    output:
        MLFLOW_MARKER,
    log:
        f"{RESULTS}/logs/mlflow_store.log",
    conda:
        "../../envs/mhsa.yaml"
    params:
        uri=MLFLOW_URI,
        experiments=STUDY.experiments(),
        preset=PRESET,
        results=results_dir_from_output,
        # descriptions shown by MLflow's UI (mhsa.study.tracking); the tables step completes the study run
        note=experiment_note(STUDY),
        parent_tags=creation_tags(STUDY),
    script:
        "../scripts/mlflow_store.py"
