# Shared state of the workflow: the Study (config.yaml -> deduplicated cells and table rows) is
# built once at parse time; rules call the plain functions below (no lambdas in rules).

import json
import os
import re
from hashlib import sha1
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

# `report(` may not start a line in .smk files: import it under another name
from snakemake.io import report as report_flag

from mhsa.config import build_run_config, weights_digest
from mhsa.run.cpu_kernels import pin_env
from mhsa.data.synthetic import COMPLETE_MARKER, dataset_seed
from mhsa.io import results_dir_problem
from mhsa.study.build import (
    StudyError,
    build_study,
    cell_data,
    cell_overrides,
    data_sets,
    dataset_root,
    pretrained_path,
    synthetic_params,
    table_number,
)
from mhsa.study.tables import TABLE_FORMATS
from mhsa.study.tracking import creation_tags, experiment_note
from mhsa.run.tracking import default_uri


def results_dir_given():
    """`--config results_dir=DIR` on the command line, else None. Snakemake merges it into `config`
    like config.yaml's own default, so it is read where Snakemake keeps the command line's values
    apart: an explicit results_dir wins over a preset's own (docs/workflow.md, "Presets").
    """
    given = workflow.config_settings.config or {}
    return str(given["results_dir"]) if "results_dir" in given else None


try:
    # `--config preset=paper` lands in config["preset"] and wins over config.yaml.
    STUDY = build_study(config, config.get("preset"), results_dir_given())
except StudyError as err:
    raise WorkflowError(str(err)) from None

CFG = STUDY.config  # the preset-resolved config
PRESET = CFG["preset"]
RESULTS = str(CFG.get("results_dir", "results")).rstrip("/")
# A file where the results directory should be breaks even a dry-run's DAG (a Snakemake traceback):
# one line instead. Whether it can be written is checked by onstart, for real runs only.
if results_dir_problem(RESULTS, write=False):
    raise WorkflowError(results_dir_problem(RESULTS, write=False))
WF = CFG.get("workflow") or {}
SYNTHETIC = CFG["data_source"] == "synthetic"
# data_key -> (layout, occlusion knob): the data sets the cells read (a synthetic preset generates
# one folder per key: the occlusion knob of a cell gives its data sets their own, `mhsa.study.build.data_key`)
DATA = data_sets(STUDY)
CELLS = list(STUDY.cells)
TABLES = STUDY.table_ids()
FIGURES = STUDY.figure_ids()
REPORT_DIR = Path(str(workflow.current_basedir)).parent / "report"

# One MLflow store for every job: exported here, so local jobs inherit it and cluster jobs
# (which re-parse this file) compute the same value. Not a train_cell param on purpose: the
# absolute path would make a moved checkout retrain every cell.
# MLFLOW_TRACKING_URI is optional (a tracking server), hence no `envvars:` directive, which
# would make it mandatory. default_uri honours it (mhsa.run.tracking imports mlflow only when used).
# (`snakemake --lint` asks for `envvars:` wherever a literal name indexes the environment; this
# variable is optional and only written here, hence the constant.)
MLFLOW_ENV = "MLFLOW_TRACKING_URI"
MLFLOW_URI_GIVEN = os.environ.get(MLFLOW_ENV)
MLFLOW_URI = default_uri(RESULTS)
os.environ[MLFLOW_ENV] = MLFLOW_URI
MLFLOW_MARKER = f"{RESULTS}/mlflow.ready"
# The study as a file for the tables step (docs/workflow.md, "The study file"): its plain data
# (mhsa.study.build.Study.to_data), rewritten only when the study changes.
STUDY_FILE = f"{RESULTS}/study.json"

# The instruction set of the CPU kernels (`cpu_kernels`, mhsa.run.cpu_kernels): exported here, before
# any job imports torch, so local jobs, the warm worker and the tables step inherit it, and cluster
# jobs (which re-parse this file) export the same. This process computes nothing with torch.
os.environ.update(pin_env(CFG["recipe"].get("cpu_kernels", "native")))


def check_results_dir():
    """onstart (real runs only): the results directory can be written, else one line naming it. Not at
    parse time: a dry-run or `--report` over finished results on a read-only disk is fine.
    """
    problem = results_dir_problem(RESULTS)
    if problem:
        raise WorkflowError(f"{problem}. No job was started.")


def check_cluster_tracking():
    """onstart: jobs on many nodes must not share an sqlite/file store over NFS. The executor is
    known only once the workflow starts (not at parse time), hence a hook; it runs before any job.
    """
    if workflow.local_exec:
        return
    from mhsa.run.tracking import SERVER_HINT, shared_store_problem

    problem = shared_store_problem(MLFLOW_URI_GIVEN)
    if problem:
        raise WorkflowError(
            f"{problem}: jobs on a cluster need an MLflow tracking server. To fix, "
            f"{SERVER_HINT}. No job was submitted."
        )


WARM_WORKER = []  # the Popen of this run's warm worker, if one was started


def warm_worker_decision():
    """(on, why): `workflow.warm_worker` true/false, or auto (the default): on for local runs of the
    synthetic presets, whose cells take seconds to minutes, so the ~7 s of imports it saves per job is
    10-50 % of a job; off for real data, whose cells take hours (docs/workflow.md "The warm worker").
    """
    from mhsa.run.warm_worker import unusable_here

    setting = WF.get("warm_worker", "auto")
    if not workflow.local_exec:
        return False, "cluster jobs run in their own processes"
    if unusable_here():
        return False, unusable_here()
    if setting == "auto":
        if SYNTHETIC:
            return True, f"auto: preset {PRESET!r} trains short synthetic cells"
        return False, f"auto: preset {PRESET!r} trains on real data, cells of hours"
    return bool(setting), f"workflow.warm_worker: {str(setting).lower()}"


def start_warm_worker():
    """onstart: a process that imports torch and MLflow once and forks per training job
    (mhsa.run.warm_worker), where `warm_worker_decision` says so. Stopped by PID in onsuccess/onerror.
    The decision is the run's first line; a worker that cannot start says why, and jobs run alone.
    """
    from mhsa.run.warm_worker import WorkerUnavailable, start

    on, why = warm_worker_decision()
    if not on:
        logger.info(f"warm worker: off ({why}); each training job imports torch itself")
        return
    threads = int(WF.get("train_threads", 1))
    cores = workflow.cores if isinstance(workflow.cores, int) else threads
    log = f"{RESULTS}/logs/warm_worker.log"
    try:
        proc = start(
            RESULTS, Path(workflow.basedir), log, min(threads, cores), os.getpid()
        )
    except WorkerUnavailable as err:
        logger.warning(
            f"warm worker: NOT started ({err}); training jobs run in their own processes"
        )
        return
    WARM_WORKER.append(proc)
    logger.info(
        f"warm worker: on ({why}; workflow.warm_worker: false turns it off), log {log}"
    )


def stop_warm_worker():
    from mhsa.run.warm_worker import stop

    while WARM_WORKER:
        stop(WARM_WORKER.pop())


def store_marker():
    """(experiment ids, problem) from the `mlflow_store` step's marker: its ids when it was written for
    today's store (its first line is the store's URI), the reason when that store was down.
    """
    try:
        lines = Path(MLFLOW_MARKER).read_text().splitlines()
    except OSError:
        return {}, None
    if not lines or lines[0] != MLFLOW_URI:
        return {}, None
    if len(lines) > 1 and lines[1].startswith("unreachable: "):
        return {}, lines[1].removeprefix("unreachable: ")
    ids = {}
    for line in lines[1:]:
        name, _, rest = line.partition(" ")
        fields = dict(f.split("=", 1) for f in rest.split() if "=" in f)
        if "experiment" in fields:
            ids[name] = fields["experiment"]
    return ids, None


def where_to_look():
    """onsuccess: the run's closing lines: the tables and figures folders, the report command and the
    URL of the study's runs table in MLflow (mhsa.study.tracking.closing_lines). Not after --touch.
    """
    if workflow.touch:
        return
    from mhsa.run.tracking import experiment_ids
    from mhsa.study.tracking import closing_lines

    experiment = STUDY.experiments()[0]
    ids, problem = store_marker()
    # a marker of an older version (no ids): ask the store
    if experiment not in ids and not problem:
        ids = experiment_ids(MLFLOW_URI, [experiment])
    given = workflow.config_settings.config or {}
    args = " ".join(
        [f"--config preset={PRESET}"]
        + ([f"results_dir={given['results_dir']}"] if "results_dir" in given else [])
    )
    lines = closing_lines(
        STUDY,
        RESULTS,
        MLFLOW_URI,
        ids.get(experiment),
        from_env=bool(MLFLOW_URI_GIVEN),
        store_problem=problem,
        report_args=args,
    )
    logger.info("\n".join(lines))


def _alternatives(names):
    return "|".join(re.escape(n) for n in names)


CELL_PATTERN = _alternatives(CELLS)
DATASET_PATTERN = _alternatives(DATA)


# ---------------------------------------------------------------------------------- paths
def run_dir(cell):
    return f"{RESULTS}/runs/{cell}"


def metrics_file(cell):
    return f"{run_dir(cell)}/metrics.json"


def data_marker(key):
    """Snakemake-visible product of a synthetic data set (the generator writes it last)."""
    return f"{dataset_root(CFG, *DATA[key])}/{COMPLETE_MARKER}"


def all_metrics():
    return [metrics_file(c) for c in CELLS]


def all_attention():
    return [f"{run_dir(c)}/attention.npz" for c in CELLS]


def all_overlays():
    """Each cell's attention overlay, drawn by the tables rule (same order as all_attention())."""
    return [f"{run_dir(c)}/attention.png" for c in CELLS]


# ------------------------------------------------------------------------- cells and data
def cell_datasets(cell_id):
    """The keys of DATA of the cell's training set first, then of the test sets it is evaluated on."""
    return list(cell_data(STUDY, STUDY.cells[cell_id]))


def needed_datasets(cell_ids=None):
    names = []
    for cid in CELLS if cell_ids is None else cell_ids:
        names += [n for n in cell_datasets(cid) if n not in names]
    return names


def synthetic_seed(wildcards):
    """`mhsa.data.synthetic.dataset_seed`: the same images as `python -m mhsa train` draws."""
    return dataset_seed(DATA[wildcards.name][0])


def synthetic_root(wildcards):
    return dataset_root(CFG, *DATA[wildcards.name])


def synthetic_layout(wildcards):
    return DATA[wildcards.name][0]


def synthetic_generator(wildcards):
    """The preset's generator parameters, with the occlusion knob of the cells that read this set."""
    return synthetic_params(CFG, DATA[wildcards.name][1])


# ------------------------------------------------------------------------- train_cell I/O
def train_inputs(wildcards):
    """Data markers of the cell's train and test sets (synthetic presets) + the MLflow store.

    The store marker is `ancient`: re-initialising the store never retrains a cell.
    """
    inputs = {"mlflow": ancient(MLFLOW_MARKER)}
    if SYNTHETIC:
        inputs["data"] = [data_marker(n) for n in cell_datasets(wildcards.cell)]
    # `model.pretrained: seeded`: cell_overrides names the file rule seeded_weights writes
    pretrained = train_overrides(wildcards)["model"].get("pretrained")
    if isinstance(pretrained, str) and pretrained.startswith(
        f"{RESULTS}/pretrained/seeded-"
    ):
        inputs["pretrained"] = pretrained
    # a `pretrain:` section: the backbone every cell starts from (rule pretrain_backbone)
    if "pretrain" in CFG:
        inputs["pretrained"] = pretrained_path(CFG)
    return inputs


def train_overrides(wildcards):
    """The cell's own part of the run config (`mhsa.study.build.cell_overrides`).

    The `feeds` tag (which table rows use the cell) is left out of the params so that adding
    a row that reuses a cell does not retrain it; train_cell.py adds it back as an MLflow tag.
    """
    over = cell_overrides(STUDY, STUDY.cells[wildcards.cell])
    over.get("tracking", {}).get("tags", {}).pop("feeds", None)
    return over


def run_digest(wildcards):
    """Short hash of what defines the trained weights (`mhsa.config.weights_digest`: model, loss,
    optimiser, data size/sampling/augmentation, seed, precision) plus, for synthetic presets, the
    generator settings and seed of the training set. Runtime settings (workers, threads, devices,
    checkpoint cadence), evaluation, tracking and data roots are not in it: changing them reuses
    the checkpoint (a new test mode resumes from the final epoch and only re-evaluates).
    """
    cfg = build_run_config(CFG["recipe"], train_overrides(wildcards))
    extra = ""
    if SYNTHETIC:
        train_set = STUDY.cells[wildcards.cell].dataset
        occlusion = STUDY.cells[wildcards.cell].knobs.get("occlusion")
        generator = synthetic_params(CFG, occlusion)
        extra = json.dumps([generator, dataset_seed(train_set)], sort_keys=True)
    if (
        "pretrain" in CFG
    ):  # another pretrained start is another model: a new checkpoint directory
        extra += json.dumps(CFG["pretrain"], sort_keys=True)
    return sha1((weights_digest(cfg) + extra).encode()).hexdigest()[:10]


def checkpoint_dir(wildcards):
    """results/checkpoints/<cell>/<digest>/: not an output (a killed job keeps it and the rerun
    resumes), and keyed by the run config so a changed recipe/preset never resumes a stale model.
    """
    return f"{RESULTS}/checkpoints/{wildcards.cell}/{run_digest(wildcards)}"


# ----------------------------------------------------------------------------- study file
def write_study_file(path, log):
    """STUDY's plain data (`Study.to_data`) as JSON, atomically: workflow/scripts/tables.py rebuilds the
    study from it (`Study.from_data`). The `study` rule's param is the digest of the same data.
    """
    from mhsa.io import atomic_write_json, atomic_write_text

    atomic_write_json(path, STUDY.to_data())
    atomic_write_text(
        log,
        f"study {STUDY.digest()}: {len(CELLS)} cells, tables {', '.join(TABLES)}, "
        f"figures {', '.join(FIGURES)} -> {path}\n",
    )


# ---------------------------------------------------------------------------- tables rule
def results_dir_from_output(wildcards, output):
    """The results directory, as the folder of the store marker (MLFLOW_MARKER)."""
    return str(Path(output[0]).parent)


def runs_dir_from_input(wildcards, input):
    """<results>/runs, from the (storage-local) paths of the cells' metrics.json."""
    return (
        str(Path(input.metrics[0]).parents[1]) if input.metrics else f"{RESULTS}/runs"
    )


def tables_dir_from_output(wildcards, output):
    """<results>/tables: every table file and summary.md are written there."""
    return str(Path(output[0]).parent)


def table_caption(table):
    specific = REPORT_DIR / f"table_{table}.rst"
    return (
        f"../report/table_{table}.rst" if specific.exists() else "../report/table.rst"
    )


def table_outputs():
    """Every table file and the summary, flagged for the report (docs/workflow.md, "The report").

    The report previews HTML and images only (anything else is a download button), so each table is one
    entry of `Tables`, its `.html`, ordered as in the paper by the `no.` label (the report sorts entries
    by their first label as text: "02" before "11", where "II" would follow "IX"); its csv, md and tex
    are entries of `Downloads`; `summary.html` (every table on one page) is `Summary`.
    """
    out = []
    for t in TABLES:
        n = table_number(t)
        labels = {
            "no.": f"{n:02d}",
            "table": t,
            "title": CFG["tables"][t].get("title", ""),
        }
        for ext in TABLE_FORMATS:
            html = ext == "html"
            out.append(
                report_flag(
                    f"{RESULTS}/tables/table_{n}.{ext}",
                    caption=table_caption(t) if html else "../report/downloads.rst",
                    category="Tables" if html else "Downloads",
                    labels=labels if html else {**labels, "format": ext},
                )
            )
    out.append(
        report_flag(
            f"{RESULTS}/tables/summary.html",
            caption="../report/summary.rst",
            category="Summary",
        )
    )
    out.append(
        report_flag(
            f"{RESULTS}/tables/summary.md",
            caption="../report/downloads.rst",
            category="Downloads",
            labels={"no.": "99", "table": "all", "title": "summary", "format": "md"},
        )
    )
    return out


# ------------------------------------------------------------------- real data set check
def pending_cells():
    """Cells whose train_cell job is about to run.

    `workflow.dag` is Snakemake's internal API: where a Snakemake version does not offer it (no
    `dag` / `needrun_jobs`), check the data of every cell instead, which is stricter, never laxer.
    Any other error is a real bug and propagates."""
    dag = getattr(workflow, "dag", None)
    if dag is None or not hasattr(dag, "needrun_jobs"):
        return CELLS
    jobs = dag.needrun_jobs()
    return sorted({j.wildcards.cell for j in jobs if j.rule.name == "train_cell"})


def check_real_data():
    """onstart (real runs only, never -n): stop before any job when a needed data set has problems.
    `--touch` only marks outputs as current and trains nothing, so it needs no data."""
    if SYNTHETIC or workflow.touch:
        return
    # parse + statistics of every set, all problems at once
    from mhsa.data.check import check_datasets

    needed = needed_datasets(pending_cells())
    problems = check_datasets(
        {DATA[k][0]: os.path.abspath(dataset_root(CFG, *DATA[k])) for k in needed}
    )
    if not problems:
        return
    lines = [
        f"preset {PRESET!r} uses real data sets; {len(problems)} of them have problems:"
    ]
    lines += [f"  - {p}" for p in problems]
    if PRESET == "rehearsal":
        lines.append(
            "The rehearsal's stand-ins are generated once with: python -m mhsa.data.synthetic "
            "--published --root data/rehearsal --layout all --jobs 2 (docs/data.md)."
        )
    lines.append(
        "Put each data set at its `datasets.<name>.root` in config.yaml (or override it with "
        "--config), or run a synthetic preset (--config preset=demo). No job was started."
    )
    raise WorkflowError("\n".join(lines))
