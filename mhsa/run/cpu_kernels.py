"""Pinning the instruction set of the CPU kernels, so that a CPU run repeats bit for bit on other machines.

A CPU run repeats bit for bit on one machine. On another x86-64 machine it need not: convolutions,
matrix products and vectorised element-wise ops are dispatched at run time to kernels for the CPU's
widest vector extension (SSE, AVX2, AVX-512), which round differently, and training amplifies the last
bits into whole Rank-1 points. Each library that dispatches reads one environment variable, once,
when it is first used, so the pin is a set of variables exported before torch (or NumPy) is imported:

| library | variable | `portable` | `avx2` |
|---|---|---|---|
| ATen (torch's own kernels) | `ATEN_CPU_CAPABILITY` | `default` (no vector extension) | `avx2` |
| oneDNN (convolutions) | `ONEDNN_MAX_CPU_ISA` | `SSE41` | `AVX2` |
| MKL (matrix products) | `MKL_CBWR` | `COMPATIBLE` | `COMPATIBLE` |
| NumPy (evaluation, diagnostics) | `NPY_DISABLE_CPU_FEATURES` | all but the x86-64-v2 baseline | AVX-512 |

`portable` gives the same bytes on every x86-64 CPU; `avx2` on every x86-64 CPU with AVX2 (Intel since
2013, AMD since 2015), at a fraction of the cost (benchmarks/README.md "CPU kernels": oneDNN's SSE4.1
convolutions are what makes `portable` slow). Both take MKL's COMPATIBLE branch, the one MKL documents
as reproducing across Intel and AMD CPUs (its AVX2 branch is documented for Intel CPUs only, and on an
AMD EPYC here it gives other bytes than MKL's own choice there). `native` (the default) sets nothing. The number of
threads must match too (MKL and reductions split work by thread). docs/reliability.md "Across machines"
says what is promised; GPU results are never bit-identical across GPU models, pinned or not. NumPy's BLAS
(OpenBLAS, used by the diagnostics only) follows `OPENBLAS_CORETYPE`, which the pin leaves to the user.

`pin(level)` exports the variables (the CLI and the Snakefile call it before anything imports torch);
`check(level)` verifies, once torch is imported, that its kernels really run at the pinned level.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata

from mhsa.errors import ConfigError
from mhsa.switches import CPU_KERNEL_LEVELS as LEVELS

# NumPy >= 2.4 names its dispatch targets by x86-64 level; older releases by single extension
# (an unknown name is ignored by NumPy, so each release gets the names it knows).
_NUMPY_DISABLE = {
    "portable": ("X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
                 "AVX AVX2 FMA3 F16C AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL "
                 "AVX512_ICL AVX512_SPR"),
    "avx2": ("X86_V4 AVX512_ICL AVX512_SPR",
             "AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"),
}
_PINS = {
    "portable": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"},
}
# what torch.backends.cpu.get_cpu_capability() reports under each pin
_ATEN_REPORTS = {"portable": "DEFAULT", "avx2": "AVX2"}
ENV_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "NPY_DISABLE_CPU_FEATURES")


def _numpy_is_grouped() -> bool:
    try:
        major, minor = (int(x) for x in metadata.version("numpy").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return True
    return (major, minor) >= (2, 4)


def pin_env(level: str) -> dict[str, str]:
    """The environment variables that pin `level` ({} for native)."""
    if level not in LEVELS:
        raise ConfigError(f"config key 'cpu_kernels': must be one of {'|'.join(LEVELS)}, got {level!r}")
    if level == "native":
        return {}
    grouped, legacy = _NUMPY_DISABLE[level]
    return {**_PINS[level], "NPY_DISABLE_CPU_FEATURES": grouped if _numpy_is_grouped() else legacy}


def pin(level: str) -> dict[str, str]:
    """Export the variables of `level` into this process's environment, overriding what was there, and
    return them. Call it before torch or NumPy is imported: they read the variables once."""
    env = pin_env(level)
    late = [m for m in ("torch", "numpy") if m in sys.modules]
    if late and any(os.environ.get(k) != v for k, v in env.items()):
        raise ConfigError(f"config key 'cpu_kernels' is {level!r}, but {' and '.join(late)} were imported "
                          "before the pin was set: set it first (python -m mhsa train and the workflow "
                          "do), or export " + " ".join(f"{k}={v!r}" for k, v in env.items()))
    os.environ.update(env)
    return env


def check(level: str) -> None:
    """After torch is imported: its kernels run at the pinned level, else a one-line ConfigError."""
    env = pin_env(level)
    if not env:
        return
    import torch

    missing = [f"{k}={os.environ.get(k)!r} (pin: {v!r})" for k, v in env.items() if os.environ.get(k) != v]
    got = torch.backends.cpu.get_cpu_capability()
    if missing or got != _ATEN_REPORTS[level]:
        why = ("its environment differs: " + ", ".join(missing)) if missing else \
            f"torch's kernels run at {got} (this CPU may lack the instruction set)"
        raise ConfigError(f"config key 'cpu_kernels' is {level!r}, but {why}; the pin must be exported before "
                          "torch is imported (python -m mhsa train and the workflow do), or set cpu_kernels: native")


def describe(level: str) -> dict[str, str]:
    """What ran, for metrics.json and MLflow: the requested level and torch's kernel capability."""
    import torch

    return {"cpu_kernels": level, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
