# The paper's tables and figures from the cells' metrics.json (+ attention.npz for the grid).


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
    params:
        rows=table_rows(),
    log:
        f"{RESULTS}/logs/tables.log",
    conda:
        "../../envs/mhsa.yaml"
    script:
        "../scripts/tables.py"
