"""One GPU per local Snakemake job, or a clear error: never silent CPU training.

``snakemake --resources gpu=N`` caps how many GPU jobs run at once but does not say *which* GPU each
job gets. :func:`gpu_slot` picks one (the rules are those of docs/workflow.md "Real data and GPUs"):

* **Which devices.** ``CUDA_VISIBLE_DEVICES`` with one entry: the environment (a scheduler, the user)
  chose; it is left alone. Empty (or ``-1``): no GPU. Several entries (an ``salloc --gpus=2`` shell, an
  ``export CUDA_VISIBLE_DEVICES=0,1``): the slots go over the listed devices. Unset inside a scheduler
  job that was given GPUs (``SLURM_JOB_GPUS`` / ``SLURM_STEP_GPUS``): left alone. Unset otherwise: the
  machine's GPUs, counted **without initialising CUDA** (NVML, else ``/proc/driver/nvidia/gpus``): CUDA
  initialised before ``CUDA_VISIBLE_DEVICES`` is set would ignore the setting and put every job on
  physical GPU 0, and would poison a fork. A driver whose GPUs cannot be counted that way is an error
  naming ``workflow.gpu_slots``.
* **Which slot.** ``n_slots`` (``workflow.gpu_slots``, default: one per device); slot ``i`` is device
  ``devices[i % n]``, so more slots than devices share them, never name a device that does not exist.
  A job takes the first free slot by an exclusive, non-blocking ``flock`` on
  ``<lock_dir>/gpu<device>[.<share>].lock`` and sets ``CUDA_VISIBLE_DEVICES`` to that device for its
  lifetime (restored afterwards). The OS drops the lock when the process exits or is killed.
* **Whose locks.** The lock directory belongs to the machine and the user, not to a study: two studies
  (``results/paper``, ``results/sanity``) on one machine share the slots (``$XDG_RUNTIME_DIR/mhsa/gpu-locks``,
  else ``/tmp/mhsa-<uid>/gpu-locks``; inside a scheduler allocation a sub-folder per job id, since an
  allocation numbers its GPUs from 0).
* **A slot means a GPU.** The yielded :class:`Slot` says whether this function assigned the device
  (``assigned``); the job then requires CUDA (:func:`check_assigned_gpu`), so a missing device or a
  driver fault is a one-line error, never a cell trained on the CPU.

Importing this module and taking a slot never touch CUDA (the warm worker forks after importing it).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from mhsa.errors import ConfigError, DeviceError
from mhsa.io import try_hold

SCHEDULER_VARS = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS")
NVIDIA_PROC = Path("/proc/driver/nvidia")
NVIDIA_DEV = Path("/dev/nvidia0")


class GpuSlotTimeout(TimeoutError):
    """Every slot stayed busy for longer than the timeout."""


class GpuCountError(ConfigError):
    """An NVIDIA driver is present but its GPUs cannot be counted without initialising CUDA."""


class Slot(str):
    """The value of ``CUDA_VISIBLE_DEVICES`` in effect; ``assigned``: this job's slot chose it (so the job
    must find a GPU), rather than the environment or a scheduler."""

    assigned: bool = False

    def __new__(cls, value: str, assigned: bool = False):
        obj = super().__new__(cls, value)
        obj.assigned = assigned
        return obj


# ------------------------------------------------------------------------------- counting
def _nvml_count() -> int | None:
    """GPUs as NVML counts them (the driver's management library: no CUDA context), None if NVML fails."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    if nvml.nvmlInit_v2() != 0:
        return None
    try:
        count = ctypes.c_uint(0)
        return int(count.value) if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0 else None
    finally:
        nvml.nvmlShutdown()


def _proc_count() -> int | None:
    """GPUs listed by the NVIDIA kernel driver (one folder per PCI device), None without the driver."""
    gpus = NVIDIA_PROC / "gpus"
    return len(list(gpus.iterdir())) if gpus.is_dir() else None


def count_gpus() -> int | None:
    """The machine's GPUs counted without initialising CUDA: 0 when there is no NVIDIA driver, None when a
    driver is there but neither NVML nor /proc can count (then `torch.cuda.device_count()` would initialise
    CUDA before the slot is set)."""
    for count in (_nvml_count(), _proc_count()):
        if count is not None:
            return count
    return None if (NVIDIA_PROC.exists() or NVIDIA_DEV.exists()) else 0


# ------------------------------------------------------------------------------- locks
def _check_private(path: Path) -> None:
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise DeviceError(f"GPU lock folder {path} must be a directory of uid {os.getuid()} that others cannot "
                          f"write (it is uid {st.st_uid}, mode {oct(st.st_mode & 0o777)}): remove it, or set "
                          "XDG_RUNTIME_DIR to a private directory")


def default_lock_dir() -> Path:
    """This user's GPU locks on this machine, whatever the study: `$XDG_RUNTIME_DIR/mhsa/gpu-locks`, else
    `/tmp/mhsa-<uid>/gpu-locks` (not `$TMPDIR`, which differs between shells and scheduler jobs); inside
    a scheduler allocation a sub-folder per job id (an allocation numbers its own GPUs from 0)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "mhsa" if runtime and os.path.isdir(runtime) else Path("/tmp") / f"mhsa-{os.getuid()}"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(base)
    path = base / "gpu-locks"
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        path = path / f"slurm-{job}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _lock_name(device: str, share: int) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in device)
    return f"gpu{safe}.lock" if share == 0 else f"gpu{safe}.{share}.lock"


def _listed(value: str) -> list[str]:
    return [d.strip() for d in value.split(",") if d.strip()]


def devices_and_slots(n_slots: int | None) -> tuple[list[str] | None, int]:
    """(devices the slots go over, number of slots), or (None, 0) when the job is left alone (the
    environment or a scheduler chose, or there is no GPU)."""
    if n_slots is not None and n_slots < 1:
        raise ValueError(f"n_slots must be >= 1, got {n_slots}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = _listed(visible)
        if len(devices) <= 1 or devices[0] == "-1":  # one device chosen, or none
            return None, 0
    elif any(os.environ.get(var) for var in SCHEDULER_VARS):
        return None, 0
    else:
        count = count_gpus()
        if count is None and n_slots is None:
            raise GpuCountError(
                "an NVIDIA driver is present but its GPUs cannot be counted without initialising CUDA (NVML "
                "and /proc/driver/nvidia/gpus unavailable); set workflow.gpu_slots in config.yaml to the number "
                "of GPUs (or export CUDA_VISIBLE_DEVICES=0,1,...)")
        if not count:
            if n_slots is None:
                return None, 0
            count = n_slots  # slots given where no GPU could be seen: the job will say it found none
        devices = [str(i) for i in range(count)]
    return devices, n_slots or len(devices)


@contextlib.contextmanager
def gpu_slot(
    n_slots: int | None = None,
    lock_dir: str | os.PathLike | None = None,
    timeout: float = 24 * 3600.0,
    poll: float = 1.0,
) -> Iterator[Slot | None]:
    """Hold one GPU slot for the duration of the ``with`` block.

    Yields the :class:`Slot` in effect (``assigned`` when this call chose the device), the environment's
    own ``CUDA_VISIBLE_DEVICES`` when it names one device or a scheduler chose, or ``None`` when there is
    no GPU. n_slots: ``workflow.gpu_slots`` (default: one per device); lock_dir: default
    :func:`default_lock_dir`; timeout: seconds to wait for a free slot (then :class:`GpuSlotTimeout`).
    """
    devices, n = devices_and_slots(n_slots)
    if devices is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        yield None if visible is None or not _listed(visible) or _listed(visible)[0] == "-1" else Slot(visible)
        return

    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    held = device = None
    while held is None:
        for i in range(n):
            held = try_hold(lock_dir / _lock_name(devices[i % len(devices)], i // len(devices)))
            if held is not None:
                device = devices[i % len(devices)]
                break
        else:
            if time.monotonic() >= deadline:
                raise GpuSlotTimeout(
                    f"all {n} GPU slot(s) in {lock_dir} stayed busy for {timeout:g} s; "
                    "is another workflow using the same GPUs? Lower `--resources gpu=` or raise "
                    "`workflow.gpu_wait_s` in config.yaml"
                )
            time.sleep(min(poll, max(deadline - time.monotonic(), 0.0)))

    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    try:
        yield Slot(device, assigned=True)
    finally:
        if os.environ.get("CUDA_VISIBLE_DEVICES") == device:
            if before is None:
                del os.environ["CUDA_VISIBLE_DEVICES"]
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = before
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
        held.close()


def check_assigned_gpu(slot: Slot | None) -> None:
    """In the job, once its slot is set: a slot this job was assigned must be a GPU torch can use. A slot
    beyond the machine's GPUs or a driver fault is a DeviceError, not a cell trained on the CPU."""
    if slot is None or not slot.assigned:
        return
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
        raise DeviceError(
            f"this job was given GPU slot CUDA_VISIBLE_DEVICES={slot} but torch sees no CUDA device there "
            "(a slot beyond the machine's GPUs, or a driver fault; `nvidia-smi` shows which); set "
            "workflow.gpu_slots to at most the number of GPUs, or `device: cpu` in the recipe to train on the CPU")
