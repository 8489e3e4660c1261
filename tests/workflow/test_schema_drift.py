"""The workflow schema and the package say the same thing: enums, patterns, bounds and key sets.

Each check reads the value from workflow/schemas/config.schema.yaml and compares it with the
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

ROOT = Path(__file__).parents[2]
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
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


def test_test_mode_pattern_is_the_grammar():
    assert DEFS["test_mode"]["pattern"] == MODE_PATTERN
    pattern = re.compile(DEFS["test_mode"]["pattern"])
    for mode in ("global", "local", "concat", "head1", "head12", "concat_rerank", "head3_rerank"):
        assert pattern.match(mode) and parse_mode(mode)
    for mode in ("head0", "head", "fancy", "global_rerank_rerank", "Global", "head01"):
        assert not pattern.match(mode)
        with pytest.raises(ConfigError, match="unknown test mode"):
            parse_mode(mode)


def test_key_sets_are_the_studys():
    assert set(DEFS["knob_values"]["properties"]) == set(study.KNOBS)
    assert set(DEFS["row"]["properties"]) | set(study.KNOBS) == set(study.ROW_KEYS)
    assert set(PRESET["properties"]) == set(study.PRESET_KEYS)
    assert set(PRESET["properties"]["synthetic"]["properties"]) == set(synthetic.PRESET_PARAMS)
    assert set(SCHEMA["properties"]["workflow"]["properties"]) == set(study.WORKFLOW_KEYS)
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


def _bounds(schema: dict) -> tuple[float | None, bool, float | None]:
    """(lower bound, lower bound exclusive?, upper bound) of a numeric schema."""
    if "exclusiveMinimum" in schema:
        return schema["exclusiveMinimum"], True, schema.get("maximum")
    return schema.get("minimum"), False, schema.get("maximum")


def _run_config_probe(section: str | None, key: str, value):
    data = {key: value} if section is None else {section: {key: value}}
    # the height bound holds for both sides of the image
    if section == "data" and key in ("height", "width"):
        data["data"] = {"height": value, "width": value}
        data["model"] = {"num_heads": 1}  # the smallest input has one feature-map position (K <= h*w)
    if section == "optim" and key == "epochs":  # warm-up must fit into the epochs
        data["optim"]["warmup_epochs"] = 0
    return build_run_config(data)


# (schema node, run-config section, key, integer?)
RECIPE_BOUNDS = [
    (RECIPE["data"]["properties"]["p"], "data", "p", True),
    (RECIPE["data"]["properties"]["k"], "data", "k", True),
    (RECIPE["data"]["properties"]["height"], "data", "height", True),
    (RECIPE["data"]["properties"]["workers"], "data", "workers", True),
    (RECIPE["optim"]["properties"]["lr"], "optim", "lr", False),
    (RECIPE["optim"]["properties"]["epochs"], "optim", "epochs", True),
    (RECIPE["optim"]["properties"]["weight_decay"], "optim", "weight_decay", False),
    (RECIPE["optim"]["properties"]["decay"], "optim", "decay", False),
    (RECIPE["eval"]["properties"]["rerank_k1"], "eval", "rerank_k1", True),
    (RECIPE["eval"]["properties"]["rerank_k2"], "eval", "rerank_k2", True),
    (RECIPE["eval"]["properties"]["rerank_lambda"], "eval", "rerank_lambda", False),
    (RECIPE["checkpoint_every"], None, "checkpoint_every", True),
]


def _resolve(node: dict) -> dict:
    return DEFS[node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node


@pytest.mark.parametrize("node, section, key, integer", RECIPE_BOUNDS, ids=[b[2] for b in RECIPE_BOUNDS])
def test_recipe_bounds_match_the_run_config(node, section, key, integer):
    lo, exclusive, hi = _bounds(_resolve(node))
    assert lo is not None, f"schema gives no lower bound for {key}"
    step = 1 if integer else 1e-9
    if exclusive:
        _run_config_probe(section, key, lo + step)
    else:
        _run_config_probe(section, key, lo)
    with pytest.raises(ConfigError, match=key):
        _run_config_probe(section, key, lo if exclusive else lo - step)
    if hi is not None:
        _run_config_probe(section, key, hi)
        with pytest.raises(ConfigError, match=key):
            _run_config_probe(section, key, hi + step)


def test_knob_bounds_match_the_run_config():
    knobs = DEFS["knob_values"]["properties"]
    assert knobs["K"]["minimum"] == 1
    build_run_config({"model": {"num_heads": 1}})
    with pytest.raises(ConfigError, match="model.num_heads"):
        build_run_config({"model": {"num_heads": 0}})
    lo, exclusive, _ = _bounds(knobs["gamma"])
    assert (lo, exclusive) == (0, True)
    build_run_config({"loss": {"gamma": 1e-12}})
    with pytest.raises(ConfigError, match="loss.gamma"):
        build_run_config({"loss": {"gamma": 0.0}})
    for key in ("lambda1", "lambda2", "lambda3"):
        assert _bounds(_resolve(knobs[key]))[:2] == (0, False)
        build_run_config({"loss": {key: 0.0}})
        with pytest.raises(ConfigError, match=f"loss.{key}"):
            build_run_config({"loss": {key: -1e-9}})


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
