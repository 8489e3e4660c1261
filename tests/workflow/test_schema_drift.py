"""The workflow schema and the package say the same thing: enums, patterns, bounds and key sets.

Each check reads the value from config.yaml's schema (mhsa/study/config.schema.yaml) and compares it with the
package's own constant, or probes the package's validation exactly at the schema's bound (the
bound is accepted, one step beyond it is rejected).
"""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from mhsa import config as run_config
from mhsa.config import ConfigError, build_run_config
from mhsa.data import synthetic
from mhsa.evaluation.modes import MODE_PATTERN, parse_mode
from mhsa.model import ATTENTION_LAYERS, BACKBONES, FUSIONS, LAST_STRIDES
from mhsa.study import build as study
from mhsa.study.keys import SCHEMA_PATH

ROOT = Path(__file__).parents[2]
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
DEFS = SCHEMA["definitions"]
RECIPE = DEFS["recipe"]["properties"]
PRESET = SCHEMA["properties"]["presets"]["additionalProperties"]


def test_enums_are_the_packages_values():
    assert set(DEFS["fusion"]["enum"]) == set(FUSIONS)
    assert set(RECIPE["model"]["properties"]["backbone"]["enum"]) == set(BACKBONES)
    assert set(RECIPE["model"]["properties"]["last_stride"]["enum"]) == set(LAST_STRIDES)
    assert set(RECIPE["model"]["properties"]["attention_layers"]["enum"]) == set(ATTENTION_LAYERS)
    assert set(RECIPE["amp"]["enum"]) == set(run_config.AMP_MODES)
    assert set(RECIPE["optim"]["properties"]["name"]["enum"]) == set(run_config.OPTIMIZERS)
    assert set(RECIPE["cpu_kernels"]["enum"]) == set(run_config.CPU_KERNEL_LEVELS)


def test_figure_colour_pattern_is_the_packages():
    from mhsa.study.figure_specs import COLOUR_PATTERN

    colours = SCHEMA["properties"]["figures"]["additionalProperties"]["properties"]["plot"]["properties"]["colors"]
    assert colours["items"]["pattern"] == COLOUR_PATTERN


def test_test_mode_pattern_is_the_grammar():
    assert DEFS["test_mode"]["pattern"] == MODE_PATTERN
    pattern = re.compile(DEFS["test_mode"]["pattern"])
    for mode in ("global", "local", "concat", "head1", "head12", "concat_rerank", "head3_rerank"):
        assert pattern.match(mode) and parse_mode(mode)
    for mode in ("head0", "head", "fancy", "global_rerank_rerank", "Global", "head01"):
        assert not pattern.match(mode)
        with pytest.raises(ConfigError, match="unknown test mode"):
            parse_mode(mode)


def test_key_sets_are_closed_and_the_generators():
    """The study's key sets are read from this schema (mhsa.study.keys); the synthetic generator's
    parameters are the data layer's own and repeated here."""
    assert set(PRESET["properties"]["synthetic"]["properties"]) == set(synthetic.PRESET_PARAMS)
    assert PRESET["additionalProperties"] is False
    assert PRESET["properties"]["synthetic"]["additionalProperties"] is False
    assert SCHEMA["properties"]["workflow"]["additionalProperties"] is False
    assert DEFS["row"]["unevaluatedProperties"] is False and DEFS["knobs"]["unevaluatedProperties"] is False


def test_table_names_are_the_studys_roman_numerals():
    pattern = SCHEMA["properties"]["tables"]["propertyNames"]["pattern"]
    assert pattern == "^(" + "|".join(study.ROMAN) + ")$"


def test_authors_keys_in_the_schema_are_the_studys_sections():
    pattern = re.compile(DEFS["knob_values"]["properties"]["authors"]["propertyNames"]["pattern"])
    for _, keys in study.AUTHORS_TAGS:
        assert all(pattern.match(k) for k in keys)
    assert not pattern.match("attention_softmax") and not pattern.match("tracking.enabled")


def _resolve(node: dict) -> dict:
    return DEFS[node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node


def _schema_range(node: dict) -> run_config.Range:
    """The schema's bounds of a numeric node as a run-config Range."""
    node = _resolve(node)
    if "exclusiveMinimum" in node:
        return run_config.Range(node["exclusiveMinimum"], node.get("maximum"), lo_open=True)
    return run_config.Range(node.get("minimum"), node.get("maximum"))


def _numeric_recipe_keys(props: dict, prefix: str = ""):
    """(dotted run-config key, schema node) of every numeric property under the schema's recipe."""
    for name, node in props.items():
        node = _resolve(node)
        if node.get("type") == "object":
            yield from _numeric_recipe_keys(node.get("properties", {}), f"{prefix}{name}.")
        elif node.get("type") == "array" and node.get("items", {}).get("type") in ("integer", "number"):
            yield prefix + name, node["items"]
        elif node.get("type") in ("integer", "number") and "enum" not in node:
            yield prefix + name, node


# The schema's numeric nodes outside the recipe that stand for run-config keys (knobs and presets).
KNOB_NODES = [
    ("model.num_heads", DEFS["knob_values"]["properties"]["K"]),
    ("loss.lambda1", DEFS["knob_values"]["properties"]["lambda1"]),
    ("loss.lambda2", DEFS["knob_values"]["properties"]["lambda2"]),
    ("loss.lambda3", DEFS["knob_values"]["properties"]["lambda3"]),
    ("loss.gamma", DEFS["knob_values"]["properties"]["gamma"]),
    ("seed", SCHEMA["properties"]["seeds"]["items"]),
    ("seed", PRESET["properties"]["seeds"]["items"]),
    *((f"data.synthetic.{k}", node) for k, node in PRESET["properties"]["synthetic"]["properties"].items()
      if node.get("type") in ("integer", "number")),
]
SCHEMA_BOUNDS = [*_numeric_recipe_keys(RECIPE), *KNOB_NODES]


@pytest.mark.parametrize("key, node", SCHEMA_BOUNDS, ids=[k for k, _ in SCHEMA_BOUNDS])
def test_schema_bounds_are_the_run_configs(key, node):
    """Each numeric bound the schema states for config.yaml repeats mhsa.switches.BOUNDS, the one place."""
    assert key in run_config.BOUNDS, f"{key} has bounds in the schema but none in mhsa.switches.BOUNDS"
    assert _schema_range(node) == run_config.BOUNDS[key]


def _numeric_fields(cls, prefix: str = ""):
    """(dotted key, "int" | "float") of every numeric field of the run config (milestones: int)."""
    import dataclasses

    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            yield from _numeric_fields(type(default), f"{prefix}{f.name}.")
        elif f.type in ("int", "float"):
            yield prefix + f.name, f.type
        elif f.name == "milestones":
            yield prefix + f.name, "int"


FIELD_TYPES = {**dict(_numeric_fields(run_config.RunConfig)),
               **{f"data.synthetic.{k}": "int" for k in run_config.SYNTHETIC_KEYS if k != "labels"}}


def test_every_numeric_knob_of_every_section_has_bounds():
    """A new int/float field of any run-config section without an entry in BOUNDS fails here."""
    fields = set(dict(_numeric_fields(run_config.RunConfig)))
    assert {"data.pad", "seed", "threads", "data.test_batch", "optim.momentum", "optim.milestones"} <= fields
    assert fields - set(run_config.BOUNDS) == set()
    assert set(run_config.BOUNDS) <= set(FIELD_TYPES)  # no bound of a key that does not exist


@pytest.mark.parametrize("key", sorted(run_config.BOUNDS))
def test_each_bound_is_enforced_at_its_edge(key):
    """The bound itself is accepted and one step beyond it is rejected, naming the key."""
    bound = run_config.BOUNDS[key]
    step = 1 if FIELD_TYPES[key] == "int" else 1e-9
    for edge, is_open, sign in ((bound.lo, bound.lo_open, -1), (bound.hi, bound.hi_open, 1)):
        if edge is None:
            continue
        inside = edge - sign * step if is_open else edge
        _probe(key, inside)
        with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
            _probe(key, edge if is_open else edge + sign * step)


def _probe(key: str, value):
    """A run config with `key` set to `value` (and what must go with it so that only `key` decides)."""
    data: dict = {}
    node = data
    *sections, leaf = key.split(".")
    for part in sections:
        node = node.setdefault(part, {})
    node[leaf] = [value] if leaf == "milestones" else value
    if key in ("data.height", "data.width"):
        data["data"].update({"height": max(value, 16), "width": max(value, 16)})
        data["data"][leaf] = value
        data["model"] = {"num_heads": 1}  # the smallest input has one feature-map position (K <= h*w)
    if key in ("optim.epochs", "optim.warmup_epochs"):  # warm-up must fit into the epochs
        data["optim"].update({"warmup_epochs": 0, "epochs": 10, leaf: value})
    if key == "model.num_heads":
        data["data"] = {"height": 384, "width": 128}
    if key == "model.attention_layers":
        data["model"]["attention_mlp"] = "paper"
    return build_run_config(data)


def test_knob_bounds_match_the_run_config():
    knobs = DEFS["knob_values"]["properties"]
    assert knobs["K"]["minimum"] == 1
    build_run_config({"model": {"num_heads": 1}})
    with pytest.raises(ConfigError, match="model.num_heads"):
        build_run_config({"model": {"num_heads": 0}})


def test_synthetic_bounds_match_the_generator():
    props = PRESET["properties"]["synthetic"]["properties"]
    n, per = props["num_ids"]["minimum"], props["images_per_id"]["minimum"]
    synthetic.generator_params("market1501", 0, n, per, None, 64, 32, None)
    with pytest.raises(ConfigError):
        synthetic.generator_params("market1501", 0, n - 1, per, None, 64, 32, None)
    with pytest.raises(ConfigError):
        synthetic.generator_params("market1501", 0, n, per - 1, None, 64, 32, None)


def test_config_yaml_validates_and_a_misspelled_knob_does_not():
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    validator = jsonschema.Draft202012Validator(SCHEMA)
    validator.validate(cfg)
    bad = yaml.safe_load((ROOT / "config.yaml").read_text())
    bad["tables"]["VIII"]["rows"][1]["fusoin"] = bad["tables"]["VIII"]["rows"][1].pop("fusion")
    errors = list(validator.iter_errors(bad))
    assert errors and any("fusoin" in e.message for e in errors)
    bad = yaml.safe_load((ROOT / "config.yaml").read_text())
    bad["recipe"]["amp"] = False  # a bare `off` in YAML
    assert any("False" in e.message for e in validator.iter_errors(bad))
