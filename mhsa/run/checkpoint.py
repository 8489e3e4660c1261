"""Checkpoints of one cell: `last.pt` plus the one before it (`prev.pt`), loaded safely.

A save first points `prev.pt` at the current `last.pt` (a hard link, so `last.pt` never goes
missing), then writes the new `last.pt` atomically. A load tries `last.pt`, then `prev.pt`: a
corrupt or truncated file is moved aside to `<name>.corrupt` with a warning naming it (so the
next save does not rotate it into `prev.pt`), and the cell resumes from the previous good one.
With none left it stops with a `CheckpointError` saying how to start over. Loads always use
`weights_only=True` (a checkpoint never runs code).

The checkpoint saved after the last epoch holds the final weights and the training record without
the optimiser state (nothing trains on from it); once the cell's metrics.json is written,
`finalize_checkpoint` removes `prev.pt` (and `last.pt` too, with `keep_weights: false`). Full
state for every cell of the demo took 46 GB (two ResNet-18 + Adam files of 157 MB per cell); the
final weights take 52 MB.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from mhsa.config import RunConfig, config_diff, weights_config
from mhsa.errors import CheckpointError, ResultsError, UserError
from mhsa.io import atomic_write, clean_stale_temps
from mhsa.run.results import read_metrics

log = logging.getLogger("mhsa.run.checkpoint")

_REQUIRED = ("model", "optimizer", "epoch")


class StaleCheckpointError(UserError, ValueError):
    """The checkpoint was trained under another config: resuming it would report the wrong model."""


class StaleResultsError(StaleCheckpointError):
    """The output folder holds a cell finished under another config: a rerun would overwrite it."""


def previous_path(path: str | Path) -> Path:
    """Where the checkpoint before `path` is kept: `prev.pt` beside `last.pt`."""
    path = Path(path)
    return path.with_name("prev.pt") if path.name == "last.pt" else path.with_name(f"{path.stem}.prev{path.suffix}")


def _keep_previous(path: Path) -> None:
    prev = previous_path(path)
    if not path.exists() or (prev.exists() and os.path.samefile(prev, path)):
        return  # already kept (a kill after the last rotation): renaming a link onto itself is a no-op
    link = prev.with_name(f".{prev.name}.{os.getpid()}.link")
    try:
        link.unlink(missing_ok=True)
        os.link(path, link)
        os.replace(link, prev)
    except OSError:  # no hard links on this file system: move it (a kill now leaves prev.pt only)
        os.replace(path, prev)
    finally:
        link.unlink(missing_ok=True)


def _torch_save(state: dict, tmp: str) -> None:
    # Through a Python file object: a full disk then raises OSError(ENOSPC) itself; torch.save to a
    # path wraps it into a RuntimeError without errno ("unexpected pos ..."), and the one line of
    # docs/reliability.md ("Clear errors") could not say what happened.
    with open(tmp, "wb") as fh:
        torch.save(state, fh)


def save_checkpoint(path: str | Path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _keep_previous(path)
    atomic_write(path, lambda tmp: _torch_save(state, tmp))


def finalize_checkpoint(path: str | Path, keep_weights: bool = True) -> None:
    """Remove `prev.pt` of a finished cell, whose `last.pt` (saved after the last epoch) holds the final
    weights only; with `keep_weights=False` remove `last.pt` too (a rerun then trains the cell again)."""
    path = Path(path)
    if not keep_weights:
        path.unlink(missing_ok=True)
    previous_path(path).unlink(missing_ok=True)


def _reason(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if "weights_only" in str(err) or "Unpickl" in type(err).__name__:
        return "it holds objects a checkpoint of this code never contains"
    return f"{type(err).__name__}: {text[:200]}"


def _try_load(path: Path) -> tuple[dict | None, str | None]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, zipfile errors, ...
        return None, _reason(err)
    if not isinstance(state, dict) or any(k not in state for k in _REQUIRED):
        return None, f"it is not a training checkpoint (expected the keys {', '.join(_REQUIRED)})"
    return state, None


def load_checkpoint(path: str | Path) -> dict | None:
    """The newest readable checkpoint among `path` and `previous_path(path)`; None when there is none.

    Raises CheckpointError (naming the files) when checkpoints exist but none can be read.
    """
    path = Path(path)
    bad = []
    for cand in (path, previous_path(path)):
        clean_stale_temps(cand)
        if not cand.exists():
            continue
        state, reason = _try_load(cand)
        if state is None:
            log.warning("checkpoint %s is unreadable (%s)", cand, reason)
            bad.append((cand, reason))
            continue
        for corrupt, _ in bad:  # aside, so the next save does not rotate it into prev.pt
            os.replace(corrupt, corrupt.with_name(corrupt.name + ".corrupt"))
            log.warning("moved %s to %s; resuming from the previous checkpoint %s (epoch %s)",
                        corrupt, corrupt.name + ".corrupt", cand, state.get("epoch"))
        return state
    if bad:
        files = "; ".join(f"{c} ({r})" for c, r in bad)
        raise CheckpointError(f"no usable checkpoint: {files}. To start this cell over, delete the "
                              f"directory {path.parent} and rerun")
    return None


def check_resumable(cfg: RunConfig, state: dict, path: Path) -> None:
    shown = config_diff(state.get("weights_config", {}), weights_config(cfg))
    if shown:
        raise StaleCheckpointError(
            f"checkpoint {path} was trained with another config ({shown}); delete it to start over, "
            "or pass another --out/--ckpt-dir")


def check_finished_run(cfg: RunConfig, out_dir: str | Path) -> None:
    """A rerun into a folder whose metrics.json holds a cell finished under another weight-defining
    config is refused, naming what differs: it would overwrite those results (with `keep_weights:
    false` no checkpoint is left to refuse it later). The same config may rerun there: it resumes
    from the final weights (or retrains, without them) and re-evaluates, e.g. for a new test mode."""
    path = Path(out_dir) / "metrics.json"
    if not path.is_file():
        return
    try:
        saved = weights_config(read_metrics(path).get("config") or {})
    except ResultsError as err:  # nothing of it can be kept: the rerun replaces it
        log.warning("%s; training the cell again replaces it", err)
        return
    shown = config_diff(saved, weights_config(cfg))
    if shown:
        raise StaleResultsError(
            f"{path} holds a cell finished with another config ({shown}); a rerun there would overwrite "
            f"it: pass another --out, or delete {path} to train this config in {path.parent}")
