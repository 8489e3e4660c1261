# One training job per deduplicated cell of the study. Only what defines the trained model is
# a param (params changes rerun the cell); GPU-slot settings come from config `workflow:`.


rule train_cell:
    input:
        unpack(train_inputs),
    output:
        metrics=f"{RESULTS}/runs/{{cell}}/metrics.json",
        attention=f"{RESULTS}/runs/{{cell}}/attention.npz",
    log:
        f"{RESULTS}/logs/train/{{cell}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{cell}}.tsv"
    wildcard_constraints:
        cell=CELL_PATTERN,
    conda:
        "../../envs/mhsa.yaml"
    threads: WF.get("train_threads", 1)
    # mhsa.run.gpu_slots gives each job its own GPU; its locks belong to the machine and the user, not
    # to this results directory, so two studies on one machine never share a GPU by accident.
    resources:
        gpu=1,
    params:
        overrides=train_overrides,
        recipe=CFG["recipe"],
        ckpt_dir=checkpoint_dir,
    script:
        "../scripts/train_cell.py"


# A preset with a `pretrain:` section: one job trains the backbone every cell starts from
# (mhsa.run.pretrain; its output is an input of every train_cell job, so they rerun when it changes).
rule pretrain_backbone:
    output:
        f"{RESULTS}/pretrain/backbone.pt",
    log:
        f"{RESULTS}/logs/pretrain.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain.tsv"
    conda:
        "../../envs/mhsa.yaml"
    # up to 8 cores: Snakemake caps a job's threads at --cores (--set-threads pretrain_backbone=N
    # changes it; `workflow.cores` here would fail `snakemake --report`, which takes no --cores)
    threads: 8
    resources:
        gpu=1,
    params:
        spec=CFG.get("pretrain", {}),
        data=f"{RESULTS}/synthetic/pretrain-market1501",
        cache_dir=build_run_config(CFG["recipe"]).data.cache_dir,
    script:
        "../scripts/pretrain.py"
