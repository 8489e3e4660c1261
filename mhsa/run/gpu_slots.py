"""One GPU per local Snakemake job.

``snakemake --resources gpu=N`` caps how many GPU jobs run at once but does not say *which*
GPU each job gets. :func:`gpu_slot` picks one: every job takes the first free slot ``i`` by an
exclusive, non-blocking ``fcntl.flock`` on ``<lock_dir>/gpu<i>.lock`` and sets
``CUDA_VISIBLE_DEVICES=i`` for its lifetime. The lock belongs to the open file description,
so the OS drops it when the process exits or is killed: a crashed job never leaks its GPU.

Left alone: a process that already has ``CUDA_VISIBLE_DEVICES`` set, and jobs whose GPUs were
assigned by a cluster scheduler (``SLURM_JOB_GPUS`` / ``SLURM_STEP_GPUS``).

Call it before CUDA is initialised in the process (``torch.cuda.device_count()`` uses NVML and
does not initialise CUDA, so counting the GPUs first is fine).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from mhsa.io import try_hold

SCHEDULER_VARS = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS")
DEFAULT_LOCK_DIR = Path("results") / ".gpu_locks"


class GpuSlotTimeout(TimeoutError):
    """Every slot stayed busy for longer than the timeout."""


def _device_count() -> int:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0
    return int(torch.cuda.device_count())


@contextlib.contextmanager
def gpu_slot(
    n_slots: int | None = None,
    lock_dir: str | os.PathLike | None = None,
    timeout: float = 24 * 3600.0,
    poll: float = 1.0,
) -> Iterator[str | None]:
    """Hold one GPU slot for the duration of the ``with`` block.

    Yields the value of ``CUDA_VISIBLE_DEVICES`` in effect (the slot index as a string when a
    slot was taken; the existing value when the environment or the scheduler already chose),
    or ``None`` when there is no GPU (``n_slots`` is None and torch sees no CUDA device).

    n_slots: how many slots to share (default: the number of visible GPUs).
    lock_dir: where the ``gpu<i>.lock`` files live (default ``results/.gpu_locks``); must be
        on a local file system shared by the jobs of one machine.
    timeout: seconds to wait for a free slot before raising :class:`GpuSlotTimeout`.
    poll: seconds between attempts while all slots are busy.
    """
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        yield os.environ["CUDA_VISIBLE_DEVICES"]
        return
    if any(os.environ.get(var) for var in SCHEDULER_VARS):
        yield os.environ.get("CUDA_VISIBLE_DEVICES")
        return
    if n_slots is None:
        n_slots = _device_count()
        if n_slots == 0:
            yield None
            return
    if n_slots < 1:
        raise ValueError(f"n_slots must be >= 1, got {n_slots}")

    lock_dir = Path(lock_dir) if lock_dir is not None else DEFAULT_LOCK_DIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    held = slot = None
    while held is None:
        for i in range(n_slots):
            held = try_hold(lock_dir / f"gpu{i}.lock")
            if held is not None:
                slot = i
                break
        else:
            if time.monotonic() >= deadline:
                raise GpuSlotTimeout(
                    f"all {n_slots} GPU slot(s) in {lock_dir} stayed busy for {timeout:g} s; "
                    "is another workflow using the same GPUs? Lower `--resources gpu=` or raise "
                    "`workflow.gpu_wait_s` in config.yaml"
                )
            time.sleep(min(poll, max(deadline - time.monotonic(), 0.0)))

    os.environ["CUDA_VISIBLE_DEVICES"] = str(slot)
    try:
        yield str(slot)
    finally:
        if os.environ.get("CUDA_VISIBLE_DEVICES") == str(slot):
            del os.environ["CUDA_VISIBLE_DEVICES"]
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
        held.close()
