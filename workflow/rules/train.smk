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
    resources:
        gpu=1,
        # Where mhsa.run.gpu_slots keeps its per-GPU lock files: a resource (like tmpdir), not a
        # param, so that it never reruns a cell.
        gpu_locks=f"{RESULTS}/.gpu_locks",
    params:
        overrides=train_overrides,
        recipe=CFG["recipe"],
        ckpt_dir=checkpoint_dir,
    script:
        "../scripts/train_cell.py"
