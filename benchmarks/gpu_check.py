"""The GPU check: run as is on a machine with a GPU (about 5-8 minutes on one H100); prints the rows of
benchmarks/README.md "Paper scale" (GPU) with what it measured.

    python benchmarks/gpu_check.py                 # on the GPU machine, from the repository root
    python benchmarks/gpu_check.py --no-compile    # if inductor cannot compile there (or to save ~2 min)
    python benchmarks/gpu_check.py --cpu-dry       # the same code paths, tiny, on the CPU (in the test suite)

Stages (each prints its rows; a failing stage says so and the others still run, exit 1 at the end):

1. **device**: the GPU, its compute capability, and the bf16 decision of `mhsa.run.device.check_amp` (the
   cells' own check: refused on GPUs without bf16 units, e.g. the paper's 2080 Ti).
2. **smoke**: one paper-recipe cell (ResNet-50, last stride 1, 384x128, P x K = 32 x 4, bf16,
   channels_last, `device: cuda`, seeded random weights through `model.pretrained: <path>`, 3 steps)
   through the workflow (`snakemake tables` on a copy whose `paper` preset is that one cell on synthetic
   stand-ins), forked from the warm worker (`workflow.warm_worker: true`): CUDA must not be initialised
   before the fork, and the job must train on the GPU (metrics.json `train.device`).
3. **train**: images/s and own peak memory of Baseline and MHSA-Net K=8 at 384x128, P x K = 128, bf16,
   channels_last, cache on and off, compile on and off (`bench_train_step.measure`, the loop's own step).
4. **eval**: MHSA-Net K=8 features of 19,281 images (3,368 query + 15,913 gallery, Market-1501's test split)
   on the GPU in fp32, then distances, `evaluate` and `re_ranking` at that size (`evaluate_modes`).

`--cpu-dry` runs stages 2-4 with `device: cpu`, a ResNet-18 at 64x32, P x K = 4 x 4, 200 evaluation
images: it proves the script, the workflow copy and the measurement code run, not any figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_train_step  # noqa: E402

from mhsa.errors import DeviceError  # noqa: E402
from mhsa.evaluation import evaluate_modes, extract_features  # noqa: E402
from mhsa.model import build_model  # noqa: E402
from mhsa.run.device import check_amp, configure_cuda  # noqa: E402

ROWS: list[str] = []


def row(measure: str, figure: str) -> None:
    ROWS.append(f"| {measure} | {figure} |")
    print(ROWS[-1], flush=True)


# ------------------------------------------------------------------------------------------- stages
def stage_device(args) -> None:
    if args.cpu_dry:
        row("device", f"cpu (dry run), torch {torch.__version__}")
        return
    dev = torch.device("cuda")
    major, minor = torch.cuda.get_device_capability(dev)
    props = torch.cuda.get_device_properties(dev)
    row("device", f"{torch.cuda.get_device_name(dev)}, compute capability {major}.{minor}, "
                  f"{props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")
    try:
        check_amp("bf16", dev)
        row("amp: bf16", "supported (compute capability >= 8.0)")
    except DeviceError as err:
        row("amp: bf16", f"refused: {err}")
        args.amp = "fp16"


def smoke_config(args) -> dict:
    """config.yaml of the workflow copy: its `paper` preset is one paper-recipe cell on synthetic stand-ins."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    dry = args.cpu_dry
    recipe = {"device": "cpu" if dry else "cuda", "amp": args.amp, "model": {"pretrained": "seeded"},
              "optim": {"max_steps": 3}, "threads": 2 if dry else 8}
    if dry:
        recipe.update(model={"pretrained": "seeded", "backbone": "resnet18"},
                      data={"height": 64, "width": 32, "p": 4, "k": 4, "workers": 0})
    config["presets"]["paper"] = {
        "data_source": "synthetic", "results_dir": "results/gpu_check",
        "synthetic": {"num_ids": 8 if dry else 48, "images_per_id": 6, "height": 128, "width": 64},
        "tables": ["IV"], "figures": [], "rows": ["MHSA-Net (K=8)"], "recipe": recipe,
    }
    config["workflow"] = {"warm_worker": True, "train_threads": 2 if dry else 8}
    return config


def stage_smoke(args) -> None:
    work = Path(args.tmp) / "workflow"
    work.mkdir()
    for name in ("Snakefile",):
        shutil.copy2(REPO / name, work / name)
    for name in ("workflow", "envs"):
        shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    (work / "config.yaml").write_text(yaml.safe_dump(smoke_config(args), sort_keys=False))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(":")}
    env.pop("MLFLOW_TRACKING_URI", None)
    cores = "2" if args.cpu_dry else str(min(os.cpu_count() or 8, 16))
    cmd = [sys.executable, "-m", "snakemake", "tables", "--cores", cores, "--resources", "gpu=1",
           "--config", "preset=paper"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=args.smoke_timeout)
    seconds = time.perf_counter() - t0
    results = work / "results" / "gpu_check"
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        logs = sorted((results / "logs").rglob("*.log")) if (results / "logs").is_dir() else []
        tail = "".join(p.read_text()[-2000:] for p in logs)
        raise RuntimeError(f"snakemake failed (exit {proc.returncode}):\n{text[-3000:]}\n{tail}")
    (metrics_file,) = list(results.glob("runs/*/metrics.json"))
    metrics = json.loads(metrics_file.read_text())
    device = metrics["train"]["device"]
    worker = (results / "logs" / "warm_worker.log").read_text()
    forked = "warm worker: on" in text and "not taken" not in worker
    want = "cpu" if args.cpu_dry else "cuda"
    if not device.startswith(want) or not forked:
        raise RuntimeError(f"the cell trained on {device!r} (wanted {want}); forked from the warm worker: {forked}\n"
                           f"{worker[-2000:]}")
    row("smoke: one paper-recipe cell through the workflow, forked from the warm worker",
        f"ok on {device}: {metrics['train']['steps']} steps, {metrics['train']['images_per_s']:.1f} images/s, "
        f"peak {metrics['train']['peak_mem_mb']:.0f} MiB, concat R1 on partial_reid "
        f"{metrics['eval']['partial_reid']['concat']['rank1']:.1f}, {seconds:.0f} s end to end")


def stage_train(args) -> None:
    argv = ["--device", "cpu" if args.cpu_dry else "cuda", "--steps", "2" if args.cpu_dry else "4",
            "--rounds", "1" if args.cpu_dry else "2", "--amp", "off" if args.cpu_dry else args.amp]
    if args.cpu_dry:
        argv += ["--height", "64", "--width", "32", "--p", "4", "--backbone", "resnet18", "--workers", "1"]
    if args.no_compile or args.cpu_dry:
        argv.append("--no-compile")
    bench = bench_train_step.parse_args(argv)
    bench.tmp = str(Path(args.tmp) / "train")
    Path(bench.tmp).mkdir()
    configs = bench_train_step.measure(bench)
    batch = bench.p * bench.k
    for name, c in configs.items():
        median = float(np.median(c["times"]))
        row(f"train {' '.join(name.split())}, {bench.backbone} {bench.height}x{bench.width}, batch {batch}, "
            f"{bench.amp}", f"{batch / median:.0f} images/s ({median * 1000:.0f} ms/step), own peak "
            f"{c['peak']:.0f} MiB, warm-up {c['warm_s']:.0f} s")


def stage_eval(args) -> None:
    dry = args.cpu_dry
    device = torch.device("cpu" if dry else "cuda")
    nq, ng = (40, 160) if dry else (3368, 15913)
    h, w = (64, 32) if dry else (384, 128)
    torch.manual_seed(0)
    model = build_model(751, num_heads=8, backbone="resnet18" if dry else "resnet50", pretrained=False)
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    rng = np.random.default_rng(0)

    def batches(n: int, pids: np.ndarray, cams: np.ndarray):
        gen = torch.Generator(device=device).manual_seed(n)
        for s in range(0, n, 128):
            b = min(128, n - s)
            img = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, device=device, generator=gen)
            yield img.float().div_(255).sub_(0.45).div_(0.225), pids[s:s + b], cams[s:s + b], np.arange(s, s + b)

    q_pids, g_pids = rng.integers(0, 750, nq), rng.integers(0, 751, ng)
    q_cams, g_cams = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    modes = ("global", "local", "concat", *(f"head{i}" for i in range(1, 9)))
    q = extract_features(model, batches(nq, q_pids, q_cams), device, modes, channels_last=True)
    g = extract_features(model, batches(ng, g_pids, g_cams), device, modes, channels_last=True)
    t1 = time.perf_counter()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    row(f"eval: features of {nq + ng:,} images, MHSA-Net K=8 {h}x{w}, fp32, every branch",
        f"{t1 - t0:.1f} s ({(nq + ng) / (t1 - t0):.0f} images/s), peak GPU {peak:.0f} MiB")
    res = evaluate_modes(q["features"], g["features"], q["pids"], g["pids"], q["camids"], g["camids"],
                         ["concat"])
    t2 = time.perf_counter()
    evaluate_modes(q["features"], g["features"], q["pids"], g["pids"], q["camids"], g["camids"],
                   ["concat_rerank"])
    t3 = time.perf_counter()
    row(f"eval: distances + evaluate at {nq:,} x {ng:,} (concat)", f"{t2 - t1:.1f} s (R1 {res['concat']['rank1']:.1f})")
    row(f"eval: re_ranking at {nq + ng:,} images (k1=20, k2=6, lambda=0.3, CPU)", f"{t3 - t2:.1f} s")


STAGES = {"device": stage_device, "smoke": stage_smoke, "train": stage_train, "eval": stage_eval}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-dry", action="store_true", help="the same code paths, tiny, on the CPU")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    ap.add_argument("--smoke-timeout", type=float, default=360.0)
    args = ap.parse_args(argv)
    args.amp = "bf16"
    if not args.cpu_dry:
        if not torch.cuda.is_available():
            print("error: no CUDA device visible; run with --cpu-dry to check the script on a CPU", file=sys.stderr)
            return 2
        configure_cuda(args.amp)
    failed = []
    start = time.perf_counter()
    print("| measure | figure |\n|---|---|", flush=True)
    with tempfile.TemporaryDirectory(prefix="mhsa-gpu-check-") as tmp:
        args.tmp = tmp
        for name in args.stages:
            t0 = time.perf_counter()
            try:
                STAGES[name](args)
            except Exception as err:  # noqa: BLE001  (a failing stage is reported; the others still run)
                failed.append(name)
                row(f"{name}", f"FAILED: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
                traceback.print_exc()
            print(f"(stage {name}: {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    print(f"gpu_check: {time.perf_counter() - start:.0f} s in all; "
          f"{'failed stages: ' + ', '.join(failed) if failed else 'every stage ran'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
