"""Train and evaluate one ablation cell: the paper's recipe in one flat loop.

    cfg = load_config("mhsa/configs/smoke.yaml"); train_cell(cfg, "results/runs/smoke")

Checkpoints (every `checkpoint_every` epochs, atomic) live in `ckpt_dir`, outside the DAG's
declared outputs: rerunning after a crash or kill resumes from the last one. Each epoch
re-seeds every RNG from (seed, epoch), so a resumed CPU run ends bit-identical to an
uninterrupted one. Results go to `out_dir/metrics.json` (atomic), MLflow mirrors them.
"""

from __future__ import annotations

import logging
import math
import resource
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mhsa.config import RunConfig, save_config, weights_config
from mhsa.data import datasets
from mhsa.data.check import check_test_sets
from mhsa.data.loader import ImageDataset
from mhsa.data.sampler import PKSampler
from mhsa.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms
from mhsa.errors import DataError, DeviceError
from mhsa.evaluation import evaluate_modes, extract_features
from mhsa.io import atomic_write, atomic_write_json, atomic_write_text
from mhsa.losses import Criterion
from mhsa.model import build_model
from mhsa.progress import Progress
from mhsa.provenance import environment
from mhsa.tracking import CellTracker

log = logging.getLogger("mhsa.train")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf: the run stops instead of training on garbage."""


# ---------------------------------------------------------------------------- setup
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda") or (index and not (kind == "cuda" and index.isdigit())):
        raise DeviceError(f"config key 'device' is {name!r}; use auto, cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"config key 'device' is {name!r} but no CUDA device is visible "
                          f"(CUDA_VISIBLE_DEVICES, drivers); use device: auto or cpu")
    if index and int(index) >= torch.cuda.device_count():
        raise DeviceError(f"config key 'device' is {name!r} but only {torch.cuda.device_count()} CUDA "
                          "device(s) are visible; use cuda:0 or auto")
    return torch.device(name)


def seed_everything(seed: int, epoch: int = 0) -> int:
    """One seed per (run seed, epoch): resuming at epoch e replays exactly what epoch e would do."""
    s = (seed * 1_000_003 + epoch) % (2**31 - 1)
    torch.manual_seed(s)
    np.random.seed(s)
    return s


def lr_at(cfg: RunConfig, epoch: int) -> float:
    """Linear warm-up over the first `warmup_epochs`, then step decay at each milestone."""
    o = cfg.optim
    if o.warmup_epochs and epoch <= o.warmup_epochs:
        frac = (epoch - 1) / max(o.warmup_epochs, 1)
        return o.lr * (o.warmup_factor + (1 - o.warmup_factor) * frac)
    return o.lr * o.decay ** sum(epoch > m for m in o.milestones)


def make_optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for n, p in model.named_parameters()
              if not (cfg.optim.freeze_attention_mlp and n.startswith("mhsam.attention"))]
    if cfg.optim.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                               weight_decay=cfg.optim.weight_decay)
    return torch.optim.Adam(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)


def ensure_data(name: str, root: str, synthetic: dict | None):
    """Load a data set; generate the synthetic stand-in first when configured and absent."""
    if synthetic is not None and not (Path(root) / ".complete").exists():
        from mhsa.data.synthetic import generate

        params = dict(synthetic)
        seed = params.pop("seed", 0)
        generate(root, name, seed=seed, **params)
    return datasets.load(name, root)


def default_modes(cfg: RunConfig) -> list[str]:
    return ["global", "local", "concat"] if cfg.model.mhsam else ["global"]


def eval_targets(cfg: RunConfig) -> dict:
    """test set -> (ReidDataset, modes); loaded up front so a bad root fails before training."""
    targets = cfg.eval.targets or {cfg.data.dataset: {"root": cfg.data.root}}
    out = {}
    for name, t in targets.items():
        synthetic = t.get("synthetic", cfg.data.synthetic if t["root"] == cfg.data.root else None)
        out[name] = (ensure_data(name, t["root"], synthetic), list(t.get("modes") or default_modes(cfg)))
    return out


def autocast_for(cfg: RunConfig, device: torch.device):
    if device.type != "cuda" or cfg.amp == "off":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)


def train_loader(cfg: RunConfig, ds, sampler: PKSampler, device: torch.device, epoch: int) -> DataLoader:
    """A training loader whose worker seeds come from (seed, epoch).

    On CUDA with workers it is built once, with persistent workers (start-up paid once): the sampler
    still fixes each epoch's order, but augmentation draws continue across epochs, so only CPU runs
    (a new loader per epoch) promise bit-identical resumes.
    """
    d = cfg.data
    cuda = device.type == "cuda"
    tf = build_transforms(d.height, d.width, train=True, flip=d.flip, random_erasing=d.random_erasing, pad=d.pad)
    return DataLoader(ImageDataset(ds.train, tf), batch_size=d.p * d.k, sampler=sampler, drop_last=True,
                      num_workers=d.workers, pin_memory=cuda, persistent_workers=cuda and d.workers > 0,
                      generator=torch.Generator().manual_seed(seed_everything(cfg.seed, epoch)))


def test_loader(cfg: RunConfig, items: list, device: torch.device) -> DataLoader:
    d = cfg.data
    tf = build_transforms(d.height, d.width, train=False)
    return DataLoader(ImageDataset(items, tf), batch_size=d.test_batch, shuffle=False,
                      num_workers=d.workers, pin_memory=device.type == "cuda")


def _save_npz(path: str, arrays: dict) -> None:
    with open(path, "wb") as fh:  # a handle: np.savez would append ".npz" to a bare temp name
        np.savez_compressed(fh, **arrays)


def _sigterm_as_interrupt():
    """SLURM and Snakemake stop jobs with SIGTERM: turn it into KeyboardInterrupt so the MLflow run
    is marked KILLED (the checkpoint is already on disk; the rerun resumes)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------ checkpoint
from mhsa.checkpoint import StaleCheckpointError, check_resumable, load_checkpoint, save_checkpoint  # noqa: E402, F401


# ------------------------------------------------------------------------ evaluation
def evaluate_cell(cfg: RunConfig, model, targets: dict, device: torch.device) -> dict:
    results = {}
    rerank = {"k1": cfg.eval.rerank_k1, "k2": cfg.eval.rerank_k2, "lambda_value": cfg.eval.rerank_lambda}
    for name, (ds, modes) in targets.items():
        base = sorted({m.removesuffix("_rerank") for m in modes})
        cuda = device.type == "cuda"
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp) if cuda else None
        kw = {"device": device, "modes": base, "amp_dtype": amp, "channels_last": cuda and cfg.channels_last}
        q = extract_features(model, test_loader(cfg, ds.query, device), **kw)
        g = extract_features(model, test_loader(cfg, ds.gallery, device), **kw)
        results[name] = evaluate_modes(q["features"], g["features"], q["pids"], g["pids"], q["camids"],
                                       g["camids"], modes, rerank_params=rerank)
        log.info("eval %s: %s", name, "  ".join(f"{m} R1 {r['rank1']:.1f} mAP {r['mAP']:.1f}"
                                               for m, r in results[name].items()))
    return results


@torch.inference_mode()
def attention_maps(cfg: RunConfig, model, ds, device: torch.device) -> dict:
    """alpha of a few query images (one per identity); the Baseline gets its activation map."""
    seen, items = set(), []
    for item in ds.query:
        if item[1] not in seen:
            seen.add(item[1])
            items.append(item)
        if len(items) == cfg.eval.attention_images:
            break
    tf = build_transforms(cfg.data.height, cfg.data.width, train=False)
    x = torch.stack([ImageDataset(items, tf)[i][0] for i in range(len(items))]).to(device)
    model.eval()
    out = model(x)
    if "alpha" in out:
        alpha = out["alpha"].float()
    else:
        fmap = model.backbone(x).float()
        alpha = fmap.pow(2).mean(1, keepdim=True)
        alpha = alpha / alpha.flatten(1).amax(1).clamp_min(1e-12)[:, None, None, None]
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    images = ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    return {"images": images.cpu().numpy(), "alpha": alpha.cpu().numpy(),
            "pids": np.array([i[1] for i in items])}


# ---------------------------------------------------------------------------- train
def train_cell(cfg: RunConfig, out_dir: str | Path, ckpt_dir: str | Path | None = None,
               tracking_uri: str | None = None) -> dict:
    out_dir = Path(out_dir)
    ckpt_dir = Path(ckpt_dir) if ckpt_dir else out_dir / "checkpoints"
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = ckpt_dir / "last.pt"
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    env = environment()
    log.info("cell %s | git %s | host %s | torch %s | device %s", cfg.name, env["git_sha"], env["host"],
             env["torch"], device)

    # Data first: a missing root fails here, before any model is built.
    train_set = ensure_data(cfg.data.dataset, cfg.data.root, cfg.data.synthetic)
    if not train_set.train:
        raise DataError(f"data set {cfg.data.dataset!r} at {cfg.data.root!r} has no training images "
                         "(Partial-REID/iLIDS are test-only: train on market1501 and list them in eval.targets)")
    targets = eval_targets(cfg)
    check_test_sets({name: ds for name, (ds, _) in targets.items()})  # unreadable images, no valid query
    pids = [pid for _, pid, _ in train_set.train]
    sampler = PKSampler(pids, cfg.data.p, cfg.data.k, seed=cfg.seed)

    seed_everything(cfg.seed)
    m = cfg.model
    model = build_model(train_set.num_train_pids, num_heads=m.num_heads, backbone=m.backbone,
                        pretrained=m.pretrained, mhsam=m.mhsam, fusion=m.fusion, residual=m.residual,
                        last_stride=m.last_stride, attention_layers=m.attention_layers,
                        feat_dim=m.feat_dim).to(device)
    fmt = torch.channels_last if (cfg.channels_last and device.type == "cuda") else torch.contiguous_format
    model = model.to(memory_format=fmt)
    lo = cfg.loss
    criterion = Criterion(lambda1=lo.lambda1, lambda2=lo.lambda2, lambda3=lo.lambda3, gamma=lo.gamma,
                          global_ce=lo.global_ce, label_smoothing=lo.label_smoothing, fdrt_norm=lo.fdrt_norm,
                          competition_form=lo.competition_form, ihtl_self_positive=lo.ihtl_self_positive)
    optimizer = make_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp == "fp16")

    start_epoch, history, train_seconds, images_seen, run_id = 0, [], 0.0, 0, None
    state = load_checkpoint(ckpt_path)
    if state is not None:
        check_resumable(cfg, state, ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # a disabled scaler (CPU, bf16) saves {}, which load_state_dict rejects
            scaler.load_state_dict(state["scaler"])
        start_epoch, history = state["epoch"], state["history"]
        train_seconds, images_seen, run_id = state["train_seconds"], state["images_seen"], state["run_id"] or None
        log.info("resuming %s from %s (epoch %d)", cfg.name, ckpt_path, start_epoch)

    # The run id is kept beside the checkpoints from the start, so a cell killed before its first
    # checkpoint still continues its own MLflow run instead of leaving a stray RUNNING one.
    run_id_file = ckpt_dir / "mlflow_run_id"
    if run_id is None and run_id_file.exists():
        run_id = run_id_file.read_text().strip() or None
    tracker = CellTracker(tracking_uri, cfg.tracking.experiment, enabled=cfg.tracking.enabled)
    tags = {"cell": cfg.name, "dataset": cfg.data.dataset, "device": str(device), **env,
            **{k: str(v) for k, v in cfg.tracking.tags.items()}}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    persistent = device.type == "cuda" and cfg.data.workers > 0
    previous_sigterm = _sigterm_as_interrupt()
    try:
        run_id = tracker.start(cfg.name, cfg.to_dict(), tags, resume_run_id=run_id)
        if run_id:
            atomic_write_text(run_id_file, run_id)
        loader = train_loader(cfg, train_set, sampler, device, start_epoch + 1) if persistent else None
        for epoch in range(start_epoch + 1, cfg.optim.epochs + 1):
            seed_everything(cfg.seed, epoch)
            sampler.set_epoch(epoch)
            lr = lr_at(cfg, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            if not persistent:
                loader = train_loader(cfg, train_set, sampler, device, epoch)
            names, sums = None, None
            n_iter, t0 = 0, time.perf_counter()
            bar = Progress(len(loader), f"epoch {epoch}/{cfg.optim.epochs}")
            for imgs, batch_pids, _, _ in loader:
                imgs = imgs.to(device, non_blocking=True, memory_format=fmt)
                batch_pids = batch_pids.to(device, non_blocking=True)
                with autocast_for(cfg, device):
                    outputs = model(imgs)
                total, terms = criterion(outputs, batch_pids)
                # One host sync per step: all terms checked and summed on the device together.
                names = names or ["loss", *terms]
                values = torch.stack([total.detach(), *(t.detach() for t in terms.values())]).double()
                if not bool(torch.isfinite(values).all()):
                    bad = [n for n, v in zip(names, values.tolist(), strict=True) if not math.isfinite(v)]
                    raise NonFiniteLossError(
                        f"cell {cfg.name!r}: non-finite loss at epoch {epoch}, iteration {n_iter + 1}: "
                        f"term(s) {', '.join(repr(b) for b in bad)} (lr {lr:g}, loss weights "
                        f"lambda1={lo.lambda1:g} lambda2={lo.lambda2:g} lambda3={lo.lambda3:g} "
                        f"gamma={lo.gamma:g}); lower optim.lr or check the data")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                if cfg.optim.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                n_iter += 1
                sums = values if sums is None else sums + values
                if bar.enabled:
                    bar.update(n_iter, f"loss {float(values[0]):.3f}")
            bar.close()
            seconds = time.perf_counter() - t0
            images = n_iter * cfg.data.p * cfg.data.k  # every batch is full (drop_last)
            train_seconds += seconds
            images_seen += images
            means = (sums / max(n_iter, 1)).tolist() if sums is not None else []
            row = {"epoch": epoch, **dict(zip(names or [], means, strict=True)), "lr": lr,
                   "images_per_s": images / max(seconds, 1e-9)}
            history.append(row)
            log.info("epoch %d/%d  %s", epoch, cfg.optim.epochs,
                     "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            if cfg.eval.every and epoch % cfg.eval.every == 0 and epoch < cfg.optim.epochs:
                mid = evaluate_cell(cfg, model, targets, device)
                tracker.log_metrics({f"{t}.{mode}.{k}": v for t, r in mid.items() for mode, ms in r.items()
                                     for k, v in ms.items() if k in ("rank1", "mAP")}, step=epoch)
            if (cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0) or epoch == cfg.optim.epochs:
                save_checkpoint(ckpt_path, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(), "epoch": epoch, "history": history,
                    "train_seconds": train_seconds, "images_seen": images_seen, "run_id": run_id or "",
                    "weights_config": weights_config(cfg)})

        results = evaluate_cell(cfg, model, targets, device)
        first = next(iter(targets.values()))[0]
        att = attention_maps(cfg, model, first, device)
        atomic_write(out_dir / "attention.npz", lambda tmp: _save_npz(tmp, att))
        if device.type == "cuda":
            peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        metrics = {
            "cell": cfg.name,
            "config": cfg.to_dict(),
            "eval": results,
            "train": {"seconds": train_seconds, "images_per_s": images_seen / max(train_seconds, 1e-9),
                      "peak_mem_mb": peak_mb, "epochs": cfg.optim.epochs, "device": str(device),
                      "mlflow_run_id": run_id, **env},
            "history": history,
        }
        atomic_write_json(out_dir / "metrics.json", metrics)
        _log_final(tracker, cfg, metrics, out_dir, att)
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    finally:
        _restore_sigterm(previous_sigterm)
    tracker.finish("FINISHED")
    return metrics


def _log_final(tracker: CellTracker, cfg: RunConfig, metrics: dict, out_dir: Path, att: dict) -> None:
    save_config(cfg, out_dir / "config.yaml")
    try:
        from mhsa.plots import save_attention_overlay

        save_attention_overlay(att["images"], att["alpha"], out_dir / "attention.png",
                               titles=[f"id {p}" for p in att["pids"]])
    except Exception as err:  # a figure must never lose a finished cell
        log.warning("attention overlay not drawn: %s", err)
    if not tracker.enabled:
        return
    final = {f"{t}.{mode}.{k}": v for t, r in metrics["eval"].items() for mode, ms in r.items()
             for k, v in ms.items() if isinstance(v, float | int) and math.isfinite(v)}
    final.update({f"train.{k}": v for k, v in metrics["train"].items()
                  if isinstance(v, float | int) and not isinstance(v, bool)})
    tracker.log_metrics(final, step=cfg.optim.epochs)
    for name in ("config.yaml", "metrics.json", "attention.png"):
        tracker.log_artifact(out_dir / name)
