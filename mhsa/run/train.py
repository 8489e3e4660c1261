"""Train and evaluate one ablation cell: the paper's recipe (Sec. VII-B) as a flat loop.

    cfg = load_run_config("mhsa/configs/smoke.yaml"); train_cell(cfg, "results/runs/smoke")

`train_cell` reads top to bottom: `set_up` (data, seeded model, loss, optimiser) and `resume`, then
per epoch `train_one_epoch` (`forward_backward` per P x K batch) and `end_of_epoch` (log, optional
evaluation, checkpoint), then `final_report` (evaluation, attention maps, metrics.json). The
optimiser and the learning-rate schedule live in `mhsa.run.optim`.

Checkpoints (every `checkpoint_every` epochs, atomic) live in `ckpt_dir`, outside the DAG's
declared outputs: rerunning after a crash or kill resumes from the last one. Each epoch
re-seeds every RNG from (seed, epoch), so a resumed CPU run ends bit-identical to an
uninterrupted one. Results go to `out_dir/metrics.json` (atomic), MLflow mirrors them.
Training draws no figures: the figures step renders `attention.npz`.
"""

from __future__ import annotations

import logging
import math
import resource
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mhsa.config import RunConfig, save_config, weights_config
from mhsa.data import datasets
from mhsa.data.batch_transforms import BatchAugment, CachedBatches, CachedEvalBatches
from mhsa.data.cache import DecodedCache, UnreadableImagesError, open_split
from mhsa.data.check import check_test_sets, data_counts
from mhsa.data.datasets import ReidDataset
from mhsa.data.loader import ImageDataset
from mhsa.data.sampler import AuthorsSampler, PKSampler, build_sampler
from mhsa.data.synthetic import LABELS, dataset_seed, generate, is_complete, read_labels
from mhsa.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms
from mhsa.errors import CheckpointError, DataError
from mhsa.evaluation import evaluate_modes_per_query, extract_features
from mhsa.evaluation.attention_share import activation_map, share_report
from mhsa.evaluation.diagnostics import cell_diagnostics
from mhsa.evaluation.modes import base_modes, default_modes
from mhsa.evaluation.per_query import to_json as per_query_json
from mhsa.io import atomic_write, atomic_write_json, atomic_write_text
from mhsa.losses import Criterion
from mhsa.model.build import build_model_from_config
from mhsa.run import cpu_kernels
from mhsa.run.checkpoint import (
    check_finished_run,
    check_resumable,
    finalize_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from mhsa.run.device import (  # noqa: F401  (pick_device: re-exported for callers of train)
    autocast_for,
    check_amp,
    configure_cuda,
    pick_device,
    use_channels_last,
)
from mhsa.run.optim import lr_at, make_optimizer, set_lr
from mhsa.run.progress import Progress
from mhsa.run.provenance import environment
from mhsa.run.run_metrics import (
    DIAGNOSTICS_ARTIFACT,
    cell_note,
    effective_config,
    epoch_metrics,
    eval_metrics,
    final_metrics,
)
from mhsa.run.tracking import CellTracker, run_key

log = logging.getLogger("mhsa.run.train")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf: the run stops instead of training on garbage."""


# ---------------------------------------------------------------------------- setup
def seed_everything(seed: int, epoch: int = 0) -> int:
    """One seed per (run seed, epoch): resuming at epoch e replays exactly what epoch e would do."""
    s = (seed * 1_000_003 + epoch) % (2**31 - 1)
    torch.manual_seed(s)
    np.random.seed(s)
    return s


def ensure_data(name: str, root: str, synthetic: dict | None):
    """Load a data set; generate the synthetic stand-in first when configured and absent."""
    if synthetic is not None and not is_complete(root):
        params = dict(synthetic)
        seed = params.pop("seed", None)
        generate(root, name, seed=dataset_seed(name) if seed is None else seed, **params)
    return datasets.load(name, root)


def eval_targets(cfg: RunConfig) -> dict:
    """test set -> (ReidDataset, modes); loaded up front so a bad root fails before training."""
    targets = cfg.eval.targets or {cfg.data.dataset: {"root": cfg.data.root}}
    out = {}
    for name, t in targets.items():
        synthetic = t.get("synthetic", cfg.data.synthetic if t["root"] == cfg.data.root else None)
        modes = list(t.get("modes") or default_modes(cfg.model.mhsam))
        out[name] = (ensure_data(name, t["root"], synthetic), modes)
    return out


def train_loader(cfg: RunConfig, ds, sampler: PKSampler | AuthorsSampler, device: torch.device,
                 epoch: int) -> DataLoader:
    """A training loader whose worker seeds come from (seed, epoch).

    On CUDA with workers it is built once, with persistent workers (start-up paid once): the sampler
    still fixes each epoch's order, but augmentation draws continue across epochs, so only CPU runs
    (a new loader per epoch) promise bit-identical resumes.
    """
    d = cfg.data
    cuda = device.type == "cuda"
    tf = build_transforms(d.height, d.width, train=True, flip=d.flip, random_erasing=d.random_erasing, pad=d.pad,
                          erasing=d.erasing, cutout_side=d.cutout_side)
    return DataLoader(ImageDataset(ds.train, tf), batch_size=d.p * d.k, sampler=sampler, drop_last=True,
                      num_workers=d.workers, pin_memory=cuda, persistent_workers=cuda and d.workers > 0,
                      generator=torch.Generator().manual_seed(seed_everything(cfg.seed, epoch)))


def test_loader(cfg: RunConfig, items: list, device: torch.device) -> DataLoader:
    d = cfg.data
    tf = build_transforms(d.height, d.width, train=False)
    return DataLoader(ImageDataset(items, tf), batch_size=d.test_batch, shuffle=False,
                      num_workers=d.workers, pin_memory=device.type == "cuda")


def cache_test_sets(cfg: RunConfig, targets: dict) -> set:
    """Decode the test sets into the image cache before training; returns the names of the sets decoded
    whole, which the test-set check need not read again (a set with unreadable images is not one: the
    check decodes it again and names every bad file)."""
    done = set()
    for name, (ds, _) in targets.items():
        try:
            if all(open_split(cfg.data, name, str(ds.root), split, getattr(ds, split)) is not None
                   for split in ("query", "gallery")):
                done.add(name)
        except UnreadableImagesError:  # left to check_test_sets, which lists every bad file of every set at once
            pass
    return done


def test_batches(cfg: RunConfig, name: str, ds: ReidDataset, split: str, device: torch.device):
    """Query or gallery batches: from the decoded-image cache when `data.cache` allows, else the loader
    (both give the same images; the cache decodes each file once for every cell that uses it)."""
    items = getattr(ds, split)
    cache = open_split(cfg.data, name, str(ds.root), split, items)
    if cache is None:
        return test_loader(cfg, items, device)
    return CachedEvalBatches(cache, items, cfg.data.test_batch, device)


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


# ------------------------------------------------------------------------ evaluation
def evaluate_cell(cfg: RunConfig, model, targets: dict, device: torch.device,
                  per_query: dict | None = None) -> dict:
    """test set -> mode -> metrics (percent); `per_query`, when given, is filled with each test set's
    per-query results in metrics.json's form (`mhsa.evaluation.per_query`)."""
    results = {}
    rerank = {"k1": cfg.eval.rerank_k1, "k2": cfg.eval.rerank_k2, "lambda_value": cfg.eval.rerank_lambda}
    for name, (ds, modes) in targets.items():
        # fp32, whatever the training's autocast: ranking, mAP and re-ranking on unrounded embeddings
        # (bf16 and fp16 cells would otherwise rank differently); a small share of a cell's time
        kw = {"device": device, "modes": base_modes(modes), "channels_last": use_channels_last(cfg, device)}
        t0 = time.perf_counter()
        q = extract_features(model, test_batches(cfg, name, ds, "query", device), **kw)
        g = extract_features(model, test_batches(cfg, name, ds, "gallery", device), **kw)
        t1 = time.perf_counter()
        results[name], pq = evaluate_modes_per_query(q["features"], g["features"], q["pids"], g["pids"],
                                                     q["camids"], g["camids"], modes, rerank_params=rerank,
                                                     rerank_input=cfg.eval.rerank_input)
        if per_query is not None:
            per_query[name] = per_query_json(pq)
        n = len(ds.query) + len(ds.gallery)
        log.info("eval %s: features of %d + %d images in %.1f s (%.1f images/s), %d test modes in %.1f s",
                 name, len(ds.query), len(ds.gallery), t1 - t0, n / max(t1 - t0, 1e-9), len(modes),
                 time.perf_counter() - t1)
        log.info("eval %s: %s", name, "  ".join(f"{m} R1 {r['rank1']:.1f} mAP {r['mAP']:.1f}"
                                               for m, r in results[name].items()))
    return results


@torch.inference_mode()
def attention_share(cfg: RunConfig, model, ds: ReidDataset, device: torch.device) -> dict | None:
    """Where each head's attention goes on every query image of `ds` (background, visible body,
    occluder; `mhsa.evaluation.attention_share`), when its generator wrote label maps; else None."""
    labels = read_labels(ds.root)
    if not labels:
        return None
    tf = build_transforms(cfg.data.height, cfg.data.width, train=False)
    loader = DataLoader(ImageDataset(ds.query, tf), batch_size=cfg.data.test_batch, shuffle=False)
    model.eval()
    maps = []
    for x, *_ in loader:
        x = x.to(device)
        out = model(x)
        maps.append(out["alpha"].float().cpu().numpy() if "alpha" in out
                    else activation_map(model.backbone(x).float().cpu().numpy()))
    rel = [str(Path(path).relative_to(ds.root)) for path, _, _ in ds.query]
    report = share_report(np.concatenate(maps), np.stack([labels[r] for r in rel]))
    return {"dataset": ds.name, **report}


def occluder_masks(ds: ReidDataset, items: list, height: int, width: int) -> np.ndarray | None:
    """N x height x width bool: where the occluder is in each of `items` (nearest-neighbour resize of the
    generator's label maps, `mhsa.data.synthetic.LABELS`), or None when `ds` has no label maps."""
    labels = read_labels(ds.root)
    if not labels:
        return None
    occluder = LABELS.index("occluder")
    out = []
    for path, _, _ in items:
        lab = labels[str(Path(path).relative_to(ds.root))]
        rows = np.arange(height) * lab.shape[0] // height
        cols = np.arange(width) * lab.shape[1] // width
        out.append(lab[rows][:, cols] == occluder)
    return np.stack(out)


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
    arrays = {"images": images.cpu().numpy(), "alpha": alpha.cpu().numpy(),
              "pids": np.array([i[1] for i in items])}
    occluder = occluder_masks(ds, items, cfg.data.height, cfg.data.width)
    if occluder is not None:  # the figures outline it (mhsa.study.plots.plot_attention_grid)
        arrays["occluder"] = occluder
    if "heads" in out:  # P of the same images: the diagnostics' FDRT overlap
        arrays["heads"] = out["heads"].float().cpu().numpy()
    return arrays


# ---------------------------------------------------------------------------- train
@dataclass
class Cell:
    """One cell's live state: what `set_up` builds and each epoch carries on (and the checkpoint keeps)."""

    cfg: RunConfig
    device: torch.device
    train_set: ReidDataset
    targets: dict  # test set -> (ReidDataset, modes)
    sampler: PKSampler | AuthorsSampler  # data.sampler
    model: torch.nn.Module
    criterion: Criterion
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    memory_format: torch.memory_format
    ckpt_dir: Path
    train_cache: DecodedCache | None = None  # None: the PIL loader path (data.cache)
    epoch: int = 0  # epochs finished
    history: list = field(default_factory=list)
    train_seconds: float = 0.0
    images_seen: int = 0
    run_id: str | None = None

    @property
    def ckpt_path(self) -> Path:
        return self.ckpt_dir / "last.pt"

    @property
    def run_id_file(self) -> Path:
        return self.ckpt_dir / "mlflow_run_id"

    @property
    def persistent_loader(self) -> bool:
        return self.device.type == "cuda" and self.cfg.data.workers > 0

    @property
    def batch(self) -> int:
        return self.cfg.data.p * self.cfg.data.k

    @property
    def epochs(self) -> int:
        """The epochs this cell trains: the recipe's, or fewer where `optim.max_steps` caps the steps (the
        last of them cut short)."""
        cap, epochs = self.cfg.optim.max_steps, self.cfg.optim.epochs
        if not cap:
            return epochs
        return min(epochs, -(-cap // max(len(self.sampler) // self.batch, 1)))

    def steps_left(self) -> int | None:
        """Optimiser steps the cap still allows (None: no cap); every step trains one full batch."""
        cap = self.cfg.optim.max_steps
        return None if not cap else max(cap - self.images_seen // self.batch, 0)


def train_cell(cfg: RunConfig, out_dir: str | Path, ckpt_dir: str | Path | None = None,
               tracking_uri: str | None = None) -> dict:
    """Train one cell (resuming from `ckpt_dir/last.pt` if there) and evaluate it; returns metrics.json's dict."""
    device = pick_device(cfg.device)
    check_amp(cfg.amp, device)  # bf16 on a GPU without it: one line naming `amp`, before anything is written
    out_dir = Path(out_dir)
    ckpt_dir = Path(ckpt_dir) if ckpt_dir else out_dir / "checkpoints"
    out_dir.mkdir(parents=True, exist_ok=True)
    check_finished_run(cfg, out_dir)  # another config's finished results there are never overwritten
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cpu":
        cpu_kernels.check(cfg.cpu_kernels)
    else:
        configure_cuda(cfg.amp)
    env = {**environment(), **cpu_kernels.describe(cfg.cpu_kernels)}
    log.info("cell %s | git %s | host %s | torch %s | device %s | CPU kernels %s (%s)", cfg.name, env["git_sha"],
             env["host"], env["torch"], device, env["cpu_capability"], cfg.cpu_kernels)
    cell = set_up(cfg, device, ckpt_dir)
    resume(cell)
    tracker = open_tracker(cell, tracking_uri)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    previous_sigterm = _sigterm_as_interrupt()
    try:
        start_run(cell, tracker, env)
        train_epochs(cell, tracker)
        metrics = final_report(cell, tracker, out_dir, env)
        finalize_checkpoint(cell.ckpt_path, keep_weights=cfg.keep_weights)
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


def set_up(cfg: RunConfig, device: torch.device, ckpt_dir: Path) -> Cell:
    """Data first (a missing root fails here, before any model is built), then the model from the run
    seed, the loss, the optimiser and the AMP scaler."""
    train_set = ensure_data(cfg.data.dataset, cfg.data.root, cfg.data.synthetic)
    if not train_set.train:
        raise DataError(f"data set {cfg.data.dataset!r} at {cfg.data.root!r} (data.dataset, data.root) has no "
                          "training images (Partial-REID/iLIDS are test-only: train on market1501 and list "
                          "them in eval.targets)")
    targets = eval_targets(cfg)
    check_test_sets({name: ds for name, (ds, _) in targets.items()}, decoded=cache_test_sets(cfg, targets))
    sampler = build_sampler(cfg.data.sampler, [pid for _, pid, _ in train_set.train], cfg.data.p, cfg.data.k,
                            seed=cfg.seed)
    seed_everything(cfg.seed)  # the initial weights depend on the run seed only
    fmt = torch.channels_last if use_channels_last(cfg, device) else torch.contiguous_format
    model = build_model_from_config(train_set.num_train_pids, cfg.model).to(device).to(memory_format=fmt)
    if cfg.compile:
        model.compile()  # in place, so state_dict keys (checkpoints) stay those of the eager model
    return Cell(
        cfg=cfg, device=device, train_set=train_set, targets=targets, sampler=sampler, model=model,
        criterion=Criterion.from_config(cfg.loss), optimizer=make_optimizer(cfg.optim, model),
        scaler=torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp == "fp16"),
        memory_format=fmt, ckpt_dir=ckpt_dir,
        train_cache=open_split(cfg.data, cfg.data.dataset, cfg.data.root, "train", train_set.train))


def resume(cell: Cell) -> None:
    """Continue from the last checkpoint, if any; one trained under another config is refused."""
    state = load_checkpoint(cell.ckpt_path)
    if state is None:
        return
    check_resumable(cell.cfg, state, cell.ckpt_path)
    if not state["optimizer"] and state["epoch"] < cell.epochs:
        raise CheckpointError(f"checkpoint {cell.ckpt_path} holds the final weights of a finished cell (epoch "
                              f"{state['epoch']}), not a state to train on from; delete the directory "
                              f"{cell.ckpt_path.parent} to train this cell again")
    cell.model.load_state_dict(state["model"])
    if state["optimizer"]:  # the checkpoint after the last epoch keeps the weights only (checkpoint_state)
        cell.optimizer.load_state_dict(state["optimizer"])
    if state["scaler"]:  # a disabled scaler (CPU, bf16) saves {}, which load_state_dict rejects
        cell.scaler.load_state_dict(state["scaler"])
    cell.epoch, cell.history = state["epoch"], state["history"]
    cell.train_seconds, cell.images_seen = state["train_seconds"], state["images_seen"]
    cell.run_id = state["run_id"] or None
    log.info("resuming %s from %s (epoch %d)", cell.cfg.name, cell.ckpt_path, cell.epoch)


def checkpoint_state(cell: Cell) -> dict:
    """After the last epoch nothing trains on from it, so it holds the weights only (a rerun evaluates)."""
    final = cell.epoch >= cell.epochs
    return {"model": cell.model.state_dict(), "optimizer": {} if final else cell.optimizer.state_dict(),
            "scaler": {} if final else cell.scaler.state_dict(), "epoch": cell.epoch, "history": cell.history,
            "train_seconds": cell.train_seconds, "images_seen": cell.images_seen,
            "run_id": cell.run_id or "", "weights_config": weights_config(cell.cfg)}


def open_tracker(cell: Cell, tracking_uri: str | None) -> CellTracker:
    # The run id is kept beside the checkpoints from the start, so a cell killed before its first
    # checkpoint still continues its own MLflow run instead of leaving a stray RUNNING one.
    if cell.run_id is None and cell.run_id_file.exists():
        cell.run_id = cell.run_id_file.read_text().strip() or None
    return CellTracker(tracking_uri, cell.cfg.tracking.experiment, enabled=cell.cfg.tracking.enabled)


def start_run(cell: Cell, tracker: CellTracker, env: dict) -> None:
    cfg = cell.cfg
    config, device = cfg.to_dict(), str(cell.device)
    tags = {"cell": cfg.name, "mhsa.run_key": run_key(cfg, cell.ckpt_dir), "dataset": cfg.data.dataset,
            "device": device, "mlflow.note.content": cell_note(config, device), **env,
            **{k: str(v) for k, v in cfg.tracking.tags.items()}}
    # params: what ran (mhsa.run.run_metrics.effective_config: a CPU run records amp off)
    cell.run_id = tracker.start(cfg.name, effective_config(config, device), tags, resume_run_id=cell.run_id)
    if cell.run_id:
        atomic_write_text(cell.run_id_file, cell.run_id)


def train_epochs(cell: Cell, tracker: CellTracker) -> None:
    """The remaining epochs; each starts from RNGs seeded by (seed, epoch) and its scheduled lr."""
    cfg = cell.cfg
    loader = None
    if cell.persistent_loader and cell.train_cache is None:
        loader = train_loader(cfg, cell.train_set, cell.sampler, cell.device, cell.epoch + 1)
    for epoch in range(cell.epoch + 1, cell.epochs + 1):
        seed_everything(cfg.seed, epoch)
        cell.sampler.set_epoch(epoch)
        lr = lr_at(cfg.optim, epoch)
        set_lr(cell.optimizer, lr)
        if cell.train_cache is not None:
            loader = cached_train_batches(cell, epoch)
        elif not cell.persistent_loader:
            loader = train_loader(cfg, cell.train_set, cell.sampler, cell.device, epoch)
        row = train_one_epoch(cell, loader, epoch, lr)
        end_of_epoch(cell, tracker, row)


def cached_train_batches(cell: Cell, epoch: int) -> CachedBatches:
    """The epoch's P x K batches from the decoded-image cache, augmented as whole batches on the training
    device from a generator seeded by (seed, epoch): a resumed run replays the same draws."""
    d = cell.cfg.data
    return CachedBatches(cell.train_cache, cell.train_set.train, cell.sampler, d.p * d.k, cell.device,
                         BatchAugment(flip=d.flip, pad=d.pad, random_erasing=d.random_erasing, erasing=d.erasing,
                                      cutout_side=d.cutout_side),
                         seed=seed_everything(cell.cfg.seed, epoch))


def train_one_epoch(cell: Cell, loader: DataLoader, epoch: int, lr: float) -> dict:
    """One pass over the P x K batches; returns the epoch's history row (each loss term's mean)."""
    cell.model.train()
    names, sums, steps = None, None, []
    n_iter, t0 = 0, time.perf_counter()
    left = cell.steps_left()
    total = len(loader) if left is None else min(len(loader), left)
    bar = Progress(total, f"epoch {epoch}/{cell.epochs}")
    for imgs, pids, _, _ in loader:
        if n_iter == total:  # optim.max_steps reached: the cell's last epoch ends here
            break
        step_names, values = forward_backward(cell, imgs, pids)
        names = names or step_names
        n_iter += 1
        sums = values if sums is None else sums + values
        steps.append(values)
        if bar.enabled:  # an interactive bar reads the loss (a host sync); a job's log does not
            bar.update(n_iter, f"loss {float(values[0]):.3f}")
    bar.close()
    # No host sync per step: the terms stay on the device and are checked once per epoch, before the
    # epoch's checkpoint is written (a non-finite term makes the sum non-finite), so weights trained on a
    # NaN are never saved.
    if sums is not None and not bool(torch.isfinite(sums).all()):
        raise_non_finite(cell.cfg, names, steps, epoch, lr)
    seconds = time.perf_counter() - t0
    images = n_iter * cell.cfg.data.p * cell.cfg.data.k  # every batch is full (drop_last)
    cell.epoch = epoch
    cell.train_seconds += seconds
    cell.images_seen += images
    means = (sums / max(n_iter, 1)).tolist() if sums is not None else []
    row = {"epoch": epoch, **dict(zip(names or [], means, strict=True)), "lr": lr,
           "images_per_s": images / max(seconds, 1e-9)}
    cell.history.append(row)
    return row


def raise_non_finite(cfg: RunConfig, names: list[str], steps: list[torch.Tensor], epoch: int, lr: float):
    """The first step of the epoch whose loss terms are not all finite, named with its terms."""
    table = torch.stack(steps).cpu()
    iteration = int((~torch.isfinite(table)).any(1).nonzero()[0, 0]) + 1
    bad = [n for n, v in zip(names, table[iteration - 1].tolist(), strict=True) if not math.isfinite(v)]
    lo = cfg.loss
    raise NonFiniteLossError(
        f"cell {cfg.name!r}: non-finite loss at epoch {epoch}, iteration {iteration}: "
        f"term(s) {', '.join(repr(b) for b in bad)} (lr {lr:g}, loss weights "
        f"lambda1={lo.lambda1:g} lambda2={lo.lambda2:g} lambda3={lo.lambda3:g} "
        f"gamma={lo.gamma:g}); lower optim.lr or check the data")


def forward_backward(cell: Cell, imgs: torch.Tensor, pids: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """One optimiser step on one batch; returns the loss-term names ("loss" first) and their values, on
    the device (reading them is the caller's host sync)."""
    cfg, device = cell.cfg, cell.device
    imgs = imgs.to(device, non_blocking=True, memory_format=cell.memory_format)
    pids = pids.to(device, non_blocking=True)
    with autocast_for(cfg, device):
        outputs = cell.model(imgs)
    total, terms = cell.criterion(outputs, pids)
    names = ["loss", *terms]
    values = torch.stack([total.detach(), *(t.detach() for t in terms.values())]).double()
    cell.optimizer.zero_grad(set_to_none=True)
    cell.scaler.scale(total).backward()
    if cfg.optim.grad_clip:
        cell.scaler.unscale_(cell.optimizer)
        torch.nn.utils.clip_grad_norm_(cell.model.parameters(), cfg.optim.grad_clip)
    cell.scaler.step(cell.optimizer)
    cell.scaler.update()
    return names, values


def end_of_epoch(cell: Cell, tracker: CellTracker, row: dict) -> None:
    """Log the epoch; evaluate every `eval.every` epochs; checkpoint every `checkpoint_every` and at the end."""
    cfg, epoch = cell.cfg, cell.epoch
    log.info("epoch %d/%d  %s", epoch, cell.epochs,
             "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
    tracker.log_metrics(epoch_metrics(row, cfg.loss), step=epoch)  # Train/... (mhsa.run.run_metrics)
    if cfg.eval.every and epoch % cfg.eval.every == 0 and epoch < cell.epochs:
        mid = evaluate_cell(cfg, cell.model, cell.targets, cell.device)
        tracker.log_metrics(eval_metrics(mid, only=("rank1", "mAP")), step=epoch)
    if (cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0) or epoch == cell.epochs:
        save_checkpoint(cell.ckpt_path, checkpoint_state(cell))


# ---------------------------------------------------------------------------- report
def final_report(cell: Cell, tracker: CellTracker, out_dir: Path, env: dict) -> dict:
    """Evaluate on every test set; write attention.npz, metrics.json and config.yaml; mirror to MLflow."""
    cfg, device = cell.cfg, cell.device
    per_query: dict = {}
    results = evaluate_cell(cfg, cell.model, cell.targets, device, per_query)
    first = next(iter(cell.targets.values()))[0]
    att = attention_maps(cfg, cell.model, first, device)
    atomic_write(out_dir / "attention.npz", lambda tmp: _save_npz(tmp, att))
    metrics = {
        "cell": cfg.name,
        "config": cfg.to_dict(),
        "eval": results,
        "train": {"seconds": cell.train_seconds,
                  "images_per_s": cell.images_seen / max(cell.train_seconds, 1e-9),
                  "peak_mem_mb": _peak_memory_mb(device), "epochs": cell.epochs,
                  "steps": cell.images_seen // cell.batch, "device": str(device),
                  "mlflow_run_id": cell.run_id, **env},
        "history": cell.history,
        # what the numbers are averaged over (e.g. queries without a valid match are left out)
        "data": data_counts(cell.train_set, {name: ds for name, (ds, _) in cell.targets.items()}),
        # what each valid query contributes to `eval`: the tables' intervals and paired comparisons
        "per_query": per_query,
    }
    metrics["diagnostics"] = cell_diagnostics(att, metrics, cfg.loss)
    share = attention_share(cfg, cell.model, first, device)
    if share is not None:
        metrics["diagnostics"]["attention_share"] = share
    atomic_write_json(out_dir / "metrics.json", metrics)
    _log_final(tracker, cfg, metrics, out_dir, cell.epochs)
    return metrics


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _log_final(tracker: CellTracker, cfg: RunConfig, metrics: dict, out_dir: Path, epochs: int) -> None:
    save_config(cfg, out_dir / "config.yaml")
    if not tracker.enabled:
        return
    # eval/, diag/ and run/ at the last epoch: the names and steps sync-mlflow replays (mhsa.run.run_metrics)
    tracker.log_metrics(final_metrics(metrics), step=epochs)
    tracker.log_dict(metrics["diagnostics"], DIAGNOSTICS_ARTIFACT)  # per head: entropy, mass, overlap, scores
    for name in ("config.yaml", "metrics.json"):
        tracker.log_artifact(out_dir / name)
