"""The ablation DAG: plan time (parse + DAG) and a full run's wall time and jobs/minute.

    python benchmarks/bench_dag.py plan                 # `snakemake -n tables` for the paper preset (target < 5 s)
    python benchmarks/bench_dag.py run --preset demo    # the demo grid end to end on this machine
                                                        #   (target >= 8 training jobs/minute on 2 cores)

`run` works on a temporary copy of the workflow (`--keep DIR` keeps it), so the repository's results/ is untouched;
`--from-log` instead reads the per-job benchmark files of a finished run under results/.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def snakemake(wd: Path, *args: str) -> subprocess.CompletedProcess:
    # As the README's main command runs: the default store (sqlite under results/), whatever this shell exports.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=wd, env=env, capture_output=True,
                          text=True)


def copy(wd: Path) -> Path:
    wd.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(REPO / name, wd / name)
    for name in ("workflow", "envs"):
        shutil.copytree(REPO / name, wd / name, ignore=shutil.ignore_patterns("__pycache__"))
    return wd


def plan(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wd = copy(Path(tmp))
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            proc = snakemake(wd, "-n", "tables", "--config", f"preset={args.preset}")
            times.append(time.perf_counter() - t0)
            assert proc.returncode == 0, proc.stderr[-2000:]
        jobs = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith("train_cell")]
        print(f"snakemake -n tables --config preset={args.preset}: {jobs[0][1]} training jobs; "
              f"plan time median {statistics.median(times):.2f} s (min {min(times):.2f}, {args.repeats} runs; "
              f"target < 5 s: {'met' if statistics.median(times) < 5 else 'NOT met'})")


def summarize(results: Path, wall: float | None) -> None:
    rows = []
    for f in sorted((results / "benchmarks" / "train").glob("*.tsv")):
        with open(f) as fh:
            rows.append(float(next(csv.DictReader(fh, delimiter="\t"))["s"]))
    if not rows:
        sys.exit(f"no per-job benchmark files under {results}/benchmarks/train")
    print(f"training jobs: {len(rows)}; per job median {statistics.median(rows):.1f} s, "
          f"max {max(rows):.1f} s, sum {sum(rows) / 60:.1f} job-minutes")
    phases(results, statistics.median(rows))
    if wall:
        print(f"wall time {wall / 60:.1f} min -> {len(rows) / (wall / 60):.1f} training jobs/minute "
              f"(target >= 8 jobs/min: {'met' if len(rows) / (wall / 60) >= 8 else 'NOT met'})")


def _stamp(line: str) -> datetime.datetime:
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def phases(results: Path, job_median: float) -> None:
    """Where a median job's time goes, from the per-cell logs: the cell's first line is written after
    start-up and imports; epoch lines mark training; the eval line marks evaluation."""
    spans: dict[str, list[float]] = {"set-up (store, data, model)": [], "training, all epochs": [],
                                     "evaluation": [], "cell in all": []}
    rates = []
    for f in (results / "logs" / "train").glob("*.log"):
        lines = [ln for ln in f.read_text().splitlines() if re.match(r"\d{4}-\d\d-\d\d ", ln)]
        epochs = [_stamp(ln) for ln in lines if " epoch " in ln]
        evals = [_stamp(ln) for ln in lines if " eval " in ln]
        if len(epochs) < 2 or not evals:
            continue  # resumed or failed: not a whole cell
        start, end = _stamp(lines[0]), _stamp(lines[-1])
        per_epoch = (epochs[-1] - epochs[0]).total_seconds() / (len(epochs) - 1)
        spans["set-up (store, data, model)"].append((epochs[0] - start).total_seconds() - per_epoch)
        spans["training, all epochs"].append(per_epoch * len(epochs))
        spans["evaluation"].append((evals[-1] - epochs[-1]).total_seconds())
        spans["cell in all"].append((end - start).total_seconds())
        rates += [float(x) for x in re.findall(r"images_per_s (\S+)", "\n".join(lines))[1:]]
    if not spans["cell in all"]:
        return
    med = {k: statistics.median(v) for k, v in spans.items()}
    print("median job, from the cell logs:")
    print(f"  process start-up, imports, Snakemake adapter, job log: {job_median - med['cell in all']:5.1f} s")
    for k in ("set-up (store, data, model)", "training, all epochs", "evaluation"):
        print(f"  {k + ':':54s}{med[k]:5.1f} s")
    if rates:
        print(f"  training images/s per job (median over epochs 2+): {statistics.median(rates):.1f}")


def run(args) -> None:
    if args.from_log:
        summarize(REPO / args.results, None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        wd = copy(Path(args.keep) if args.keep else Path(tmp))
        t0 = time.perf_counter()
        proc = snakemake(wd, "tables", "--cores", str(args.cores), "--resources", f"gpu={args.cores}",
                         "--config", f"preset={args.preset}")
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        results = next(p.parent.parent for p in wd.glob("results/**/benchmarks/train"))
        print(f"preset {args.preset} on {args.cores} cores ({os.cpu_count()} CPUs here)")
        summarize(results, wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("plan")
    p.add_argument("--preset", default="paper")
    p.add_argument("--repeats", type=int, default=3)
    r = sub.add_parser("run")
    r.add_argument("--preset", default="demo")
    r.add_argument("--cores", type=int, default=2)
    r.add_argument("--from-log", action="store_true", help="summarise a finished run instead of running one")
    r.add_argument("--results", default="results", help="with --from-log: the results dir of that run")
    r.add_argument("--keep", metavar="DIR",
                   help="run in this (new, empty) directory and keep it, instead of a temporary one")
    args = ap.parse_args()
    plan(args) if args.what == "plan" else run(args)


if __name__ == "__main__":
    main()
