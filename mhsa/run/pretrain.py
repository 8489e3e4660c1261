"""A pretrained start of our own: a ResNet trained once to classify many synthetic identities.

The paper fine-tunes an ImageNet-pretrained ResNet-50; no ImageNet weights can be downloaded here, and a
backbone trained from scratch in a few epochs has no parts for the attention heads to choose between
(docs/demo-study.md). `pretrain` trains a torchvision ResNet (last stride 1, as the model uses it) to
tell apart the identities of a large, unoccluded synthetic Market-1501-style set, then writes its state
dict without the classifier: a file the model loads through `model.pretrained: <path>` like any
torchvision weights. The workflow runs it once per preset that has a `pretrain:` section (a rule whose
output every cell reads, so cells retrain when it changes).

Deterministic: the seed fixes the data, the initial weights, the order of the images and the flips.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mhsa.config import PretrainSpec
from mhsa.data import datasets
from mhsa.data.batch_transforms import flip_batch, normalize
from mhsa.data.cache import DecodedCache
from mhsa.data.synthetic import generate
from mhsa.io import atomic_write, atomic_write_json
from mhsa.model.backbone import RESNETS, set_last_stride

log = logging.getLogger("mhsa.run.pretrain")
LAYOUT = "market1501"  # holistic people: the heads' parts, with nothing in front of them


def network(spec: PretrainSpec, num_classes: int) -> nn.Module:
    """torchvision's ResNet with the model's last stride (1) and a classifier over the identities."""
    constructor, _, channels = RESNETS[spec.backbone]
    torch.manual_seed(spec.seed)
    resnet = constructor(weights=None)
    set_last_stride(resnet, 1)
    resnet.fc = nn.Linear(channels, num_classes)
    return resnet


def pretrain(spec: PretrainSpec, data_root: str | Path, out: str | Path, cache_dir: str | Path,
             threads: int = 1) -> dict:
    """Train `spec` on a synthetic set generated at `data_root`; write the backbone's state dict to `out`
    (atomically) and its record to `out` with suffix .json; returns the record."""
    t0 = time.time()
    torch.set_num_threads(max(1, threads))
    root = generate(data_root, LAYOUT, seed=10_000 + spec.seed, num_ids=spec.identities,
                    images_per_id=spec.images_per_id, height=spec.height, width=spec.width)
    ds = datasets.load(LAYOUT, root)
    images = DecodedCache.open_or_build(ds.train, spec.height, spec.width, cache_dir,
                                        {"dataset": f"pretrain-{LAYOUT}", "root": str(root), "split": "train"},
                                        threads=threads)
    labels = torch.tensor([pid for _, pid, _ in ds.train])
    model = network(spec, ds.num_train_pids).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(spec.seed)
    history = []
    for epoch in range(1, spec.epochs + 1):
        for group in optimizer.param_groups:  # the last third at a tenth of the rate
            group["lr"] = spec.lr * (0.1 if epoch > spec.epochs * 2 // 3 else 1.0)
        history.append(_epoch(model, optimizer, images, labels, spec.batch, gen, epoch))
        log.info("pretrain epoch %d/%d: loss %.3f, accuracy %.1f %%, %.0f images/s", epoch, spec.epochs,
                 history[-1]["loss"], history[-1]["accuracy"], history[-1]["images_per_s"])
        if not np.isfinite(history[-1]["loss"]):
            raise FloatingPointError(f"pretraining loss became {history[-1]['loss']} at epoch {epoch}")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    atomic_write(out, lambda tmp: torch.save(state, tmp))
    record = {"spec": asdict(spec), "identities": ds.num_train_pids, "images": len(ds.train),
              "seconds": time.time() - t0, "history": history}
    atomic_write_json(Path(out).with_suffix(".json"), record)
    return record


def _epoch(model, optimizer, images: DecodedCache, labels: torch.Tensor, batch: int, gen: torch.Generator,
           epoch: int) -> dict:
    order = torch.randperm(len(labels), generator=gen)
    t0, seen, correct, total = time.time(), 0, 0, 0.0
    for start in range(0, len(order) - batch + 1, batch):  # whole batches: BatchNorm needs > 1 image
        idx = order[start:start + batch]
        x = normalize(flip_batch(images.batch(idx.numpy()), torch.rand(len(idx), generator=gen) < 0.5))
        logits = model(x)
        loss = F.cross_entropy(logits, labels[idx], label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(idx)
        total += loss.item() * len(idx)
        correct += int((logits.argmax(1) == labels[idx]).sum())
    seconds = time.time() - t0
    return {"epoch": epoch, "loss": total / max(seen, 1), "accuracy": 100.0 * correct / max(seen, 1),
            "images_per_s": seen / max(seconds, 1e-9)}
