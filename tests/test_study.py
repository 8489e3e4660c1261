"""The study: every table row maps to a cell; shared configurations train once."""

import copy
from pathlib import Path

import pytest

from mhsa.study import StudyError, build_study, cell_overrides, load_config, table_number

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def config():
    return load_config(ROOT / "config.yaml")


def test_paper_grid_cell_count(config):
    """Hand count: I 16, II 3, III 3, V 32, VII 16, VIII 3, IX 5, X 9, XI 10, Fig.9 16, Fig.10 15, Fig.7 1."""
    study = build_study(config, "paper")
    assert len(study.cells) == 129  # Fig. 7's MHSAB (= mhsam_ihtl_fdrt) and MHSAB+ACM (= mhsa_net) reuse cells
    assert all(r.cells and all(c in study.cells for c in r.cells) for r in study.rows)


def test_shared_cells_train_once(config):
    study = build_study(config, "paper")
    full = "market1501__mhsam-K8-fdrt0.0001-ihtl1-acm0.001g0.001__s0"
    cell = study.cells[full]
    # MHSA-Net, MHSA-Net*, re-ranking (Table I), Table IV's partial sets: one trained cell.
    assert cell.targets["market1501"] == {"concat", "local", "concat_rerank"}
    assert cell.targets["partial_reid"] == {"concat", "local"}
    # Table VII K=8 and Fig. 9/10 MHSAM K=8 and Table V Baseline+MHSAM are the same cell.
    mhsam8 = [r for r in study.rows if r.cells == ["cuhk03_detected__mhsam-K8__s0"]]
    assert {r.table for r in mhsam8} >= {"V", "VII", "IX", "X", "XI", "9", "10"}
    heads = study.cells["occluded_duke__mhsam-K8-fdrt0.0001-ihtl1-acm0.001g0.001__s0"].targets["occluded_duke"]
    assert {f"head{i}" for i in range(1, 9)} <= heads


def test_seeds_multiply_cells(config):
    cfg = dict(config, seeds=[0, 1, 2])
    study = build_study(cfg, "ci")
    assert len(study.cells) == 3 * len(build_study(config, "ci").cells)
    assert all(len(r.cells) == 3 for r in study.rows)


def test_cell_overrides_carry_only_the_cells_knobs(config):
    study = build_study(config, "demo")
    cell = study.cells["cuhk03_detected__mhsam-K8-fdrt1e-06__s0"]
    o = cell_overrides(study, cell)
    assert o["loss"]["lambda1"] == 1e-6 and o["loss"]["lambda2"] == 0 and o["model"]["num_heads"] == 8
    assert o["data"]["root"].endswith("synthetic/cuhk03_detected")
    assert set(o["eval"]["targets"]) == {"cuhk03_detected"}


@pytest.mark.parametrize("row, message", [
    ({"row": "x", "variant": "nope"}, "unknown variant"),
    ({"row": "x", "variant": "baseline", "mode": "local"}, "needs MHSAM"),
    ({"row": "x", "variant": "mhsam", "mode": "head9"}, "K=8"),
    ({"row": "x", "variant": "mhsam", "mode": "fancy"}, "unknown test mode"),
])
def test_bad_rows_are_named(config, row, message):
    cfg = dict(config)
    cfg["tables"] = {"II": dict(config["tables"]["II"], rows=[row])}
    with pytest.raises(StudyError, match=message):
        build_study(cfg, "paper")


def test_table_numbers():
    assert [table_number(t) for t in ("I", "IV", "IX", "XI")] == [1, 4, 9, 11]


def _with(config, **sections):
    cfg = copy.deepcopy(config)
    cfg.update(sections)
    return cfg


def test_misspelled_knob_in_a_row_is_rejected_naming_row_and_key(config):
    """issue 11: `fusoin: concat` used to plan 10 cells instead of 11 and report the SAFFM cell."""
    cfg = copy.deepcopy(config)
    row = cfg["tables"]["VIII"]["rows"][1]
    row["fusoin"] = row.pop("fusion")
    with pytest.raises(StudyError, match=r"Table VIII / MHSA-Net\* \(CONCAT\): unknown key\(s\) \['fusoin'\]"):
        build_study(cfg, "ci")


@pytest.mark.parametrize("section, entry, where", [
    ("variants", {"baseline": {"mhsam": False, "lamda1": 1.0}}, r"variants\.baseline: unknown key\(s\) \['lamda1'\]"),
    ("variant_defaults", {"Kk": 8}, r"variant_defaults: unknown key\(s\) \['Kk'\]"),
    ("workflow", {"train_thread": 2}, r"workflow: unknown key\(s\) \['train_thread'\]"),
])
def test_unknown_keys_in_sections_are_rejected(config, section, entry, where):
    cfg = copy.deepcopy(config)
    cfg[section] = {**(cfg.get(section) or {}), **entry}
    with pytest.raises(StudyError, match=where):
        build_study(cfg, "ci")


def test_unknown_keys_in_a_preset_are_rejected(config):
    cfg = copy.deepcopy(config)
    cfg["presets"]["ci"]["seed"] = [1]
    with pytest.raises(StudyError, match=r"presets\.ci: unknown key\(s\) \['seed'\]"):
        build_study(cfg, "ci")
    cfg = copy.deepcopy(config)
    cfg["presets"]["ci"]["synthetic"]["num_id"] = 3
    with pytest.raises(StudyError, match=r"presets\.ci\.synthetic: unknown key\(s\) \['num_id'\]"):
        build_study(cfg, "ci")
    cfg = copy.deepcopy(config)
    cfg["presets"]["ci"]["recipe"]["data"]["pp"] = 3
    with pytest.raises(StudyError, match=r"recipe \(preset 'ci'\).*data\.pp"):
        build_study(cfg, "ci")


def test_a_cell_the_trainer_would_reject_fails_at_parse_time_naming_its_rows(config):
    cfg = copy.deepcopy(config)
    build_study(cfg, "ci")  # ci's 64x32 input: a 4x2 map, 8 positions for K=8 heads
    cfg["tables"]["VIII"]["rows"][3]["K"] = 9  # 9 heads on 8 positions
    with pytest.raises(StudyError, match=r"Table VIII / MHSA-Net\* w/o RLM.*K=9 heads.*8 positions"):
        build_study(cfg, "ci")


def test_gamma_defaults_come_from_the_competition_loss(config):
    from mhsa.losses.competition import DEFAULT_GAMMA

    study = build_study(config, "paper")
    base = study.cells["market1501__baseline__s0"]
    assert cell_overrides(study, base)["loss"]["gamma"] == DEFAULT_GAMMA
    fdrt = study.cells["cuhk03_detected__mhsam-K8-fdrt1e-06__s0"]  # lambda3 = 0: gamma is moot
    assert cell_overrides(study, fdrt)["loss"]["gamma"] == config["variant_defaults"]["gamma"] == DEFAULT_GAMMA
