"""The run config of one ablation cell: nested dataclasses loaded from YAML and validated.

Defaults are the paper's recipe (Sec. VII-B) and its full MHSA-Net (K=8, lambda1=1e-4,
lambda2=1, lambda3=1e-3, gamma=1e-3). An unknown key or an out-of-range value is a
`ConfigError` naming the dotted key, raised before any training starts.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from mhsa.errors import ConfigError
from mhsa.evaluation.modes import RERANK_DEFAULTS, parse_mode
from mhsa.io import load_file, load_text
from mhsa.switches import (
    ATTENTION_LAYERS,
    ATTENTION_MLPS,
    ATTENTION_SOFTMAXES,
    BACKBONES,
    BOUNDS,
    COMPETITION_CODE_THRESHOLD,
    COMPETITION_FORMS,
    COMPETITION_REDUCTIONS,
    CPU_KERNEL_LEVELS,
    CUTOUT_SIDE,
    DEFAULT_GAMMA,
    DISTANCES,
    ERASINGS,
    FDRT_FORMS,
    FDRT_NORMS,
    FUSIONS,
    INITS,
    LAST_STRIDES,
    LOSS_WEIGHTS,
    MILESTONE_EPOCHS,
    PARAM_SETS,
    RERANK_INPUTS,
    SAFFM_FORMS,
    SAMPLERS,
    SWITCHES,
    WARMUPS,
    Range,
    feature_map_size,
)

__all__ = ["ConfigError", "RunConfig", "build_run_config", "load_run_config", "validate", "AMP_MODES", "OPTIMIZERS"]

AMP_MODES = ("bf16", "fp16", "off")  # CUDA autocast dtype, or none
OPTIMIZERS = ("adam", "sgd")


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    pretrained: Any = "imagenet"  # False | "imagenet" | path to a local state-dict file
    num_heads: int = 8  # K
    # the model switches default to build_model's (the paper's full MHSA-Net)
    mhsam: bool = SWITCHES["mhsam"]  # False: the Baseline (backbone + Global Feature Branch)
    fusion: str = SWITCHES["fusion"]  # saffm | concat | sum (Table VIII)
    residual: bool = SWITCHES["residual"]  # False: "w/o RLM" (Table VIII)
    last_stride: int = SWITCHES["last_stride"]
    attention_layers: int = SWITCHES["attention_layers"]  # 3: one more 512->512 layer (see attention_mlp)
    feat_dim: int = SWITCHES["feat_dim"]
    # --- the authors' code as a second reading (docs/paper-to-code.md "Two readings"); defaults: the paper's text
    attention_softmax: str = SWITCHES["attention_softmax"]
    attention_mlp: str = SWITCHES["attention_mlp"]
    saffm_form: str = SWITCHES["saffm_form"]
    z_layernorm: bool = SWITCHES["z_layernorm"]
    extra_bottleneck: bool = SWITCHES["extra_bottleneck"]
    shared_classifier: bool = SWITCHES["shared_classifier"]
    residual_detach_q: bool = SWITCHES["residual_detach_q"]
    init: str = SWITCHES["init"]


@dataclass
class LossConfig:
    lambda1: float = LOSS_WEIGHTS["lambda1"]  # FDRT (Eq. 11)
    lambda2: float = LOSS_WEIGHTS["lambda2"]  # IHTL (Eq. 11)
    lambda3: float = LOSS_WEIGHTS["lambda3"]  # competition L_C (Eq. 13)
    gamma: float = DEFAULT_GAMMA  # L_C threshold (Eq. 12)
    global_ce: bool = True  # False: MHSA-Net† (no L_CE on the GFB)
    label_smoothing: float = 0.0  # authors' code: 0.1
    fdrt_norm: str = "l1"  # l1 (Eq. 3) | fro (authors' code)
    competition_form: str = "paper"  # paper (Eq. 12) | code (sum of alpha below competition_threshold, unsquared)
    ihtl_self_positive: bool = False  # True: authors' code (anchor's own heads are positives)
    # --- the authors' code as a second reading (docs/paper-to-code.md "Two readings"); defaults: the paper's text
    distance: str = "squared"  # squared (Eq. 4-5) | euclidean (authors: triplet and IHTL)
    fdrt_form: str = "paper"  # paper (Eq. 3, with fdrt_norm) | authors (Gram of raw P, 1/25, batch sum)
    competition_reduction: str = "mean"  # mean over images | sum (authors' trainer)
    competition_threshold: float = COMPETITION_CODE_THRESHOLD  # of competition_form=code


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
    random_erasing: float = 0.0  # probability of erasing (the authors' code: Cutout at 0.5); off by default
    pad: int = 0
    workers: int = 4
    test_batch: int = 128
    # Decoded-image cache (mhsa.data.cache): "auto" | true | false. "auto" caches a split when its
    # uint8 array (N x 3 x H x W bytes) fits cache_max_gb; false is the per-image PIL loader.
    cache: Any = "auto"
    cache_max_gb: float = 4.0
    cache_dir: str = "results/cache"
    # --- the authors' code as a second reading (docs/paper-to-code.md "Two readings"); defaults: the paper's text
    sampler: str = SAMPLERS[0]  # pk: every image once per epoch | authors: each identity once, K images
    erasing: str = ERASINGS[0]  # random: RandomErasing | cutout: a fixed zero square (probability random_erasing)
    cutout_side: float = CUTOUT_SIDE  # the Cutout square's side, a fraction of data.width


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
    # A cap on the training steps of a cell (0: none): the cell follows the recipe's schedule and stops after
    # this many optimiser steps, its last epoch cut short (the rehearsal preset, docs/workflow.md "Presets").
    # It changes the weights, so it is part of the cell's identity (left out of `weights_config` at 0).
    max_steps: int = 0
    freeze_attention_mlp: bool = False  # True reproduces the authors' optimizer bug
    grad_clip: float = 0.0
    # --- the authors' code as a second reading (docs/paper-to-code.md "Two readings"); defaults: the paper's text
    param_set: str = "all"  # all | authors (leaves out attention MLP, Eq. 2 linear, SAFFM last layer, LayerNorm)
    warmup: str = "linear"  # linear | staircase (authors: lr * (e*10 // warmup_epochs + 1) / 10)
    milestone_epoch: str = MILESTONE_EPOCHS[0]  # after: decay from epoch m + 1 | at: from epoch m (the code)


@dataclass
class EvalConfig:
    # test set -> {"root": path, "modes": [...]}; empty: the training set in its default modes
    targets: dict = field(default_factory=dict)
    every: int = 0  # also evaluate every N epochs (0: at the end only)
    rerank_k1: int = RERANK_DEFAULTS["k1"]
    rerank_k2: int = RERANK_DEFAULTS["k2"]
    rerank_lambda: float = RERANK_DEFAULTS["lambda_value"]
    attention_images: int = 6  # query images whose attention maps are saved
    # euclidean (Zhong et al., the authors) | squared (torchreid): the distances re-ranking is fed, which it squares
    rerank_input: str = RERANK_INPUTS[0]


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
    # native | portable | avx2: the instruction set of the CPU kernels (mhsa.run.cpu_kernels); portable makes
    # a CPU run repeat bit for bit on any x86-64 machine
    cpu_kernels: str = "native"
    checkpoint_every: int = 10
    keep_weights: bool = True  # a finished cell keeps last.pt (final weights only) for re-evaluation
    compile: bool = False  # torch.compile the model (Module.compile: state_dict keys unchanged)
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
            value = _yaml_value(value, f"config key {key!r}")
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        return value
    if "dict" in str(typ):
        if isinstance(value, str):
            value = _yaml_value(value, f"config key {key!r}")
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


def _one_of(key: str, value: Any, allowed: tuple) -> None:
    _check(key, value in allowed, f"must be one of {'|'.join(map(str, allowed))}, got {value!r}")


@dataclass(frozen=True)
class PretrainSpec:
    """A preset's `pretrain:` section (config.yaml): what to train the backbone on, and how long."""

    backbone: str = "resnet18"
    identities: int = 512
    images_per_id: int = 8
    height: int = 128
    width: int = 64
    epochs: int = 6
    batch: int = 64
    lr: float = 1.0e-3
    seed: int = 0

    @classmethod
    def parse(cls, spec: dict) -> PretrainSpec:
        fields = set(cls.__dataclass_fields__)
        unknown = sorted(set(spec or {}) - fields)
        if unknown:
            raise ConfigError(f"config.yaml: pretrain: unknown key(s) {unknown}; known: {', '.join(sorted(fields))}")
        out = cls(**(spec or {}))
        if out.backbone not in BACKBONES:
            raise ConfigError(f"config.yaml: pretrain.backbone: {out.backbone!r} is not one of {list(BACKBONES)}")
        for key in ("identities", "images_per_id", "epochs", "batch"):
            if not isinstance(getattr(out, key), int) or getattr(out, key) < 1:
                raise ConfigError(f"config.yaml: pretrain.{key}: expected an integer >= 1, got {getattr(out, key)!r}")
        if not out.lr > 0:
            raise ConfigError(f"config.yaml: pretrain.lr: expected a number > 0, got {out.lr!r}")
        return out


# ------------------------------------------------------------------------------------------ bounds
SYNTHETIC_KEYS = ("seed", "num_ids", "images_per_id", "num_cams", "height", "width", "variant", "occlusion",
                  "labels")
TARGET_KEYS = ("root", "modes", "synthetic")  # an entry of eval.targets


def _get(cfg: RunConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part)
    return node


def _check_number(key: str, value: Any, bound: Range) -> None:
    _check(key, isinstance(value, int | float) and not isinstance(value, bool),
           f"expected a number, got {value!r}")
    _check(key, not (isinstance(value, float) and not math.isfinite(value)), f"expected a finite number, got {value!r}")
    _check(key, bound.contains(value), f"must be {bound.text()}, got {value!r}")


def _check_bounds(cfg: RunConfig) -> None:
    """Every entry of BOUNDS, for the value the config holds (lists: each element; a synthetic
    parameter only when data.synthetic sets it)."""
    for key, bound in BOUNDS.items():
        if key.startswith("data.synthetic."):
            synthetic = cfg.data.synthetic or {}
            name = key.rsplit(".", 1)[1]
            if synthetic.get(name) is not None:
                _check_number(key, synthetic[name], bound)
            continue
        value = _get(cfg, key)
        for v in value if isinstance(value, list) else [value]:
            _check_number(key, v, bound)


def _check_model(m: ModelConfig) -> None:
    _one_of("model.fusion", m.fusion, FUSIONS)
    _one_of("model.backbone", m.backbone, BACKBONES)
    _one_of("model.attention_layers", m.attention_layers, ATTENTION_LAYERS)
    _one_of("model.last_stride", m.last_stride, LAST_STRIDES)


def _check_heads(cfg: RunConfig) -> None:
    """K <= h*w, the positions of Q(x): each head embedding P_i is an alpha-weighted sum of the h*w
    feature vectors (Eq 2), so more heads than positions cannot attend to different places and FDRT
    (Eq 3) cannot decorrelate them."""
    m, d = cfg.model, cfg.data
    if not m.mhsam:
        return
    h, w = feature_map_size(d.height, d.width, m.last_stride)
    _check("model.num_heads", m.num_heads <= h * w,
           f"K={m.num_heads} heads but the {d.height}x{d.width} input gives a {h}x{w} feature map with only "
           f"{h * w} positions to attend to: each head embedding is a weighted sum of those positions, so "
           f"at most {h * w} heads can differ; lower K or raise data.height/data.width")


def _check_loss(lo: LossConfig) -> None:
    _one_of("loss.fdrt_norm", lo.fdrt_norm, FDRT_NORMS)
    _one_of("loss.competition_form", lo.competition_form, COMPETITION_FORMS)


def _check_data(d: DataConfig) -> None:
    _check("data.synthetic", d.synthetic is None or isinstance(d.synthetic, dict),
           f"expected a mapping of generator parameters or null, got {d.synthetic!r}")
    unknown = sorted(set(d.synthetic or {}) - set(SYNTHETIC_KEYS))
    _check("data.synthetic", not unknown,
           f"unknown generator parameter(s) {unknown}; known: {', '.join(SYNTHETIC_KEYS)}")


def _check_optim(o: OptimConfig) -> None:
    _one_of("optim.name", o.name, OPTIMIZERS)
    _check("optim.warmup_epochs", o.warmup_epochs <= o.epochs, f"must be in [0, epochs], got {o.warmup_epochs}")
    # strictly: a milestone given twice would decay the lr twice at that epoch
    _check("optim.milestones", all(a < b for a, b in zip(o.milestones, o.milestones[1:], strict=False)),
           f"must strictly increase (each milestone once), got {o.milestones}")


def check_modes(key: str, modes: list, m: ModelConfig) -> None:
    """Each test mode parses, exists for this model (MHSAM, K heads) and is listed once; raises naming `key`."""
    repeated = sorted({m for m in modes if modes.count(m) > 1})
    _check(key, not repeated, f"test mode(s) {repeated} listed more than once; list each once")
    for mode in modes:
        try:
            base, head, _ = parse_mode(mode)
        except ConfigError as err:
            raise ConfigError(f"config key {key!r}: {err}") from None
        _check(key, base == "global" or m.mhsam, f"test mode {mode!r} needs MHSAM (model.mhsam: true); "
               "the Baseline has only 'global'")
        _check(key, head is None or head <= m.num_heads,
               f"test mode {mode!r} but the model has K={m.num_heads} heads (model.num_heads)")


def _check_eval(e: EvalConfig, m: ModelConfig) -> None:
    e.targets = e.targets or {}  # `--set eval.targets=null`: no targets, i.e. the training set's own test split
    for name, target in e.targets.items():
        key = f"eval.targets.{name}"
        _check(key, isinstance(target, dict) and "root" in target, "each target needs a `root` (and optional `modes`)")
        unknown = sorted(set(target) - set(TARGET_KEYS))
        _check(key, not unknown, f"unknown key(s) {unknown}; allowed: {', '.join(TARGET_KEYS)}")
        modes = target.get("modes") or []
        _check(f"{key}.modes", isinstance(modes, list), f"expected a list of test modes, got {modes!r}")
        check_modes(f"{key}.modes", modes, m)


def validate(cfg: RunConfig) -> RunConfig:
    _check_data(cfg.data)  # data.synthetic's type first: _check_bounds reads its parameters
    _check_bounds(cfg)
    _check_model(cfg.model)
    _check_heads(cfg)
    _check_loss(cfg.loss)
    _check_optim(cfg.optim)
    _check_eval(cfg.eval, cfg.model)
    _check("amp", cfg.amp in AMP_MODES, f"must be one of {'|'.join(AMP_MODES)}, got {cfg.amp!r}"
           + (" (quote 'off': YAML reads a bare off as false)" if cfg.amp in ("False", "None") else ""))
    _one_of("cpu_kernels", cfg.cpu_kernels, CPU_KERNEL_LEVELS)
    _validate_cache(cfg.data)
    _validate_authors_switches(cfg)
    return cfg


# --- the authors' public code as a second reading (docs/paper-to-code.md "Two readings") ---------------
# dotted key -> allowed values; the first value is the default (the paper's reading)
AUTHORS_CHOICES = {
    "model.attention_softmax": ATTENTION_SOFTMAXES,
    "model.attention_mlp": ATTENTION_MLPS,
    "model.saffm_form": SAFFM_FORMS,
    "model.init": INITS,
    "loss.distance": DISTANCES,
    "loss.fdrt_form": FDRT_FORMS,
    "loss.competition_reduction": COMPETITION_REDUCTIONS,
    "optim.param_set": PARAM_SETS,
    "optim.warmup": WARMUPS,
    "optim.milestone_epoch": MILESTONE_EPOCHS,
    "data.sampler": SAMPLERS,
    "data.erasing": ERASINGS,
    "eval.rerank_input": RERANK_INPUTS,
}
# weight-defining keys added after cells were first trained (the second reading's, the step cap), with their
# defaults: left out of `weights_config` while at their default, so checkpoints and digests of the cells
# trained before the keys existed stay what they were
_AUTHORS_WEIGHT_DEFAULTS = {
    **{k: v[0] for k, v in AUTHORS_CHOICES.items() if not k.startswith("eval.")},
    "model.z_layernorm": False, "model.extra_bottleneck": False, "model.shared_classifier": False,
    "model.residual_detach_q": False, "loss.competition_threshold": COMPETITION_CODE_THRESHOLD,
    "data.cutout_side": CUTOUT_SIDE,
    "optim.max_steps": 0,  # no cap: digests of the cells trained before the cap existed stay what they were
}


def _validate_authors_switches(cfg: RunConfig) -> None:
    for key, choices in AUTHORS_CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        _check(key, value in choices, f"must be {'|'.join(choices)}, got {value!r}")
    m = cfg.model
    _check("model.shared_classifier", not (m.shared_classifier and m.fusion == "concat"),
           "one classifier for p* and z needs p* of z's size; fusion: concat makes p* K*512-d")
    _check("model.attention_mlp", not (m.attention_mlp == "authors" and m.attention_layers != 2),
           f"authors fixes the MLP's depth: leave model.attention_layers at 2, got {m.attention_layers}")


def _validate_cache(d: DataConfig) -> None:
    """data.cache: YAML gives a bool, --set may give the strings "true"/"false"/"auto"."""
    if isinstance(d.cache, str) and d.cache.lower() in ("true", "false", "auto", "yes", "no", "on", "off"):
        d.cache = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False,
                   "auto": "auto"}[d.cache.lower()]
    _check("data.cache", d.cache == "auto" or isinstance(d.cache, bool), f"must be auto|true|false, got {d.cache!r}")


def _yaml_value(text: str, where: str) -> Any:
    """A value given as YAML text (--set, a string for a list or mapping), with the strict loader."""
    try:
        return load_text(text, where)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: malformed YAML value {text!r} ({problem})") from None


def _split_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set loss.lambda1=1e-4")
    key, raw = item.split("=", 1)
    return key.strip().split("."), _yaml_value(raw, f"--set {item}")


def deep_merge(base: dict, over: dict | None, replace: tuple = ()) -> dict:
    """A copy of `base` with `over` merged in, mapping by mapping; the mappings under a key of
    `replace` are taken whole from `over` (a cell's `eval.targets` replaces the recipe's)."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in replace:
            out[key] = deep_merge(out[key], value, replace)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_run_config(recipe: dict | None = None, overrides: dict | None = None,
                     dotted: list[str] | None = None) -> RunConfig:
    """Merge `overrides` (a cell's own knobs) over `recipe` (shared), apply `key=value` items."""
    data = deep_merge(recipe or {}, overrides, replace=("targets",))
    for item in dotted or []:
        keys, value = _split_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return validate(_build(RunConfig, data, ""))


def load_run_config(path: str | Path, dotted: list[str] | None = None) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"run config file {str(path)!r} {what}")
    data = load_file(path) or {}  # a key given twice is an error (mhsa.io); malformed YAML names file and line
    try:
        return build_run_config(data, None, dotted)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


# What defines the trained weights. Everything else (device, threads, workers, batch size at test
# time, checkpoint cadence, evaluation, tracking, where the data lives) may change without
# invalidating a checkpoint. The decoded-image cache and torch.compile implement the same recipe
# (same augmentation distributions, same model), so they are runtime keys too; so is `cpu_kernels`,
# which moves the last bits of the arithmetic as `threads` may, not the recipe.
_RUNTIME_KEYS = {"name", "device", "threads", "cpu_kernels", "checkpoint_every", "keep_weights", "channels_last",
                 "eval", "tracking", "data.root", "data.workers", "data.test_batch",
                 "compile", "data.cache", "data.cache_max_gb", "data.cache_dir"}


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


def weights_config(cfg: RunConfig | dict) -> dict[str, str]:
    """The part of the config that determines the trained weights: dotted keys -> values as strings
    (the form a checkpoint stores and compares, and the digest hashes). `cfg` may also be the
    resolved config a metrics.json records (`RunConfig.to_dict()`)."""
    flat = flatten(cfg if isinstance(cfg, dict) else cfg.to_dict())
    return {k: str(v) for k, v in sorted(flat.items())
            if k not in _RUNTIME_KEYS and k.split(".")[0] not in _RUNTIME_KEYS
            and not (k in _AUTHORS_WEIGHT_DEFAULTS and v == _AUTHORS_WEIGHT_DEFAULTS[k])}


def config_diff(saved: dict, now: dict) -> str:
    """'key: old -> new, ...' of two `weights_config` dicts, the keys that differ ('' when none)."""
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    return ", ".join(f"{k}: {saved.get(k)} -> {now.get(k)}" for k in diff[:8]) + (" ..." if len(diff) > 8 else "")


def weights_digest(cfg: RunConfig) -> str:
    import hashlib
    import json

    return hashlib.sha1(json.dumps(weights_config(cfg), sort_keys=True).encode()).hexdigest()[:10]


def save_config(cfg: RunConfig, path: str | Path) -> None:
    from mhsa.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
