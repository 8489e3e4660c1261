"""The study as data: config.yaml -> deduplicated training cells and table rows.

A *cell* is one trained model: (training data set, model/loss knobs, seed). A *row ref* is
one number source of a table or figure: (table, row, test data set, test mode) -> cells (one
per seed). Several rows share a cell (Baseline, MHSA-Net K=8, the K=8 points of the sweeps),
and test modes (MHSA-Net vs MHSA-Net*, re-ranking, per-head P_i, Partial-REID from the
Market-1501 models) are evaluations of the same cell, so the DAG trains each cell once.

Pure Python (no Snakemake): `workflow/rules/common.smk` and `mhsa.study.tables` both call it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from hashlib import sha1
from pathlib import Path

from mhsa.config import ModelConfig, PretrainSpec, build_run_config, check_modes, deep_merge
from mhsa.data.synthetic import PRESET_PARAMS
from mhsa.errors import ConfigError
from mhsa.evaluation.modes import default_modes, parse_mode
from mhsa.io import load_file
from mhsa.study.figure_specs import check_plot_specs
from mhsa.study.keys import (
    DATASET_KEYS,
    FIGURE_KEYS,
    KNOBS,
    PRESET_KEYS,
    ROW_KEYS,
    SWEEP_KEYS,
    TABLE_KEYS,
    TOP_KEYS,
    WORKFLOW_KEYS,
)
from mhsa.switches import DEFAULT_GAMMA, RERANK_INPUTS

ROMAN = ["I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII", "XIII", "XIV"]

# The public code's differences (docs/paper-to-code.md "Reading 2") as the `authors`
# run-config keys each one sets; cell ids name them by tag. Order fixes the id; j2 before j (superset).
AUTHORS_TAGS = (
    ("a", {"model.attention_softmax": "positions"}),
    ("b", {"model.attention_mlp": "authors"}),
    ("c", {"optim.param_set": "authors"}),
    ("d", {"model.saffm_form": "authors"}),
    ("e", {"model.z_layernorm": True}),
    ("f", {"model.extra_bottleneck": True}),
    ("g", {"model.shared_classifier": True}),
    ("h", {"loss.distance": "euclidean"}),
    ("i", {"loss.fdrt_form": "authors"}),
    ("j2", {"loss.competition_form": "code", "loss.competition_reduction": "sum",
            "loss.competition_threshold": 1.0e-3}),
    ("j", {"loss.competition_form": "code", "loss.competition_reduction": "sum"}),
    ("k", {"optim.warmup": "staircase"}),
    ("m", {"optim.milestone_epoch": "at"}),
    ("ls", {"loss.label_smoothing": 0.1}),
    ("co", {"data.random_erasing": 0.5, "data.erasing": "cutout"}),
    ("sa", {"data.sampler": "authors"}),
    ("sp", {"loss.ihtl_self_positive": True}),
    ("in", {"model.init": "authors"}),
    ("A2", {"model.residual_detach_q": True}),
)
# The `authors` keys that change a Baseline (no MHSAB); the rest are moot there and dropped, so
# every Baseline under one reading is one cell.
BASELINE_AUTHORS_KEYS = ("model.extra_bottleneck", "model.init", "loss.label_smoothing",
                         "data.random_erasing", "data.erasing", "data.cutout_side", "data.sampler", "optim.warmup",
                         "optim.milestone_epoch")
# `model.pretrained: seeded` in a preset's recipe: a seeded random state dict of the cell's backbone that the
# workflow writes once (rule seeded_weights), for rehearsals without ImageNet weights.
SEEDED = "seeded"


class StudyError(ConfigError):
    """A config.yaml entry that cannot be turned into cells; the message names it."""


def check_keys(where: str, entry, allowed) -> None:
    """Reject keys of the mapping `entry` (config.yaml's `where`) that are not in `allowed`."""
    if entry is None:
        return
    if not isinstance(entry, dict):
        raise StudyError(f"config.yaml: {where}: expected a mapping, got {entry!r}")
    unknown = [k for k in entry if k not in allowed]
    if unknown:
        raise StudyError(f"config.yaml: {where}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")


def check_unique(where: str, values, what: str = "value") -> None:
    """A list of config.yaml (seeds, tables, data sets, metrics, row names) holds each entry once: a
    repeated seed would count one model twice (n=2, std 0), a repeated row name would show one row's
    numbers under another's name (docs/reliability.md, "Duplicates")."""
    seen: list = []
    repeated: list = []
    for v in values:
        if v in seen and v not in repeated:
            repeated.append(v)
        seen.append(v)
    if repeated:
        listed = ", ".join(repr(v) for v in repeated)
        raise StudyError(f"config.yaml: {where}: {what} {listed} given more than once; each may appear once")


def _required(where: str, entry: dict, keys) -> None:
    missing = [k for k in keys if k not in entry]
    if missing:
        raise StudyError(f"config.yaml: {where}: missing key(s) {missing}")


def parse_seeds(where: str, seeds) -> list[int]:
    """`seeds:` as distinct non-negative integers."""
    if not isinstance(seeds, list) or not seeds:
        raise StudyError(f"config.yaml: {where}: expected a list of seeds, e.g. [0, 1, 2], got {seeds!r}")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise StudyError(f"config.yaml: {where}: seeds are integers >= 0, got {bad}")
    check_unique(where, seeds, "seed")
    return list(seeds)


@dataclass
class Cell:
    id: str
    dataset: str
    knobs: dict
    seed: int
    targets: dict = field(default_factory=dict)  # test set -> set of test modes
    feeds: list = field(default_factory=list)  # "Table I / MHSA-Net (K=8)" labels


@dataclass
class RowRef:
    source: str  # "table" | "figure"
    table: str  # roman numeral for tables, figure number for figures
    row: str
    dataset: str  # test set (a column group of the paper's table)
    metrics: list
    mode: str
    cells: list  # one cell id per seed
    series: str | None = None  # figures: the series name; rows are "<series> (K=k)"
    K: int | None = None
    paper_row: str | None = None  # the paper's row beside this one (tables with `paper_tables`)
    compare_to: str | None = None  # the row this one is compared with, when not the default reference row


@dataclass
class Study:
    config: dict  # the preset-resolved config
    cells: dict  # id -> Cell, in first-use order
    rows: list  # RowRef, in the paper's order

    def table_ids(self) -> list:
        return list(self.config.get("tables", {}))

    def figure_ids(self) -> list:
        return list(self.config.get("figures", {}))

    def experiments(self) -> list[str]:
        """The MLflow experiments its cells log to."""
        return [experiment_name(self.config)]

    def to_data(self) -> dict:
        """The study as plain, JSON-able data (for the tables step; `from_data` rebuilds it): the
        resolved config without `presets`, the cells (test modes as sorted lists, so that the same
        study always gives the same data) and the rows."""
        cells = [{**asdict(c), "targets": {t: sorted(m) for t, m in sorted(c.targets.items())}}
                 for c in self.cells.values()]
        config = {k: v for k, v in self.config.items() if k != "presets"}
        return {"config": config, "cells": cells, "rows": [asdict(r) for r in self.rows]}

    def digest(self) -> str:
        """12 hex digits of the study's plain data: what its tables and figures are made from (the
        workflow's study file is rewritten only when it changes; the study's MLflow run records it)."""
        return sha1(json.dumps(self.to_data(), sort_keys=True).encode()).hexdigest()[:12]

    def headline(self, cell_id: str) -> RowRef | None:
        """The first row that reports the cell (its test set and mode give the cell's headline Rank-1
        and mAP in MLflow, the same two names in every run: mhsa.study.tracking)."""
        return next((r for r in self.rows if cell_id in r.cells), None)

    @classmethod
    def from_data(cls, data: dict) -> Study:
        cells = {c["id"]: Cell(**{**c, "targets": {t: set(m) for t, m in c["targets"].items()}})
                 for c in data["cells"]}
        return cls(data["config"], cells, [RowRef(**r) for r in data["rows"]])


def experiment_name(config: dict) -> str:
    """The MLflow experiment of a preset-resolved config's cells: one per preset."""
    return f"mhsa-{config['preset']}"


def table_number(table: str) -> int:
    """'VII' -> 7 (file names use numbers: results/tables/table_7.csv)."""
    return ROMAN.index(table) + 1


def resolve_preset(config: dict, preset: str | None = None, results_dir: str | None = None) -> dict:
    """Apply `presets[preset]` on top of the base config; returns a new dict.

    `results_dir`: one given explicitly (`snakemake --config results_dir=...`), which wins over the
    preset's own; None keeps the preset's (docs/workflow.md, "Presets")."""
    if not isinstance(config, dict):
        raise StudyError(f"config.yaml: expected a mapping of the keys {', '.join(TOP_KEYS)}, got {config!r}")
    check_keys("the top level", config, TOP_KEYS)
    preset = preset or config.get("preset", "paper")
    presets = config.get("presets") or {}
    if preset not in presets:
        raise StudyError(f"config.yaml: preset {preset!r} is not defined; known presets: {sorted(presets)}")
    p = presets[preset] or {}
    check_keys(f"presets.{preset}", p, PRESET_KEYS)
    check_keys(f"presets.{preset}.synthetic", p.get("synthetic"), PRESET_PARAMS)
    out = copy.deepcopy(config)
    out["preset"] = preset
    out["data_source"] = p.get("data_source", "real")
    out["synthetic"] = p.get("synthetic", {})
    out["recipe"] = deep_merge(config.get("recipe", {}), p.get("recipe", {}))
    out["seeds"] = parse_seeds(f"presets.{preset}.seeds" if "seeds" in p else "seeds",
                               p["seeds"] if "seeds" in p else config.get("seeds", [0]))
    if results_dir is not None:
        out["results_dir"] = str(results_dir)
    elif "results_dir" in p:  # presets keep their runs apart: paper results never overwrite demo ones
        out["results_dir"] = p["results_dir"]
    where = "--config results_dir" if results_dir is not None else (
        f"presets.{preset}.results_dir" if "results_dir" in p else "results_dir")
    out["results_dir"] = _results_dir(where, out.get("results_dir", "results"))
    for part in ("tables", "figures"):
        if part in p:
            out[part] = _preset_selection(config, preset, part, p[part])
    if "datasets" in p:  # the preset's own roots (e.g. the rehearsal's stand-ins), entry by entry
        check_keys(f"presets.{preset}.datasets", p["datasets"], list(config.get("datasets") or {}))
        out["datasets"] = deep_merge(config.get("datasets") or {}, p["datasets"])
    out["dataset_recipe"] = _dataset_recipe(preset, p.get("dataset_recipe"), out)
    if "rows" in p:
        out["tables"] = _row_selection(preset, p["rows"], out.get("tables") or {})
    if "pretrain" in p:  # every cell starts from the backbone the workflow pretrains (mhsa.run.pretrain)
        out["pretrain"] = asdict(PretrainSpec.parse(p["pretrain"]))
        out["recipe"] = deep_merge(out["recipe"], {"model": {"pretrained": pretrained_path(out)}})
    return out


# Run-config sections a preset's `dataset_recipe` may change: the model and input of one training set's
# cells; never what the rows decide (knobs, seed, data set, test sets), which cell_overrides sets.
_DATASET_RECIPE_FORBIDDEN = ("name", "seed", "eval", "tracking", "data.dataset", "data.root", "data.synthetic",
                             "model.mhsam", "model.num_heads", "model.fusion", "model.residual", "loss")


def _dataset_recipe(preset: str, spec, cfg: dict) -> dict:
    """`presets.<preset>.dataset_recipe`: training set -> a recipe fragment merged over the recipe for the cells
    trained on that set (e.g. a smaller model and input where time demands); checked like the recipe."""
    if spec is None:
        return {}
    where = f"presets.{preset}.dataset_recipe"
    check_keys(where, spec, list(cfg.get("datasets") or {}))
    for name, fragment in spec.items():
        flat = _flat_keys(fragment or {})
        bad = [k for k in flat if any(k == f or k.startswith(f + ".") for f in _DATASET_RECIPE_FORBIDDEN)]
        if bad:
            raise StudyError(f"config.yaml: {where}.{name}: {bad} are set by the rows and the data sets, not by a "
                             "recipe; a dataset_recipe may change the model and the input only")
        try:
            build_run_config(deep_merge(cfg["recipe"], fragment or {}))
        except ConfigError as err:
            raise StudyError(f"config.yaml: {where}.{name}: {err}") from None
    return copy.deepcopy(spec)


def _flat_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [prefix + k]
    return out


def _row_selection(preset: str, names, tables: dict) -> dict:
    """`presets.<preset>.rows`: only the rows of these names in the preset's tables; a name no selected table
    has, or a table left without rows, is an error (a typo must not drop rows silently)."""
    where = f"presets.{preset}.rows"
    if not isinstance(names, list) or not names:
        raise StudyError(f"config.yaml: {where}: expected a list of row names, got {names!r}")
    check_unique(where, names, "row")
    unknown = [n for n in names if not any(r.get("row") == n for t in tables.values() for r in t.get("rows", []))]
    if unknown:
        raise StudyError(f"config.yaml: {where}: no table of the preset has the row(s) {unknown}")
    out = {}
    for tid, table in tables.items():
        rows = [r for r in table.get("rows", []) if r.get("row") in names]
        if not rows:
            raise StudyError(f"config.yaml: {where} leaves Table {tid} without rows; drop it from "
                             f"presets.{preset}.tables or keep one of its rows")
        out[tid] = {**table, "rows": rows}
    return out


def pretrained_path(config: dict) -> str:
    """Where the workflow writes a preset's pretrained backbone (its `pretrain:` section)."""
    return str(Path(config["results_dir"]) / "pretrain" / "backbone.pt")


def _results_dir(where: str, value) -> str:
    """A folder name: an empty one (or "/") would put runs/, tables/ and the store at the file system's root."""
    if not isinstance(value, str) or not value.strip().rstrip("/"):
        prefix = "" if where.startswith("--") else "config.yaml: "
        raise StudyError(f"{prefix}{where}: expected the name of a folder, e.g. results/ci, got {value!r}")
    return value


def _preset_selection(config: dict, preset: str, part: str, names) -> dict:
    """`presets.<preset>.tables` (or `figures`): the named entries of config.yaml's `tables`, each once."""
    where = f"presets.{preset}.{part}"
    if not isinstance(names, list):
        raise StudyError(f"config.yaml: {where}: expected a list of names, got {names!r}")
    check_unique(where, names, part[:-1])
    defined = config.get(part) or {}
    unknown = [t for t in names if t not in defined]
    if unknown:
        raise StudyError(f"config.yaml: {where} names unknown {part} {unknown}")
    return {t: defined[t] for t in names}


def _nest(dotted: dict) -> dict:
    """{"model.init": "authors"} -> {"model": {"init": "authors"}}."""
    out: dict = {}
    for key, value in dotted.items():
        *sections, leaf = key.split(".")
        node = out
        for sec in sections:
            node = node.setdefault(sec, {})
        node[leaf] = value
    return out


# Run-config keys the other knobs set: an `authors` entry must not fight them.
_KNOB_KEYS = ("model.mhsam", "model.num_heads", "model.fusion", "model.residual", "loss.lambda1",
              "loss.lambda2", "loss.lambda3", "loss.gamma", "loss.global_ce")
_AUTHORS_SECTIONS = ("model", "loss", "data", "optim", "eval")


def check_authors(where: str, authors) -> dict:
    """An `authors` mapping (dotted run-config key -> value) checked against the run config: an
    unknown key or a bad value is an error naming `where`. Returns it with sorted keys."""
    if authors is None:
        return {}
    if not isinstance(authors, dict):
        raise StudyError(f"config.yaml: {where}: authors: expected a mapping of dotted run-config keys "
                         f"(e.g. model.attention_softmax: positions), got {authors!r}")
    for key in authors:
        if not isinstance(key, str) or key.split(".")[0] not in _AUTHORS_SECTIONS or "." not in key:
            raise StudyError(f"config.yaml: {where}: authors: {key!r} is not a dotted run-config key of "
                             f"{', '.join(_AUTHORS_SECTIONS)} (e.g. model.attention_softmax)")
        if key in _KNOB_KEYS:
            raise StudyError(f"config.yaml: {where}: authors: {key!r} is set by a knob; set the knob instead")
    try:
        build_run_config({}, _nest(authors))
    except ConfigError as err:
        raise StudyError(f"config.yaml: {where}: authors: {err}") from None
    return {k: authors[k] for k in sorted(authors)}


def _merged_authors(config: dict, where: str, name: str, spec: dict) -> dict:
    """variant_defaults.authors, then the variant's, then the row's, merged key by key."""
    merged: dict = {}
    for part in (config.get("variant_defaults", {}), config["variants"][name] or {}, spec):
        merged.update(check_authors(where, part.get("authors")))
    return {k: merged[k] for k in sorted(merged)}


def variant_knobs(config: dict, where: str, spec: dict) -> dict:
    """A row spec (variant + overrides) -> the cell's resolved knobs; equal cells get equal knobs."""
    variants = config.get("variants", {})
    check_keys(where, spec, ROW_KEYS)
    name = spec.get("variant")
    if name not in variants:
        raise StudyError(f"config.yaml: {where}: unknown variant {name!r}; "
                         f"known variants: {sorted(variants)}")
    knobs = dict(config.get("variant_defaults", {}))
    knobs.update(variants[name] or {})
    knobs.update({k: spec[k] for k in KNOBS if k in spec})
    knobs["authors"] = _merged_authors(config, where, name, spec)
    missing = [k for k in KNOBS if k not in knobs]
    if missing:
        raise StudyError(f"config.yaml: {where}: no value for {missing} (add them to variant_defaults)")
    if not knobs["mhsam"]:
        # The Baseline has no MHSAB: every branch knob is moot, so all Baselines dedupe to one cell
        # per reading (only the `authors` keys that touch the backbone, data or schedule remain).
        authors = {k: v for k, v in knobs["authors"].items() if k in BASELINE_AUTHORS_KEYS}
        # `occlusion` is a knob of the data, not of a branch: it stays.
        return {"mhsam": False, "K": 0, "lambda1": 0.0, "lambda2": 0.0, "lambda3": 0.0,
                "gamma": DEFAULT_GAMMA, "fusion": "saffm", "residual": True, "global_ce": bool(knobs["global_ce"]),
                "occlusion": _occlusion(knobs["occlusion"]), "authors": authors}
    knobs["occlusion"] = _occlusion(knobs["occlusion"])
    for key in ("lambda1", "lambda2", "lambda3", "gamma"):
        knobs[key] = float(knobs[key])
    if knobs["lambda3"] == 0:
        knobs["gamma"] = float(config.get("variant_defaults", {}).get("gamma", DEFAULT_GAMMA))
    knobs["K"] = int(knobs["K"])
    if knobs["K"] < 1:
        raise StudyError(f"config.yaml: {where}: K must be >= 1, got {knobs['K']}")
    return knobs


def _occlusion(value) -> float | None:
    return None if value is None else float(value)


def authors_tags(authors: dict) -> list | None:
    """The AUTHORS_TAGS an `authors` mapping is made of, in their fixed order; None when it holds a key
    or value no tag covers."""
    left = dict(authors)
    tags = []
    for tag, keys in AUTHORS_TAGS:
        if all(k in left and left[k] == v for k, v in keys.items()):
            tags.append(tag)
            for k in keys:
                del left[k]
    return None if left else tags


# The whole public-code reading (config.yaml's `authors_code`): named "-authors" in cell ids.
# (l), the re-ranking input, is no longer in it: the paper-text reading feeds re-ranking as the code does.
FULL_READING = ("a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "m", "ls", "co", "sa", "sp", "in")


def authors_suffix(authors: dict) -> str:
    """'' (paper text), '-authors' (the whole public code), '-a.<tag>[.<tag>...]', or '-a.<digest>'."""
    if not authors:
        return ""
    tags = authors_tags(authors)
    if tags is None:
        return "-a." + sha1(json.dumps(authors, sort_keys=True).encode()).hexdigest()[:8]
    if tuple(tags) == FULL_READING:
        return "-authors"
    return "-a." + ".".join(tags)


def cell_id(dataset: str, knobs: dict, seed: int) -> str:
    """Readable, deterministic id from the resolved knobs (so equal cells get equal ids)."""
    if not knobs["mhsam"]:
        arch = "baseline" + ("" if knobs["global_ce"] else "-noce")
    else:
        arch = f"mhsam-K{knobs['K']}"
        if knobs["lambda1"]:
            arch += f"-fdrt{knobs['lambda1']:g}"
        if knobs["lambda2"]:
            arch += f"-ihtl{knobs['lambda2']:g}"
        if knobs["lambda3"]:
            arch += f"-acm{knobs['lambda3']:g}g{knobs['gamma']:g}"
        if knobs["fusion"] != "saffm":
            arch += f"-{knobs['fusion']}"
        if not knobs["residual"]:
            arch += "-norlm"
        if not knobs["global_ce"]:
            arch += "-noce"
    arch += authors_suffix(knobs.get("authors") or {})
    if knobs.get("occlusion") is not None:
        arch += f"-occ{round(100 * knobs['occlusion'])}"
    return f"{dataset}__{arch}__s{seed}"


def check_mode(mode: str, knobs: dict, where: str) -> None:
    """The run config's test-mode check (`mhsa.config.check_modes`), naming the row."""
    try:
        check_modes("mode", [mode], ModelConfig(mhsam=knobs["mhsam"], num_heads=max(knobs["K"], 1)))
    except ConfigError as err:
        raise StudyError(f"config.yaml: {where}: {err}") from None


def _check_sections(config: dict) -> None:
    """Keys of `variants`, `variant_defaults`, `workflow`, `datasets` and of each table and figure
    (rows are checked as they expand); the lists of each table and figure hold each entry once."""
    for name, knobs in (config.get("variants") or {}).items():
        check_keys(f"variants.{name}", knobs, KNOBS)
        check_authors(f"variants.{name}", (knobs or {}).get("authors"))
    check_keys("variant_defaults", config.get("variant_defaults"), KNOBS)
    check_keys("workflow", config.get("workflow"), WORKFLOW_KEYS)
    _check_datasets(config.get("datasets"))
    for part, keys, required in (("tables", TABLE_KEYS, ("datasets", "metrics", "rows")),
                                 ("figures", FIGURE_KEYS, ("datasets", "metrics", "series"))):
        for tid, spec in (config.get(part) or {}).items():
            where = f"{part}.{tid}"
            check_keys(where, spec, keys)
            _required(where, spec, required)
            for key in ("datasets", "metrics"):
                check_unique(f"{where}.{key}", spec[key], key[:-1])
    for fid, fig in (config.get("figures") or {}).items():
        for series in fig["series"]:
            if not isinstance(series, dict) or "row" not in series:
                raise StudyError(f"config.yaml: figures.{fid}.series: a series without a `row` name: {series!r}")
        check_keys(f"figures.{fid}.sweep", fig.get("sweep"), SWEEP_KEYS)
        check_unique(f"figures.{fid}.sweep.K", (fig.get("sweep") or {}).get("K") or [], "K")


def _check_datasets(datasets) -> None:
    if not isinstance(datasets, dict) or not datasets:
        raise StudyError(f"config.yaml: datasets: expected a mapping of data set names to {{root: ...}}, "
                         f"got {datasets!r}")
    for name, entry in datasets.items():
        check_keys(f"datasets.{name}", entry, DATASET_KEYS)
        _required(f"datasets.{name}", entry or {}, ("root",))
        train_on = entry.get("train_on", name)
        if train_on not in datasets:
            raise StudyError(f"config.yaml: datasets.{name}.train_on: {train_on!r} is not under `datasets:` "
                             f"(known: {sorted(datasets)})")


def _check_cells(study: Study) -> None:
    """Build every cell's run config as the trainer will: a K, mode or recipe value the trainer would
    reject fails here, at parse time, naming the rows that use the cell."""
    recipe = study.config.get("recipe", {})
    try:
        build_run_config(recipe)
    except ConfigError as err:
        raise StudyError(f"config.yaml: recipe (preset {study.config['preset']!r}): {err}") from None
    for cell in study.cells.values():
        if cell.knobs.get("occlusion") is not None and study.config.get("data_source") != "synthetic":
            raise StudyError(f"config.yaml: {'; '.join(cell.feeds)}: the `occlusion` knob sets how the synthetic "
                             f"generator occludes; preset {study.config['preset']!r} uses real data sets")
        try:
            build_run_config(recipe, cell_overrides(study, cell))
        except ConfigError as err:
            raise StudyError(f"config.yaml: {'; '.join(cell.feeds)}: {err}") from None


def _row_specs(config: dict):
    """Yield (source, table id, table spec, row spec, series, K) for every table and figure row."""
    for tid, table in config.get("tables", {}).items():
        for spec in table["rows"]:
            yield "table", str(tid), table, spec, None, None
    for fid, fig in config.get("figures", {}).items():
        sweep = fig.get("sweep", {}).get("K", [None])
        for series in fig["series"]:
            for k in sweep:
                spec = dict(series)
                if k is not None:
                    spec["K"] = k
                    spec["row"] = f"{series['row']} (K={k})"
                yield "figure", str(fid), fig, spec, series["row"], k


def _check_row_name(names: dict, source: str, tid: str, spec: dict, label: str) -> None:
    """Each row of a table (each series point of a figure) has its own name: the tables key numbers
    by row name, so a second "Baseline" would show the other row's numbers and hide its own."""
    if not isinstance(spec, dict) or "row" not in spec:
        raise StudyError(f"config.yaml: {'Table' if source == 'table' else 'Fig.'} {tid}: a row without a `row` "
                         f"name: {spec!r}")
    first = names.setdefault((source, tid, spec["row"]), spec)
    if first is not spec:
        raise StudyError(f"config.yaml: {label}: the row name {spec['row']!r} is given twice in this "
                         f"{source}; rename one of the rows (the tables find numbers by row name)")


def _check_compare_to(rows: list) -> None:
    """A row's `compare_to` names another row of its table (the comparison of docs/tables.md, "Marks")."""
    names = {(r.source, r.table): [] for r in rows}
    for r in rows:
        if r.row not in names[(r.source, r.table)]:
            names[(r.source, r.table)].append(r.row)
    for r in rows:
        if r.compare_to is not None and (r.compare_to == r.row or r.compare_to not in names[(r.source, r.table)]):
            raise StudyError(f"config.yaml: Table {r.table} / {r.row}: compare_to {r.compare_to!r} is not another "
                             f"row of this table (rows: {', '.join(names[(r.source, r.table)])})")


def build_study(config: dict, preset: str | None = None, results_dir: str | None = None) -> Study:
    """Resolve the preset and expand every table/figure row into deduplicated cells.

    `results_dir`: an explicit results directory that wins over the preset's (resolve_preset)."""
    cfg = resolve_preset(config, preset, results_dir)
    _check_sections(cfg)
    datasets = cfg.get("datasets", {})
    seeds = cfg["seeds"]
    cells: dict[str, Cell] = {}
    rows: list[RowRef] = []
    names: dict = {}  # (table or figure, row name) -> its first spec
    for source, tid, table, spec, series, k in _row_specs(cfg):
        label = f"{'Table' if source == 'table' else 'Fig.'} {tid} / {spec.get('row')}"
        _check_row_name(names, source, tid, spec, label)
        knobs = variant_knobs(cfg, label, spec)
        mode = spec.get("mode", "concat" if knobs["mhsam"] else "global")
        check_mode(mode, knobs, label)
        for test_set in table["datasets"]:
            if test_set not in datasets:
                raise StudyError(f"config.yaml: {label}: data set {test_set!r} is not under `datasets:` "
                                 f"(known: {sorted(datasets)})")
            train_set = datasets[test_set].get("train_on", test_set)
            ids = []
            for seed in seeds:
                cid = cell_id(train_set, knobs, seed)
                cell = cells.setdefault(cid, Cell(cid, train_set, knobs, seed))
                if cell.knobs != knobs:  # an id must name one model: never show one cell's numbers for another
                    raise StudyError(f"config.yaml: {label} and {cell.feeds[0]} differ in their knobs but get the "
                                     f"same cell id {cid!r}; the id must name every knob that changes the model")
                cell.targets.setdefault(test_set, set()).add(mode)
                if label not in cell.feeds:
                    cell.feeds.append(label)
                ids.append(cid)
            rows.append(RowRef(source, tid, spec["row"], test_set, list(table["metrics"]), mode, ids,
                               series, k, spec.get("paper_row"), spec.get("compare_to")))
    _check_compare_to(rows)
    study = Study(cfg, cells, rows)
    _check_cells(study)
    check_plot_specs(study)  # a typo in a figure spec fails now, not after the last training job
    return study


def data_key(name: str, occlusion: float | None = None) -> str:
    """The folder name of a synthetic data set: its layout, with the `occlusion` knob's share of the body
    hidden when a cell sets it ("occluded_duke-occ65")."""
    return name if occlusion is None else f"{name}-occ{round(100 * occlusion)}"


def dataset_root(config: dict, name: str, occlusion: float | None = None) -> str:
    """Where a data set lives under the resolved preset (synthetic ones under results/)."""
    if config.get("data_source") == "synthetic":
        return str(Path(config.get("results_dir", "results")) / "synthetic" / data_key(name, occlusion))
    return str(config["datasets"][name]["root"])


def synthetic_params(config: dict, occlusion: float | None = None) -> dict:
    """The generator parameters of a preset's synthetic data sets, with a cell's occlusion knob."""
    params = dict(config.get("synthetic") or {})
    if occlusion is not None:  # every occluded image hides this share of the body
        params["occlusion"] = {"coverage": [occlusion, occlusion]}
    return params


def cell_data(study: Study, cell: Cell) -> dict[str, tuple[str, float | None]]:
    """The data sets a cell reads, training set first: data_key -> (layout, occlusion)."""
    occ = cell.knobs.get("occlusion")
    names = [cell.dataset] + [t for t in sorted(cell.targets) if t != cell.dataset]
    return {data_key(n, occ): (n, occ) for n in names}


def data_sets(study: Study) -> dict[str, tuple[str, float | None]]:
    """Every data set of the study's cells: data_key -> (layout, occlusion), in first-use order."""
    out: dict = {}
    for cell in study.cells.values():
        out.update({k: v for k, v in cell_data(study, cell).items() if k not in out})
    return out


def branch_modes(knobs: dict) -> set:
    """Every branch on its own (q*, p*, [p*, q*], each head P_i): evaluated for every cell, whatever its
    rows need, so a cell's diagnostics can say which branch carries it (features are extracted once)."""
    if not knobs["mhsam"]:
        return {"global"}
    return set(default_modes(True)) | {f"head{i}" for i in range(1, knobs["K"] + 1)}


def cell_overrides(study: Study, cell: Cell) -> dict:
    """The cell's own part of the run config (merged over the shared recipe by the trainer)."""
    cfg = study.config
    k = cell.knobs
    own = {
        "name": cell.id,
        "seed": cell.seed,
        "model": {"mhsam": k["mhsam"], "num_heads": max(k["K"], 1), "fusion": k["fusion"],
                  "residual": k["residual"]},
        "loss": {"lambda1": k["lambda1"], "lambda2": k["lambda2"], "lambda3": k["lambda3"],
                 "gamma": k["gamma"], "global_ce": k["global_ce"]},
        "data": {"dataset": cell.dataset, "root": dataset_root(cfg, cell.dataset, k.get("occlusion"))},
        "eval": {"targets": {t: {"root": dataset_root(cfg, t, k.get("occlusion")),
                                 "modes": sorted(set(m) | branch_modes(k))}
                             for t, m in sorted(cell.targets.items())}},
        "tracking": {"experiment": experiment_name(cfg), "tags": {"feeds": "; ".join(cell.feeds)}},
    }
    if any(parse_mode(mode)[2] for modes in cell.targets.values() for mode in modes):
        # Re-ranked results depend on it, the weights do not: named in the cells that re-rank, so that a
        # change of its default reruns (re-evaluates) them and `mhsa.study.tables` can tell stale results.
        own["eval"]["rerank_input"] = RERANK_INPUTS[0]
    fragment = (cfg.get("dataset_recipe") or {}).get(cell.dataset) or {}
    own = deep_merge(deep_merge(fragment, own), _nest(k.get("authors") or {}))
    model = deep_merge(cfg.get("recipe", {}).get("model") or {}, own.get("model") or {})
    if model.get("pretrained") == SEEDED:  # the seeded random weights of the cell's backbone (rule seeded_weights)
        own["model"]["pretrained"] = seeded_weights_path(cfg, model.get("backbone", "resnet50"))
    return own


def seeded_weights_path(config: dict, backbone: str) -> str:
    """Where the workflow writes the seeded random weights of `backbone` (`model.pretrained: seeded`)."""
    return f"{str(config.get('results_dir', 'results')).rstrip('/')}/pretrained/seeded-{backbone}.pth"


def load_study_config(path: str | Path) -> dict:
    """config.yaml as a dict, read with the strict loader (a key given twice is an error naming the
    file and line; malformed YAML raises yaml.MarkedYAMLError, which names them too)."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"config file {path} does not exist (--config); pass the study's config.yaml")
    data = load_file(path)
    if not isinstance(data, dict):
        raise StudyError(f"{path}: expected a mapping of the keys {', '.join(TOP_KEYS)}, got {data!r}")
    return data


def check_config_files(paths) -> None:
    """Read each existing file of `paths` with the strict loader (`load_study_config`): for the Snakefile,
    whose own `configfile:` loader lets a repeated key win silently."""
    for path in paths:
        if Path(path).is_file():
            load_study_config(path)
