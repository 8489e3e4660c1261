"""The run config of one ablation cell: nested dataclasses loaded from YAML and validated.

Defaults are the paper's recipe (Sec. VII-B) and its full MHSA-Net (K=8, lambda1=1e-4,
lambda2=1, lambda3=1e-3, gamma=1e-3). An unknown key or an out-of-range value is a
`ConfigError` naming the dotted key, raised before any training starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from mhsa.errors import UserError


class ConfigError(UserError, ValueError):
    """A bad run-config key or value; the message names the dotted key."""


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    pretrained: Any = "imagenet"  # False | "imagenet" | path to a local state-dict file
    num_heads: int = 8  # K
    mhsam: bool = True  # False: the Baseline (backbone + Global Feature Branch)
    fusion: str = "saffm"  # saffm | concat | sum (Table VIII)
    residual: bool = True  # False: "w/o RLM" (Table VIII)
    last_stride: int = 1
    attention_layers: int = 2  # 3: the authors' public code
    feat_dim: int = 512


@dataclass
class LossConfig:
    lambda1: float = 1e-4  # FDRT (Eq. 11)
    lambda2: float = 1.0  # IHTL (Eq. 11)
    lambda3: float = 1e-3  # competition L_C (Eq. 13)
    gamma: float = 1e-3  # L_C threshold (Eq. 12)
    global_ce: bool = True  # False: MHSA-Net† (no L_CE on the GFB)
    label_smoothing: float = 0.0  # authors' code: 0.1
    fdrt_norm: str = "l1"  # l1 (Eq. 3) | fro (authors' code)
    competition_form: str = "paper"  # paper (Eq. 12) | code (sum of alpha < 0.01, unsquared)
    ihtl_self_positive: bool = False  # True: authors' code (anchor's own heads are positives)


@dataclass
class DataConfig:
    dataset: str = "market1501"
    root: str = "data/Market-1501-v15.09.15"
    synthetic: dict | None = None  # generator params: the data set is generated at `root` if absent
    height: int = 384
    width: int = 128
    p: int = 32  # identities per batch
    k: int = 4  # images per identity
    flip: bool = True
    random_erasing: float = 0.0  # authors' code used Cutout: an extra, off by default
    pad: int = 0
    workers: int = 4
    test_batch: int = 128


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | sgd
    lr: float = 1e-3
    weight_decay: float = 5e-4
    momentum: float = 0.9  # sgd only
    warmup_epochs: int = 50
    warmup_factor: float = 0.01  # lr starts at lr * warmup_factor and rises linearly
    milestones: list = field(default_factory=lambda: [200, 300])
    decay: float = 0.1
    epochs: int = 400
    freeze_attention_mlp: bool = False  # True reproduces the authors' optimizer bug
    grad_clip: float = 0.0


@dataclass
class EvalConfig:
    # test set -> {"root": path, "modes": [...]}; empty: the training set in its default modes
    targets: dict = field(default_factory=dict)
    every: int = 0  # also evaluate every N epochs (0: at the end only)
    rerank_k1: int = 20
    rerank_k2: int = 6
    rerank_lambda: float = 0.3
    attention_images: int = 6  # query images whose attention maps are saved


@dataclass
class TrackingConfig:
    enabled: bool = True
    experiment: str = "mhsa"
    tags: dict = field(default_factory=dict)


@dataclass
class RunConfig:
    name: str = "cell"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "bf16"  # bf16 | fp16 | off (CUDA only; CPU runs in fp32)
    channels_last: bool = True  # CUDA only
    threads: int = 0  # torch CPU threads (0: leave torch's default)
    checkpoint_every: int = 10
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """YAML and --set give strings for '1e-4' and 'true': coerce to the field's type."""
    name = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    if name == "float":
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key {key!r}: expected a number, got {value!r}") from None
    if name == "int":
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}") from None
    if name == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected true/false, got {value!r}")
        return value
    if name == "str":
        return str(value)
    if name == "list" or str(typ).startswith("list"):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        return value
    if "dict" in str(typ):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
        return value
    if isinstance(value, str) and key.endswith("pretrained"):
        return {"false": False, "true": "imagenet"}.get(value.lower(), value)
    return value


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'!r}: expected a mapping, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key(s) {[prefix + u for u in unknown]}; "
                          f"known keys under {prefix.rstrip('.') or 'the top level'}: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, f.type, prefix + name)
    return cls(**kwargs)


def _check(key: str, ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key!r}: {msg}")


def validate(cfg: RunConfig) -> RunConfig:
    m, lo, d, o = cfg.model, cfg.loss, cfg.data, cfg.optim
    _check("model.num_heads", m.num_heads >= 1, f"K must be >= 1, got {m.num_heads}")
    _check("model.fusion", m.fusion in ("saffm", "concat", "sum"), f"must be saffm|concat|sum, got {m.fusion!r}")
    _check("model.backbone", m.backbone in ("resnet50", "resnet34", "resnet18"),
           f"must be resnet50|resnet34|resnet18, got {m.backbone!r}")
    _check("model.attention_layers", m.attention_layers in (2, 3), f"must be 2 or 3, got {m.attention_layers}")
    for key in ("lambda1", "lambda2", "lambda3", "label_smoothing"):
        _check(f"loss.{key}", getattr(lo, key) >= 0, f"must be >= 0, got {getattr(lo, key)}")
    _check("loss.gamma", lo.gamma > 0, f"gamma must be > 0, got {lo.gamma}")
    _check("loss.fdrt_norm", lo.fdrt_norm in ("l1", "fro"), f"must be l1|fro, got {lo.fdrt_norm!r}")
    _check("loss.competition_form", lo.competition_form in ("paper", "code"),
           f"must be paper|code, got {lo.competition_form!r}")
    _check("data.p", d.p >= 2, f"a batch needs >= 2 identities for the triplet losses, got {d.p}")
    _check("data.k", d.k >= 2, f"a batch needs >= 2 images per identity for the triplet losses, got {d.k}")
    _check("data.height", d.height >= 16 and d.width >= 16, f"input {d.height}x{d.width} is too small")
    _check("data.random_erasing", 0 <= d.random_erasing <= 1, f"a probability, got {d.random_erasing}")
    _check("optim.name", o.name in ("adam", "sgd"), f"must be adam|sgd, got {o.name!r}")
    _check("optim.lr", o.lr > 0, f"must be > 0, got {o.lr}")
    _check("optim.epochs", o.epochs >= 1, f"must be >= 1, got {o.epochs}")
    _check("optim.warmup_epochs", 0 <= o.warmup_epochs <= o.epochs, f"must be in [0, epochs], got {o.warmup_epochs}")
    _check("optim.milestones", list(o.milestones) == sorted(o.milestones), f"must increase, got {o.milestones}")
    _check("amp", cfg.amp in ("bf16", "fp16", "off"), f"must be bf16|fp16|off, got {cfg.amp!r}")
    _check("checkpoint_every", cfg.checkpoint_every >= 0, f"must be >= 0, got {cfg.checkpoint_every}")
    for name, target in cfg.eval.targets.items():
        _check(f"eval.targets.{name}", isinstance(target, dict) and "root" in target,
               "each target needs a `root` (and optional `modes`)")
    return cfg


def _split_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set loss.lambda1=1e-4")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "targets":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def build_run_config(recipe: dict | None = None, overrides: dict | None = None,
                     dotted: list[str] | None = None) -> RunConfig:
    """Merge `overrides` (a cell's own knobs) over `recipe` (shared), apply `key=value` items."""
    data = _deep_merge(recipe or {}, overrides or {})
    for item in dotted or []:
        keys, value = _split_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return validate(_build(RunConfig, data, ""))


def load_config(path: str | Path, dotted: list[str] | None = None) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"run config file {str(path)!r} does not exist")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    try:
        return build_run_config(data, None, dotted)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


# What defines the trained weights. Everything else (device, threads, workers, batch size at test
# time, checkpoint cadence, evaluation, tracking, where the data lives) may change without
# invalidating a checkpoint.
_RUNTIME_KEYS = {"name", "device", "threads", "checkpoint_every", "channels_last", "eval", "tracking",
                 "data.root", "data.workers", "data.test_batch"}


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1} (empty sections stay as values)."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def weights_config(cfg: RunConfig) -> dict[str, str]:
    """The part of the config that determines the trained weights: dotted keys -> values as strings
    (the form a checkpoint stores and compares, and the digest hashes)."""
    flat = flatten(cfg.to_dict())
    return {k: str(v) for k, v in sorted(flat.items())
            if k not in _RUNTIME_KEYS and k.split(".")[0] not in _RUNTIME_KEYS}


def weights_digest(cfg: RunConfig) -> str:
    import hashlib
    import json

    return hashlib.sha1(json.dumps(weights_config(cfg), sort_keys=True).encode()).hexdigest()[:10]


def save_config(cfg: RunConfig, path: str | Path) -> None:
    from mhsa.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
