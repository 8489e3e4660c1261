"""Duplicates anywhere in the study are errors, never "the last one wins" (docs/reliability.md,
"Duplicates"): a key twice in one YAML mapping (config.yaml, a run config, a --set value), two rows
of one table with one name, a seed, table, figure, data set, metric or K listed twice, a paper number
given twice, a milestone or test mode listed twice; and misspelled section keys are rejected rather
than ignored. Each error names the file, line or config entry."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest

from mhsa.config import ConfigError, build_run_config, load_run_config
from mhsa.errors import ResultsError, describe
from mhsa.io import DuplicateKeyError, load_text
from mhsa.study.build import StudyError, build_study, load_study_config
from mhsa.study.keys import SCHEMA_PATH
from mhsa.study.tables import PAPER_CSV, load_paper

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config():
    return load_study_config(ROOT / "config.yaml")


def _edit(tmp_path, old: str, new: str, name: str = "config.yaml") -> Path:
    text = (ROOT / "config.yaml").read_text()
    assert text.count(old) == 1, old
    path = tmp_path / name
    path.write_text(text.replace(old, new))
    return path


# ------------------------------------------------------------------------------------ YAML keys
@pytest.mark.parametrize("old, new, key", [
    ("seeds: [0] ", "seeds: [0]\nseeds: [1] ", "seeds"),  # top level
    ("  mhsam_acm:       {lambda3: 1.0e-3}", "  mhsam_acm:       {lambda3: 1.0e-3, lambda3: 1.0}", "lambda3"),
    ("  baseline:        {mhsam: false}", "  baseline:        {mhsam: false}\n  baseline:        {}", "baseline"),
    ("  paper:\n    data_source: real", "  paper:\n    data_source: real\n    data_source: synthetic", "data_source"),
])
def test_a_key_twice_in_config_yaml_names_file_line_and_key(tmp_path, old, new, key):
    path = _edit(tmp_path, old, new)
    with pytest.raises(DuplicateKeyError) as err:
        load_study_config(path)
    msg = describe(err.value)
    original = (ROOT / "config.yaml").read_text()
    first = original[:original.index(old)].count("\n") + len(old.splitlines())  # the key's line, before the edit
    assert msg.startswith(f"{path}, line ") and f"key {key!r} is given twice" in msg, msg
    assert f"(first at line {first})" in msg, msg


def test_merge_keys_may_still_be_overridden():
    assert load_text("a: &a {x: 1, y: 2}\nb: {<<: *a, x: 3}\n") == {"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 2}}


def test_a_key_twice_in_a_run_config_or_a_set_value(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("name: x\nloss: {lambda1: 1.0e-4}\nloss: {lambda2: 2.0}\n")
    with pytest.raises(DuplicateKeyError, match=r"run\.yaml, line 3, column 1: key 'loss' is given twice"):
        load_run_config(run)
    with pytest.raises(DuplicateKeyError, match=r"--set eval\.targets=.*key 'm' is given twice"):
        build_run_config({}, None, ["eval.targets={m: {root: a}, m: {root: b}}"])
    with pytest.raises(ConfigError, match=r"--set optim\.milestones=\[1, : malformed YAML value"):
        build_run_config({}, None, ["optim.milestones=[1, "])


def test_the_train_command_reports_a_repeated_key_in_one_line(tmp_path, capsys):
    from mhsa.__main__ import main

    run = tmp_path / "run.yaml"
    run.write_text("name: x\nseed: 0\nseed: 1\n")
    assert main(["train", str(run), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"error: {run}, line 3, column 1: key 'seed' is given twice"), err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------- study entries
def _rows(config, table):
    return config["tables"][table]["rows"]


def test_two_rows_of_one_table_with_one_name(config):
    cfg = copy.deepcopy(config)
    _rows(cfg, "II").append({"row": "Baseline", "variant": "mhsa_net"})  # would show MHSA-Net's numbers
    with pytest.raises(StudyError, match=r"Table II / Baseline: the row name 'Baseline' is given twice"):
        build_study(cfg, "ci")


def test_two_figure_series_with_one_name(config):
    cfg = copy.deepcopy(config)
    cfg["figures"]["9"]["series"].append(dict(cfg["figures"]["9"]["series"][0]))
    with pytest.raises(StudyError, match=r"Fig\. 9 / .* \(K=\d+\): the row name .* is given twice"):
        build_study(cfg, "paper")


@pytest.mark.parametrize("edit, where", [
    (lambda c: c.update(seeds=[0, 1, 0]), r"seeds: seed 0 given more than once"),
    (lambda c: c["presets"]["sanity"].update(seeds=[2, 2]), r"presets\.sanity\.seeds: seed 2 given more"),
    (lambda c: c["presets"]["ci"].update(tables=["II", "IV", "II"]), r"presets\.ci\.tables: table 'II' given"),
    (lambda c: c["presets"]["ci"].update(figures=["7", "7"]), r"presets\.ci\.figures: figure '7' given"),
    (lambda c: c["tables"]["II"].update(datasets=["occluded_duke", "occluded_duke"]),
     r"tables\.II\.datasets: dataset 'occluded_duke' given"),
    (lambda c: c["tables"]["II"].update(metrics=["rank1", "mAP", "rank1"]), r"tables\.II\.metrics: metric 'rank1'"),
    (lambda c: c["figures"]["9"]["sweep"].update(K=[1, 2, 2]), r"figures\.9\.sweep\.K: K 2 given more than once"),
])
def test_a_value_listed_twice_is_an_error_naming_the_entry(config, edit, where):
    cfg = copy.deepcopy(config)
    edit(cfg)
    preset = "sanity" if "sanity" in where else "paper" if "figures" in where and "9" in where else "ci"
    with pytest.raises(StudyError, match=where):
        build_study(cfg, preset)


@pytest.mark.parametrize("edit, where", [
    (lambda c: c.update(seed=[0, 1]), r"the top level: unknown key\(s\) \['seed'\]"),  # `seeds:` would stay [0]
    (lambda c: c["datasets"]["partial_reid"].update(train_onn="market1501"), r"datasets\.partial_reid: unknown"),
    (lambda c: c["datasets"]["partial_reid"].update(train_on="market"), r"datasets\.partial_reid\.train_on: 'market'"),
    (lambda c: c["tables"]["II"].update(paper_tabels={}), r"tables\.II: unknown key\(s\) \['paper_tabels'\]"),
    (lambda c: c["figures"]["9"]["sweep"].update(k=[1]), r"figures\.9\.sweep: unknown key\(s\) \['k'\]"),
    (lambda c: _rows(c, "II").append({"variant": "baseline"}), r"Table II: a row without a `row` name"),
])
def test_a_misspelled_or_missing_section_key_is_not_ignored(config, edit, where):
    cfg = copy.deepcopy(config)
    edit(cfg)
    with pytest.raises(StudyError, match=where):
        build_study(cfg, "paper" if "figures" in where else "ci")


def test_seeds_must_be_distinct_non_negative_integers(config):
    for seeds, match in (([0, -1], r"integers >= 0, got \[-1\]"), (["0"], r"integers >= 0"), (3, "a list of seeds")):
        with pytest.raises(StudyError, match=match):
            build_study(dict(config, seeds=seeds), "ci")


def test_the_schema_rejects_the_same_duplicates():
    import jsonschema
    import yaml

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    for edit in (lambda c: c.update(seeds=[0, 0]), lambda c: c["presets"]["ci"].update(tables=["II", "II"]),
                 lambda c: c["tables"]["II"].update(metrics=["rank1", "rank1"]),
                 lambda c: c.update(seed=[0]), lambda c: c["datasets"]["partial_reid"].update(train_onn="x")):
        cfg = copy.deepcopy(base)
        edit(cfg)
        assert list(validator.iter_errors(cfg)), edit


# ------------------------------------------------------------------------ run config and paper
def test_a_milestone_or_test_mode_listed_twice(tmp_path):
    with pytest.raises(ConfigError, match=r"'optim\.milestones': must strictly increase"):
        build_run_config({"optim": {"milestones": [200, 200, 300]}})  # the lr would decay twice at 200
    with pytest.raises(ConfigError, match=r"'eval\.targets\.m\.modes': test mode\(s\) \['global'\] listed more"):
        build_run_config({"eval": {"targets": {"m": {"root": "r", "modes": ["global", "concat", "global"]}}}})


def test_a_paper_number_given_twice_names_both_lines(tmp_path):
    lines = PAPER_CSV.read_text().splitlines()
    path = tmp_path / "paper.csv"
    path.write_text("\n".join([*lines, lines[5].replace(lines[5].split(",")[-2], "99.9")]) + "\n")
    with pytest.raises(ResultsError) as err:
        load_paper(path)
    assert f"lines 6, {len(lines) + 1}:" in str(err.value) and "given 2 times" in str(err.value)
    assert str(path) in str(err.value)
    assert len(load_paper()) == len(lines) - 1  # the shipped transcription has none


def test_snakemake_reads_config_yaml_with_the_strict_loader(tmp_path, copy_workflow):
    """Snakemake's own `configfile:` loader keeps the last key: the Snakefile reads the file first."""
    import sys

    wd = copy_workflow(tmp_path)
    text = (wd / "config.yaml").read_text()
    (wd / "config.yaml").write_text(text.replace("seeds: [0] ", "seeds: [0]\nseeds: [1] ", 1))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "tables", "--config", "preset=ci"], cwd=wd,
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "config.yaml, line 14, column 1: key 'seeds' is given twice in one mapping (first at line 13)" in out
    assert "Traceback" not in out
