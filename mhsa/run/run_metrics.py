"""What a cell's MLflow run holds, and under which names: the one place both `mhsa.run.train` (live)
and `python -m mhsa sync-mlflow` (replayed from metrics.json) take them from (docs/workflow.md, "MLflow").

MLflow's run page groups a run's charts into sections by the part of a metric name before its last
`/`, and orders the sections by code point (capitals before lower case):

    Train/...                   per epoch (step = epoch), first on the page: `loss` (what the optimiser
                                minimised: the sum of the `weighted.<term>` curves, so its scale depends on
                                the variant's terms and weights), `loss.<term>` (each term's unweighted
                                mean), `weighted.<term>` (lambda x term), `lr`, `speed` (images/s)
    diag/...                    a few scalars saying why the cell scores what it does (the per-head detail
                                is the run's `diagnostics.json` artifact): `attention_entropy`,
                                `head_overlap`, `fdrt_overlap`, `best_head_rank1`, `mean_head_rank1`, and on
                                a labelled test set `attention_share.<class>` (mean over heads) beside
                                `attention_share.<class>_chance` (an even spread's share)
    eval/<set>/<mode>/<metric>  the evaluation (step = the last epoch; also mid-run, rank1 and mAP,
                                with `eval.every`); `mAP@50` is logged as `mAP_at_50`
    headline/rank1, headline/mAP  the same two numbers under the same names in every run: the Rank-1 and
                                mAP of the test set and mode of the first table row the cell feeds (logged
                                by the tables step, which knows the rows: mhsa.study.tracking)
    run/...                     `seconds`, `images_per_s`, `peak_mem_mb`, `epochs` of the training

Params are the run config as it ran (`effective_config`): `amp` and `channels_last` act on CUDA only,
so a CPU run records `amp: off` and `channels_last: false`; tracking settings are tags, not params.
"""

from __future__ import annotations

import copy
import math

from mhsa.evaluation.diagnostics import loss_weights
from mhsa.run.tracking import mlflow_name

TRAIN, EVAL, DIAG, RUN, HEADLINE = "Train", "eval", "diag", "run", "headline"
# the final training facts of metrics.json["train"] logged as run/<key>
RUN_FACTS = ("seconds", "images_per_s", "peak_mem_mb", "epochs")
# settings that act on CUDA only (mhsa.run.train: autocast_for, set_up) and their value elsewhere
CUDA_ONLY = {"amp": "off", "channels_last": False}
HEADLINE_METRICS = ("rank1", "mAP")
DIAGNOSTICS_ARTIFACT = "diagnostics.json"  # metrics.json's `diagnostics`, per head


def _number(v) -> bool:
    return isinstance(v, float | int) and not isinstance(v, bool) and math.isfinite(v)


# ----------------------------------------------------------------------------- per epoch
def epoch_metrics(row: dict, loss_cfg) -> dict[str, float]:
    """One `history` row (a training epoch) as `Train/...` metrics; `loss_cfg` gives the term weights."""
    weights = loss_weights(loss_cfg)
    out = {}
    for key, value in row.items():
        if key == "epoch" or not _number(value):
            continue
        if key == "loss":
            out[f"{TRAIN}/loss"] = float(value)
        elif key == "lr":
            out[f"{TRAIN}/lr"] = float(value)
        elif key == "images_per_s":
            out[f"{TRAIN}/speed"] = float(value)
        else:
            out[f"{TRAIN}/loss.{key}"] = float(value)
            if key in weights:
                out[f"{TRAIN}/weighted.{key}"] = weights[key] * float(value)
    return out


# ----------------------------------------------------------------------------- at the end
def eval_metrics(results: dict, only: tuple | None = None) -> dict[str, float]:
    """metrics.json's `eval` ({set: {mode: {metric: value}}}) as `eval/<set>/<mode>/<metric>`; NaN is left
    out (MLflow would chart it as a gap anyway); `only` keeps those metrics (the mid-run evaluation)."""
    return {mlflow_name(f"{EVAL}/{t}/{mode}/{k}"): float(v) for t, modes in results.items()
            for mode, ms in modes.items() for k, v in ms.items() if _number(v) and (only is None or k in only)}


def diag_metrics(diag: dict | None) -> dict[str, float]:
    """A few scalars of metrics.json's `diagnostics` (mhsa.evaluation.diagnostics.cell_diagnostics)."""
    if not diag:
        return {}
    att = diag.get("attention", {})
    out = {f"{DIAG}/attention_entropy": att.get("entropy_norm_mean"), f"{DIAG}/head_overlap": att.get("overlap_mean"),
           f"{DIAG}/fdrt_overlap": att.get("fdrt_overlap")}
    heads = ((diag.get("branches") or {}).get("branches") or {}).get("heads") or {}
    out[f"{DIAG}/best_head_rank1"] = heads.get("best_rank1")
    out[f"{DIAG}/mean_head_rank1"] = heads.get("mean_rank1")
    share = diag.get("attention_share")  # mhsa.evaluation.attention_share.share_report
    if share:
        for cls, mean, chance in zip(share["classes"], share["mean"], share["chance"], strict=True):
            out[f"{DIAG}/attention_share.{cls}"] = mean
            out[f"{DIAG}/attention_share.{cls}_chance"] = chance
    return {k: float(v) for k, v in out.items() if _number(v)}


def final_metrics(metrics: dict) -> dict[str, float]:
    """What a finished cell logs at its last epoch: `eval/...`, `diag/...` and `run/...`."""
    train = metrics.get("train", {})
    out = eval_metrics(metrics.get("eval", {}))
    out.update(diag_metrics(metrics.get("diagnostics")))
    out.update({f"{RUN}/{k}": float(train[k]) for k in RUN_FACTS if _number(train.get(k))})
    return out


def metric_points(metrics: dict) -> dict[str, dict[int, float]]:
    """metric name -> {step: value} of a finished cell: every epoch's `Train/...`, then the final metrics
    at the last epoch. Training logs these (and mid-run evaluations, which metrics.json does not keep);
    sync-mlflow replays them."""
    loss_cfg = (metrics.get("config") or {}).get("loss") or {}
    points: dict[str, dict[int, float]] = {}
    for row in metrics.get("history", []):
        for k, v in epoch_metrics(row, loss_cfg).items():
            points.setdefault(k, {})[int(row["epoch"])] = v
    last = int(metrics["train"]["epochs"])
    for k, v in final_metrics(metrics).items():
        points.setdefault(k, {})[last] = v
    return points


def headline_metrics(metrics: dict, test_set: str, mode: str) -> dict[str, float]:
    """`headline/rank1` and `headline/mAP`: the cell's numbers on `test_set` under `mode` ({} if absent)."""
    ms = ((metrics.get("eval") or {}).get(test_set) or {}).get(mode) or {}
    return {f"{HEADLINE}/{k}": float(ms[k]) for k in HEADLINE_METRICS if _number(ms.get(k))}


# ----------------------------------------------------------------------------- params and note
def effective_config(config: dict, device: str) -> dict:
    """The run config as it ran on `device`: off CUDA, `amp` is off and `channels_last` false."""
    out = copy.deepcopy(config)
    if not str(device).startswith("cuda"):
        out.update({k: v for k, v in CUDA_ONLY.items() if k in out})
    return out


def requested_settings(config: dict, device: str) -> str:
    """The CUDA-only settings the config asked for that did not act on `device` ('' when none)."""
    ran = effective_config(config, device)
    return ", ".join(f"{k}={config[k]}" for k in CUDA_ONLY if k in config and config[k] != ran[k])


def cell_note(config: dict, device: str) -> str:
    """The run's description (`mlflow.note.content`, Markdown): what was trained and how to read the charts."""
    m, lo, d = config.get("model", {}), config.get("loss", {}), config.get("data", {})
    model = (f"MHSAM with K={m.get('num_heads')} heads, fusion {m.get('fusion')}, "
             f"{'with' if m.get('residual') else 'without'} the residual module" if m.get("mhsam")
             else "the Baseline (global branch only)")
    weights = ", ".join(f"{k}={lo[k]:g}" for k in ("lambda1", "lambda2", "lambda3", "gamma") if _number(lo.get(k)))
    skipped = requested_settings(config, device)
    return "\n\n".join(filter(None, [
        f"**Cell `{config.get('name')}`**: {model}, trained on `{d.get('dataset')}` with seed {config.get('seed')} "
        f"on {device} ({weights}{'' if lo.get('global_ce', True) else ', no CE on q*'}).",
        f"Charts: **{TRAIN}/** the training per epoch. `{TRAIN}/loss` is the sum of the `{TRAIN}/weighted.*` "
        "curves, so its scale depends on the variant's loss terms and weights: compare runs by "
        f"**{HEADLINE}/rank1** and **{HEADLINE}/mAP** (the mode of the table row the cell feeds, tag `headline`). "
        f"**{EVAL}/SET/MODE/** every evaluation; **{DIAG}/** attention entropy, head overlap "
        f"and head scores (per head: artifact `diagnostics.json`); **{RUN}/** time and memory.",
        f"Not applied on {device} (CUDA only): {skipped}." if skipped else "",
    ]))
