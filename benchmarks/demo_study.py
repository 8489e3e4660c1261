"""The demo study of docs/demo-study.md: Baseline vs MHSA-Net (K=8) on the synthetic
Occluded-DukeMTMC of the demo preset, several settings x seeds, one training cell per config.

    python benchmarks/demo_study.py configs --out /tmp/study/cfg --data /tmp/study/data  # one YAML per cell
    python -m mhsa train /tmp/study/cfg/<cell>.yaml --out /tmp/study/runs/<cell> --set threads=1 \\
        --set tracking.enabled=false                                                  # each cell
    python benchmarks/demo_study.py table --runs /tmp/study/runs                      # markdown table
    python benchmarks/demo_study.py figure --runs /tmp/study/runs --out docs/demo-study-occlusion.png

Each cell's config is the demo preset's recipe (config.yaml: ResNet-18 from scratch, last stride 1,
P=8 x K=4, Adam 1e-3, the demo's synthetic data at data seed 1004 = occluded_duke's seed in the
workflow) with one setting's changes. Cells are named ``<setting>__<method>__s<seed>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA_SEED = 1004  # occluded_duke's synthetic seed under the workflow (1000 + its index in datasets:)
SEEDS = (0, 1, 2)
# setting -> changes to the demo recipe. "coverage": the occlusion knob (share of the body hidden).
SETTINGS = {
    "demo": {},
    "e20": {"epochs": 20},
    "e20_cov0": {"epochs": 20, "coverage": 0.0},
    "e20_cov65": {"epochs": 20, "coverage": 0.65},
    "e20_128x64": {"epochs": 20, "size": (128, 64)},
    "ids128_e5": {"epochs": 5, "num_ids": 128},  # 4x the identities, the e20 number of iterations
    "ids128_e5_cov0": {"epochs": 5, "num_ids": 128, "coverage": 0.0},
    "ids128_e5_cov65": {"epochs": 5, "num_ids": 128, "coverage": 0.65},
    "e20_lambda0": {"epochs": 20, "methods": ("mhsam",)},
}
METHODS = {  # method -> (model/loss knobs, test mode of its table row)
    "baseline": ({"mhsam": False, "lambda1": 0.0, "lambda2": 0.0, "lambda3": 0.0}, "global"),
    "mhsa_net": ({"mhsam": True, "lambda1": 1.0e-4, "lambda2": 1.0, "lambda3": 1.0e-3}, "concat"),
    "mhsam": ({"mhsam": True, "lambda1": 0.0, "lambda2": 0.0, "lambda3": 0.0}, "concat"),
}
LARGE_TEST_IDS = 128
ALL_MODES = ["global", "local", "concat"] + [f"head{i}" for i in range(1, 9)]


def cell_config(setting: str, method: str, seed: int, data_dir: Path) -> dict:
    s = SETTINGS[setting]
    knobs, _ = METHODS[method]
    h, w = s.get("size", (64, 32))
    epochs = s.get("epochs", 5)
    num_ids = s.get("num_ids", 32)
    synthetic = {"seed": DATA_SEED, "num_ids": num_ids, "images_per_id": 6, "height": h, "width": w}
    if "coverage" in s:
        synthetic["occlusion"] = {"coverage": [s["coverage"], s["coverage"]]}
    cov = "default" if "coverage" not in s else f"cov{round(s['coverage'] * 100)}"
    root = str(data_dir / (f"occluded_duke_{h}x{w}_{cov}" + ("" if num_ids == 32 else f"_ids{num_ids}")))
    return {
        "name": f"{setting}__{method}__s{seed}", "seed": seed, "threads": 1, "checkpoint_every": epochs,
        "model": {"backbone": "resnet18", "pretrained": False, "last_stride": 1, "num_heads": 8,
                  "mhsam": knobs["mhsam"]},
        "loss": {k: knobs[k] for k in ("lambda1", "lambda2", "lambda3")} | {"gamma": 1.0e-3},
        "data": {"dataset": "occluded_duke", "root": root, "synthetic": synthetic, "height": h, "width": w,
                 "p": 8, "k": 4, "workers": 0},
        # the demo's schedule (warm-up 1, decay at 4 of 5 epochs) stretched to the epoch budget
        "optim": {"lr": 1.0e-3, "weight_decay": 5.0e-4, "warmup_epochs": max(1, epochs // 10),
                  "milestones": [int(epochs * 0.8)], "epochs": epochs},
        "eval": {"targets": {"occluded_duke": {"root": root,
                                               "modes": ALL_MODES if knobs["mhsam"] else ["global"]}}},
        "tracking": {"enabled": False},
    }


def write_configs(out: Path, data_dir: Path, settings: list[str]) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for setting in settings:
        for method in SETTINGS[setting].get("methods", ("baseline", "mhsa_net")):
            for seed in SEEDS:
                cfg = cell_config(setting, method, seed, data_dir)
                (out / f"{cfg['name']}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
                names.append(cfg["name"])
    return names


def reeval(run_dir: Path, data_dir: Path, num_ids: int) -> dict:
    """Evaluate a finished cell's last checkpoint on a larger test set of the same world (same data
    seed, size and occlusion; ``num_ids`` test identities): less test-sampling noise, no retraining.
    Writes ``<run>/reeval_<num_ids>.json`` ({mode: metrics}) and returns it."""
    import torch

    from mhsa.config import load_run_config
    from mhsa.model import build_model
    from mhsa.run.checkpoint import load_checkpoint
    from mhsa.run.train import ensure_data, evaluate_cell

    cfg = load_run_config(run_dir / "config.yaml")
    torch.set_num_threads(1)
    syn = dict(cfg.data.synthetic, num_ids=num_ids)
    cov = syn.get("occlusion", {}).get("coverage")
    root = data_dir / (f"occluded_duke_{cfg.data.height}x{cfg.data.width}_"
                       f"{'default' if cov is None else f'cov{round(cov[0] * 100)}'}_ids{num_ids}")
    ds = ensure_data("occluded_duke", str(root), syn)
    m = cfg.model
    model = build_model(cfg.data.synthetic["num_ids"], num_heads=m.num_heads, backbone=m.backbone,
                        pretrained=False, mhsam=m.mhsam, fusion=m.fusion, residual=m.residual,
                        last_stride=m.last_stride, attention_layers=m.attention_layers, feat_dim=m.feat_dim)
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"])
    modes = cfg.eval.targets["occluded_duke"]["modes"]
    res = evaluate_cell(cfg, model, {"occluded_duke": (ds, modes)}, torch.device("cpu"))["occluded_duke"]
    (run_dir / f"reeval_{num_ids}.json").write_text(json.dumps(res, indent=1))
    return res


def load_runs(runs: Path) -> dict:
    """(setting, method) -> list of metrics dicts (one per finished seed)."""
    out: dict = {}
    for path in sorted(runs.glob("*__*__s*/metrics.json")):
        setting, method, _ = path.parent.name.split("__")
        metrics = json.loads(path.read_text())
        large = path.parent / f"reeval_{LARGE_TEST_IDS}.json"
        if large.exists():  # the same checkpoint on the 4x larger test set (``reeval``)
            metrics["eval_large"] = {"occluded_duke": json.loads(large.read_text())}
        if "eval" in metrics:
            out.setdefault((setting, method), []).append(metrics)
    return out


def rank1(metrics: dict, mode: str, key: str = "eval") -> float:
    return metrics[key]["occluded_duke"][mode]["rank1"]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(values: list[float]) -> str:
    if not values:
        return "n/a"
    m, s = mean_std(values)
    return f"{m:.1f} +- {s:.1f}"


def _gap(a: list[float], b: list[float]) -> str:
    """MHSA-Net minus Baseline with Welch's t-test over the seeds (the tables' test with several seeds,
    mhsa.study.welch; docs/tables.md, "Marks"): t, its degrees of freedom and the two-sided p-value,
    "n.s." where p >= 0.05 (within seed noise)."""
    from mhsa.study.welch import welch

    w = welch(a, b)
    if w is None:
        return "n/a"
    return f"{w.diff:+.1f} (t {w.t:+.1f}, df {w.df:.1f}, p {w.p:.3f}{'' if w.significant else ', n.s.'})"


def table(runs: Path) -> str:
    """Rank-1 mean +- std over seeds, Baseline vs MHSA-Net (K=8; concat = the table's MHSA-Net row,
    local = MHSA-Net*), on the setting's own test set and on the 4x larger one (``reeval``)."""
    data = load_runs(runs)
    head = ["setting", "n", "test ids", "Baseline", "MHSA-Net", "MHSA-Net*", "MHSA-Net - Baseline",
            "MHSA-Net* - Baseline", "train s/cell"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for setting in SETTINGS:
        base, net = data.get((setting, "baseline"), []), data.get((setting, "mhsa_net"), [])
        if not base and not net:
            continue
        sec = statistics.fmean(m["train"]["seconds"] for m in base + net)
        own_ids = (base + net)[0]["config"]["data"]["synthetic"]["num_ids"]
        for key in ("eval", "eval_large") if own_ids != LARGE_TEST_IDS else ("eval",):
            b = [rank1(m, "global", key) for m in base if key in m]
            c = [rank1(m, "concat", key) for m in net if key in m]
            loc = [rank1(m, "local", key) for m in net if key in m]
            ids = own_ids if key == "eval" else LARGE_TEST_IDS
            lines.append(f"| {setting} | {len(b)}/{len(c)} | {ids} | {_cell(b)} | {_cell(c)} | {_cell(loc)} "
                         f"| {_gap(c, b)} | {_gap(loc, b)} | {sec:.0f} |")
    return "\n".join(lines)


METHOD_MODES = (("Baseline", "baseline", "global"), ("MHSA-Net (K=8)", "mhsa_net", "concat"),
                ("MHSA-Net* (K=8)", "mhsa_net", "local"))
# occlusion sweeps: family -> {setting: share of the body hidden}; the default draws 0.2-0.5 (mean 0.35)
SWEEPS = {
    "32 ids, 20 epochs": {"e20_cov0": 0.0, "e20": 0.35, "e20_cov65": 0.65},
    "128 ids, 5 epochs": {"ids128_e5_cov0": 0.0, "ids128_e5": 0.35, "ids128_e5_cov65": 0.65},
}


def diagnostics_table(runs: Path) -> str:
    """Per MHSA-Net family (mean over seeds): heads in use, attention entropy, head overlap, the final
    epoch's loss shares, and p*/q*/concat/best-head Rank-1 (``mhsa.evaluation.diagnostics``)."""
    from mhsa.study.diagnostic_plots import diagnostics_of_run

    head = ["setting", "heads used (mass > 1/(4K))", "entropy / log n", "map overlap", "triplet_residual share",
            "ihtl share", "CE terms + triplet_local share", "q* R1", "p* R1", "concat R1", "best head R1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for setting in SETTINGS:
        dirs = sorted(p.parent for p in runs.glob(f"{setting}__mhsa_net__s*/metrics.json")
                      if "eval" in json.loads(p.read_text()))
        if not dirs:
            continue
        ds = [diagnostics_of_run(d) for d in dirs]
        k = len(ds[0]["attention"]["mass"])
        used = [sum(m > 1 / (4 * k) for m in d["attention"]["mass"]) for d in ds]
        share = {t: statistics.fmean(d["losses"]["share"][t][-1] for d in ds) for t in ds[0]["losses"]["share"]}
        br = [d["branches"]["branches"] for d in ds]
        r1 = {m: statistics.fmean(b[m]["rank1"] for b in br) for m in ("global", "local", "concat")}
        best = statistics.fmean(b["heads"]["best_rank1"] for b in br)
        small = sum(share.get(t, 0.0) for t in ("ce_global", "ce_local", "triplet_local", "ce_residual"))
        lines.append(
            f"| {setting} | {'/'.join(map(str, used))} of {k} "
            f"| {statistics.fmean(d['attention']['entropy_norm_mean'] for d in ds):.2f} "
            f"| {statistics.fmean(d['attention']['overlap_mean'] for d in ds):.2f} "
            f"| {share.get('triplet_residual', 0):.2f} | {share.get('ihtl', 0):.2f} | {small:.3f} "
            f"| {r1['global']:.1f} | {r1['local']:.1f} | {r1['concat']:.1f} | {best:.1f} |")
    return "\n".join(lines)


def figure(runs: Path, out: Path) -> None:
    from mhsa.study.diagnostic_plots import rank1_vs_occlusion

    data = load_runs(runs)
    panels = {}
    for family, levels in SWEEPS.items():
        ids = LARGE_TEST_IDS if family.startswith(str(LARGE_TEST_IDS)) else 32
        keys = [("eval", f"{ids} test ids")]
        if ids != LARGE_TEST_IDS:
            keys.append(("eval_large", f"same models on {LARGE_TEST_IDS} test ids"))
        for key, test in keys:
            panels[f"{family}: {test}"] = {
                label: {cov: [rank1(m, mode, key) for m in data.get((s, method), []) if key in m]
                        for s, cov in levels.items()}
                for label, method, mode in METHOD_MODES}
    rank1_vs_occlusion(panels, out, title="Synthetic Occluded-DukeMTMC, 64x32 input, ResNet-18 from scratch, "
                       "seeds 0-2 (0.35 = the default 0.2-0.5 draw)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("configs")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--data", type=Path, required=True)
    c.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    t = sub.add_parser("table")
    t.add_argument("--runs", type=Path, required=True)
    dg = sub.add_parser("diagnostics")
    dg.add_argument("--runs", type=Path, required=True)
    r = sub.add_parser("reeval")
    r.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--num-ids", type=int, default=LARGE_TEST_IDS)
    f = sub.add_parser("figure")
    f.add_argument("--runs", type=Path, required=True)
    f.add_argument("--out", type=Path, default=ROOT / "docs" / "demo-study-occlusion.png")
    args = ap.parse_args(argv)
    if args.cmd == "configs":
        print("\n".join(write_configs(args.out, args.data.resolve(), args.settings)))
    elif args.cmd == "reeval":
        for run in args.runs:
            if not (run / f"reeval_{args.num_ids}.json").exists():
                res = reeval(run, args.data.resolve(), args.num_ids)
                print(run.name, " ".join(f"{k} {v['rank1']:.1f}" for k, v in res.items()), flush=True)
    elif args.cmd == "table":
        print(table(args.runs))
    elif args.cmd == "diagnostics":
        print(diagnostics_table(args.runs))
    else:
        figure(args.runs, args.out)
        print(args.out)


if __name__ == "__main__":
    main()
