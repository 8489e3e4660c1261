"""The Snakemake workflow as a DAG: presets, rerun granularity, the real-data check.

Every test runs Snakemake on a temporary COPY of Snakefile, workflow/, envs/ and config.yaml,
so nothing is written into the repository's results/. No training runs here: dry-runs, plus
`--touch` on fake outputs to record the job metadata a finished run would leave.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mhsa.study.build import build_study, cell_overrides, table_number

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
FORMATS = ("csv", "md", "html", "tex")
# A fixed MLflow URI: the default (sqlite:///<abs results dir>/mlflow.db) differs between the
# copies of a finished run that the tests make. Nothing is logged: no job really runs.
FIXED_URI = "sqlite:///unused-by-these-tests.db"


def _config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


@pytest.fixture
def wf(tmp_path, copy_workflow) -> Path:
    """A runnable copy of the workflow in an empty directory."""
    return copy_workflow(tmp_path)


@pytest.fixture(scope="module")
def _finished_paper_run(tmp_path_factory, copy_workflow) -> Path:
    wd = copy_workflow(tmp_path_factory.mktemp("finished"))
    fake_finished_run(wd, "paper")
    return wd


@pytest.fixture
def finished(_finished_paper_run, tmp_path) -> Path:
    """A copy (mtimes and .snakemake metadata included) of a finished paper-preset run."""
    return Path(shutil.copytree(_finished_paper_run, tmp_path / "wd", symlinks=True))


def snakemake(wd: Path, *args: str, check: bool = True, uri: str | None = FIXED_URI) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    proc = subprocess.run([*SNAKEMAKE, *args], cwd=wd, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def job_counts(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """The 'Job stats' table of a dry-run ({} when nothing is to be done)."""
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    block = text.split("Job stats:", 1)[1].splitlines()[3:]
    counts = {}
    for line in block:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def scheduled_cells(proc: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"wildcards: cell=(\S+)", proc.stdout + proc.stderr))


def fake_finished_run(wd: Path, preset: str) -> None:
    """Outputs of a finished run (empty files), then `--touch -F` records their metadata."""
    study = build_study(yaml.safe_load((wd / "config.yaml").read_text()), preset)
    results = wd / study.config["results_dir"]
    if study.config["data_source"] == "real":  # the onstart check only needs the roots to exist
        for name in study.config["datasets"]:
            (wd / study.config["datasets"][name]["root"]).mkdir(parents=True, exist_ok=True)
    files = [results / "mlflow.ready", results / "study.json"]
    for cid in study.cells:
        files += [results / "runs" / cid / name for name in ("metrics.json", "attention.npz", "attention.png")]
    files += [results / "tables" / f"table_{table_number(t)}.{ext}" for t in study.table_ids() for ext in FORMATS]
    files += [results / "tables" / "summary.md", results / "tables" / "summary.html"]
    for name in study.config["datasets"] if study.config["data_source"] == "synthetic" else []:
        files.append(results / "synthetic" / name / ".complete")
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("")
    (results / "figures").mkdir(parents=True, exist_ok=True)
    snakemake(wd, "--cores", "2", "--touch", "--forceall", "tables", "--config", f"preset={preset}")
    assert job_counts(snakemake(wd, "-n", "tables", "--config", f"preset={preset}")) == {}


def edit_config(wd: Path, old: str, new: str) -> None:
    path = wd / "config.yaml"
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize("preset", ["paper", "demo", "ci", "rehearsal"])
def test_dry_run_lists_every_job_of_the_preset(wf, preset):
    study = build_study(_config(), preset)
    t0 = time.perf_counter()
    proc = snakemake(wf, "-n", "tables", "--config", f"preset={preset}")
    seconds = time.perf_counter() - t0
    print(f"\nsnakemake -n tables --config preset={preset}: {seconds:.2f} s")
    counts = job_counts(proc)
    synthetic = study.config["data_source"] == "synthetic"
    needed = {c.dataset for c in study.cells.values()} | {t for c in study.cells.values() for t in c.targets}
    seeded = {cell_overrides(study, c)["model"].get("pretrained") for c in study.cells.values()} - {None}
    assert counts == {
        "train_cell": len(study.cells),
        "mlflow_store": 1,
        "study": 1,
        "tables": 1,
        **({"synthetic_dataset": len(needed)} if synthetic else {}),
        **({"seeded_weights": len(seeded)} if seeded else {}),  # one file per backbone, written once
    }
    if preset == "rehearsal":  # one cell per training set; the weights of ResNet-50 and ResNet-18
        assert len(study.cells) == 6 and len(seeded) == 2
    if preset == "paper":
        assert len(study.cells) >= 128  # the paper's tables alone need 128 distinct models
        assert seconds < 30, f"dry-run of the paper preset took {seconds:.1f} s"
    cells = scheduled_cells(proc)
    assert cells == set(study.cells)
    for row in study.rows:  # every number of every table/figure comes from a scheduled cell
        assert row.cells and set(row.cells) <= cells, row


def test_editing_one_row_reruns_exactly_that_cell(finished):
    wf = finished
    paper = ("--config", "preset=paper")

    # Another MLflow store (here: the default one of a moved checkout) re-initialises the
    # store only; the store marker is `ancient` for train_cell, so nothing is retrained.
    assert job_counts(snakemake(wf, "-n", "tables", *paper, uri=None)) == {"mlflow_store": 1}

    # A new lambda1 for one row of Table IX: one new cell; nothing else is retrained.
    edit_config(wf, 'lambda1=1e-2", variant: mhsam_fdrt, lambda1: 1.0e-2}',
                'lambda1=1e-2", variant: mhsam_fdrt, lambda1: 3.0e-2}')
    for triggers in ([], ["--rerun-triggers", "params"]):
        proc = snakemake(wf, "-n", "tables", *paper, *triggers)
        assert job_counts(proc) == {"train_cell": 1, "study": 1, "tables": 1}, triggers
        assert scheduled_cells(proc) == {"cuhk03_detected__mhsam-K8-fdrt0.03__s0"}


def test_params_trigger_granularity(finished):
    wf = finished
    paper = ("--config", "preset=paper")

    # A title or a figure's layout is not a training param: the study file and the tables only.
    edit_config(wf, "title: FDRT weight lambda1 on CUHK03-Detected", "title: FDRT weight (lambda1), CUHK03-D")
    assert job_counts(snakemake(wf, "-n", "tables", *paper, "--rerun-triggers", "params")) == {"study": 1, "tables": 1}
    edit_config(wf, "plot: {kind: attention_grid, max_images: 6}", "plot: {kind: attention_grid, max_images: 4}")
    assert job_counts(snakemake(wf, "-n", "tables", *paper, "--rerun-triggers", "params")) == {"study": 1, "tables": 1}

    # A new test mode for a cell is a param change of that cell only (re-evaluation). Every branch
    # (global, local, concat, head<i>) is always evaluated, so the new mode is a re-ranked one.
    edit_config(wf, 'lambda1=1e-2", variant: mhsam_fdrt, lambda1: 1.0e-2}',
                'lambda1=1e-2", variant: mhsam_fdrt, lambda1: 1.0e-2, mode: local_rerank}')
    proc = snakemake(wf, "-n", "tables", *paper, "--rerun-triggers", "params")
    assert job_counts(proc) == {"train_cell": 1, "study": 1, "tables": 1}
    assert scheduled_cells(proc) == {"cuhk03_detected__mhsam-K8-fdrt0.01__s0"}


def test_the_tables_job_gets_the_study_as_a_file_not_as_a_param(finished):
    """The study reaches the tables step as a rule output (study.json, rerun when its digest changes),
    so the tables job's params, which the report repeats beside each of its files and Snakemake keeps
    per output, are a few paths, not the whole study."""
    import json

    metadata = [json.loads(p.read_text()) for p in (finished / ".snakemake" / "metadata").iterdir() if p.is_file()]
    tables = [m for m in metadata if m.get("rule") == "tables"]
    assert tables, "no metadata of the tables job"
    assert all(len(json.dumps(m.get("params", ""))) < 2000 for m in tables)
    assert [m for m in metadata if m.get("rule") == "study"], "no metadata of the study job"


def test_real_run_with_missing_data_stops_before_any_job(wf):
    market = wf / "data" / "Market-1501-v15.09.15"
    for split in ("bounding_box_train", "query", "bounding_box_test"):  # there, but empty
        (market / split).mkdir(parents=True)
    proc = snakemake(wf, "--cores", "1", "tables", "--config", "preset=paper", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    n = len(_config()["datasets"])
    assert f"{n} of them have problems" in text  # every set at once, the empty one too
    listed = re.findall(r"^\s+- (\w+)(?: at |: data set not found under )(\S+)", text, re.M)
    assert {name for name, _ in listed} == set(_config()["datasets"])
    assert all(Path(path.rstrip(":")).is_absolute() for _, path in listed)
    assert "market1501 at " in text and "train 0 ids / 0 images (expected 751 / 12936)" in text
    assert "published at https://github.com/lightas/Occluded-DukeMTMC-Dataset" in text
    assert "No job was started" in text
    assert not (wf / "results").exists() or not any((wf / "results").rglob("*.json"))
    assert "rule train_cell:" not in text and "rule mlflow_store:" not in text


def test_schema_rejects_invalid_config(wf):
    proc = snakemake(wf, "-n", "tables", "--config", "preset=nonsense", check=False)
    assert proc.returncode != 0
    assert "nonsense" in proc.stdout + proc.stderr

    edit_config(wf, "- {row: K=1, variant: mhsam, K: 1}", "- {row: K=1, variant: mhsam, K: 0}")
    proc = snakemake(wf, "-n", "tables", check=False)
    assert proc.returncode != 0
    assert "minimum" in proc.stdout + proc.stderr

    # a misspelled knob is rejected by the schema, not silently dropped (docs/reliability.md case 2)
    edit_config(wf, "{row: K=1, variant: mhsam, K: 0}", "{row: K=1, variant: mhsam, K: 1}")
    edit_config(wf, "variant: mhsa_net, fusion: concat, mode: local", "variant: mhsa_net, fusoin: concat, mode: local")
    proc = snakemake(wf, "-n", "tables", "--config", "preset=ci", check=False)
    assert proc.returncode != 0
    assert "fusoin" in proc.stdout + proc.stderr


def test_dry_run_of_the_premise_preset_pretrains_once_and_generates_each_occlusion_level(tmp_path, copy_workflow):
    """One backbone for every cell (an input of each train_cell job), one synthetic set per occlusion level."""
    wf = copy_workflow(tmp_path)
    proc = snakemake(wf, "-n", "-p", "tables", "--config", "preset=premise")
    counts = job_counts(proc)
    # Tables II and XIV, and Fig. 7's MHSAB (its Baseline and MHSA-Net are Table II's cells), 3 seeds each
    assert {k: v for k, v in counts.items() if k != "study"} == {
        "train_cell": 30, "synthetic_dataset": 4, "pretrain_backbone": 1, "mlflow_store": 1, "tables": 1}, counts
