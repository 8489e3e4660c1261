"""The training device and its precision: one place for what a cell runs on and in which number format.

* `pick_device(name)`: the `device` key -> torch.device; a device this machine cannot use is a one-line
  `DeviceError` (the paper preset says `device: cuda`, so a missing GPU never means silent CPU training).
* `check_amp(amp, device)`: `amp: bf16` on a GPU without bf16 units (before Ampere, e.g. the paper's
  GeForce 2080 Ti) is refused naming `amp`: torch would emulate it (`is_bf16_supported()` says True there),
  slowly and at a memory cost that fails late. `amp` is part of a cell's identity, so it is not changed
  behind the user's back. The GPU check (benchmarks/gpu_check.py) uses the same function.
* `configure_cuda(amp)`: cuDNN autotuning (every training batch has one shape) and, for `amp: off`, true
  fp32 (no TF32 in convolutions and matmuls, which Ampere+ would otherwise use).
* `autocast_for(cfg, device)`: the training forward's autocast; evaluation always runs in fp32.
* `use_channels_last(cfg, device, height, width)`: channels_last where it was measured faster: always on
  CUDA, on CPU from `CPU_CHANNELS_LAST_MIN_PIXELS` input pixels (benchmarks/README.md "Paper scale").

Nothing here touches CUDA at import (the warm worker imports this module before it forks).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from mhsa.errors import DeviceError

# channels_last on the CPU, measured side by side (benchmarks/README.md "Paper scale", channels_last):
# ResNet-50 at 384x128 1.3x faster, ResNet-18 at the demo's 80x32 and the ci's 64x32 no faster. The
# threshold lies between the sizes measured, so the demo and ci presets keep NCHW (and their numbers).
CPU_CHANNELS_LAST_MIN_PIXELS = 128 * 64


def pick_device(name: str) -> torch.device:
    """The `device` config key -> torch.device; a device this machine cannot use is a DeviceError."""
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


def check_amp(amp: str, device: torch.device) -> None:
    """`amp: bf16` needs a GPU with bf16 units (compute capability 8.0+); else a one-line DeviceError."""
    if device.type != "cuda" or amp != "bf16":
        return
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return
    major, minor = torch.cuda.get_device_capability(device)
    raise DeviceError(
        f"config key 'amp' is 'bf16' but {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) "
        "has no bf16 units (8.0, Ampere, and later have): torch would emulate bf16, slowly and likely out of "
        "memory at the paper's batch; set amp: fp16 (loss-scaled, as the paper's 2080 Ti GPUs ran) or amp: 'off' "
        "(fp32). amp is part of a cell's identity: such cells are trained anew")


def configure_cuda(amp: str) -> None:
    """cuDNN picks the fastest algorithm for the (fixed) training shape; `amp: off` means fp32, not TF32."""
    torch.backends.cudnn.benchmark = True
    if amp == "off":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The training forward's autocast dtype: bf16/fp16 on CUDA, none on the CPU (fp32) or with `off`."""
    if device.type != "cuda" or amp == "off":
        return None
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast_for(cfg, device: torch.device):
    dtype = amp_dtype(cfg.amp, device)
    return nullcontext() if dtype is None else torch.autocast("cuda", dtype=dtype)


def use_channels_last(cfg, device: torch.device) -> bool:
    """channels_last (`channels_last: true`) where measured faster: CUDA, or a CPU input of at least
    CPU_CHANNELS_LAST_MIN_PIXELS pixels."""
    if not cfg.channels_last:
        return False
    return device.type == "cuda" or cfg.data.height * cfg.data.width >= CPU_CHANNELS_LAST_MIN_PIXELS
