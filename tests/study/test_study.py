"""The study: every table row maps to a cell; shared configurations train once."""

import copy
from pathlib import Path

import pytest

from mhsa.config import build_run_config
from mhsa.study.build import StudyError, build_study, cell_overrides, load_study_config, table_number

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def config():
    return load_study_config(ROOT / "config.yaml")


def test_paper_grid_cell_count(config):
    """Hand count: I 16, II 3, III 3, V 32, VII 16, VIII 3, IX 5, X 9, XI 10, Fig.9 16, Fig.10 15, Fig.7 1
    = 129; XII: the 3 public-code rows x 2 sets = 6 (the paper-text rows are Table I/II cells); XIII:
    19 single-difference rows (the paper-text row and the all-on row are cells of II and XII)."""
    study = build_study(config, "paper")
    assert len(study.cells) == 129 + 6 + 19  # Fig. 7's MHSAB and MHSAB+ACM reuse cells
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
    # the row it is compared with must be another row of its table (docs/tables.md, "Marks")
    ({"row": "x", "variant": "mhsam", "compare_to": "Baseline"}, "compare_to 'Baseline' is not another row"),
    ({"row": "x", "variant": "mhsam", "compare_to": "x"}, "compare_to 'x' is not another row"),
])
def test_bad_rows_are_named(config, row, message):
    cfg = _with(config, tables={"II": dict(config["tables"]["II"], rows=[row])})
    with pytest.raises(StudyError, match=message):
        build_study(cfg, "paper")


def test_table_numbers():
    assert [table_number(t) for t in ("I", "IV", "IX", "XI", "XII", "XIII")] == [1, 4, 9, 11, 12, 13]


def _with(config, **sections):
    """config with `sections` replaced; with `tables`, each preset's table list keeps only those that remain
    (the paper preset names its tables: I-XIII, not the premise preset's XIV)."""
    cfg = copy.deepcopy(config)
    cfg.update(sections)
    if "tables" in sections:
        for preset in cfg["presets"].values():
            if "tables" in preset:
                preset["tables"] = [t for t in preset["tables"] if t in cfg["tables"]]
    return cfg


def test_misspelled_knob_in_a_row_is_rejected_naming_row_and_key(config):
    """docs/reliability.md case 2: `fusoin: concat` used to plan 10 cells instead of 11 and report the SAFFM cell."""
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


# ---------------------------------------------------- two readings (docs/paper-to-code.md "Two readings")

FULL = "mhsam-K8-fdrt0.0001-ihtl1-acm0.001g0.001"


def _row_cells(study, table, row):
    return {r.dataset: r.cells[0] for r in study.rows if r.table == table and r.row == row}


def test_paper_text_rows_of_table_xii_are_the_paper_cells(config):
    study = build_study(config, "paper")
    assert _row_cells(study, "XII", "Baseline (paper text)") == {
        "market1501": _row_cells(study, "I", "Baseline")["market1501"],
        "occluded_duke": _row_cells(study, "II", "Baseline")["occluded_duke"]}
    assert _row_cells(study, "XII", "MHSA-Net (K=8) (paper text)")["occluded_duke"] == \
        _row_cells(study, "II", "MHSA-Net (K=8)")["occluded_duke"] == f"occluded_duke__{FULL}__s0"
    assert _row_cells(study, "XIII", "paper text") == {"occluded_duke": f"occluded_duke__{FULL}__s0"}


def test_public_code_rows_train_the_code_reading(config):
    study = build_study(config, "paper")
    full = config["variants"]["authors_code"]["authors"]
    dagger = _row_cells(study, "XII", "MHSA-Net† (K=8) (public code)")
    assert dagger == {d: f"{d}__mhsam-K8-fdrt0.0001-ihtl1-acm0.0001g0.001-noce-authors__s0"
                      for d in ("market1501", "occluded_duke")}
    # authors_code itself (the code as shipped) is MHSA-Net† under the code's reading: the same cell
    assert study.cells[dagger["market1501"]].knobs == \
        build_study(_with(config, tables={"XII": dict(config["tables"]["XII"], rows=[
            {"row": "x", "variant": "authors_code"}])}), "paper").cells[dagger["market1501"]].knobs
    cell = study.cells[dagger["occluded_duke"]]
    o = cell_overrides(study, cell)
    assert o["model"]["attention_softmax"] == "positions" and o["model"]["num_heads"] == 8
    assert o["loss"]["lambda3"] == 1e-4 and o["loss"]["global_ce"] is False
    assert o["loss"]["competition_reduction"] == "sum" and o["optim"]["warmup"] == "staircase"
    assert set(o["eval"]["targets"]) == {"occluded_duke"}
    assert build_run_config(study.config["recipe"], o).eval.rerank_input == "euclidean"  # (l): both readings
    assert {f"{s}.{k}" for s in ("model", "loss", "data", "optim", "eval") for k in o[s]} >= set(full)
    net = _row_cells(study, "XII", "MHSA-Net (K=8) (public code)")["occluded_duke"]
    assert net == "occluded_duke__mhsam-K8-fdrt0.0001-ihtl1-acm0.0001g0.001-authors__s0"
    assert _row_cells(study, "XIII", "public code (all on; CE on q*)")["occluded_duke"] == net


def test_baseline_under_the_code_reading_keeps_only_keys_that_touch_it(config):
    study = build_study(config, "paper")
    cid = _row_cells(study, "XII", "Baseline (public code)")["market1501"]
    assert cid == "market1501__baseline-a.f.k.m.ls.co.sa.in__s0"
    assert study.cells[cid].knobs["authors"] == {
        "data.random_erasing": 0.5, "data.erasing": "cutout", "data.sampler": "authors", "loss.label_smoothing": 0.1,
        "model.extra_bottleneck": True, "model.init": "authors", "optim.warmup": "staircase",
        "optim.milestone_epoch": "at"}
    # a Baseline row of the code reading with the MHSA-Net knobs set is still the same cell
    cfg = copy.deepcopy(config)
    cfg["tables"]["XII"]["rows"].append({"row": "y", "variant": "authors_code", "mhsam": False,
                                         "global_ce": True})
    assert len(build_study(cfg, "paper").cells) == len(study.cells)


def test_ablation_rows_turn_on_one_difference_each(config):
    study = build_study(config, "paper")
    rows = [r for r in study.rows if r.table == "XIII"]
    assert {r.dataset for r in rows} == {"occluded_duke"} and all(r.mode == "concat" for r in rows)
    assert all(r.paper_row == "MHSA-Net (K=8)" for r in rows)
    base = study.cells[f"occluded_duke__{FULL}__s0"].knobs
    single = rows[1:-1]
    assert len(single) == 19 and len({r.cells[0] for r in single}) == 19
    for r in single:
        knobs = study.cells[r.cells[0]].knobs
        changed = {k for k in base if k != "authors" and knobs[k] != base[k]}
        # one difference: a few `authors` keys of one tag (+ lambda3 for the competition forms)
        tag = r.cells[0].split("-a.")[1].split("__")[0]
        assert "." not in tag, r.row
        assert f"({tag})" in r.row or tag in ("ls", "co", "sa", "sp", "in"), r.row
        assert changed == ({"lambda3"} if tag in ("j", "j2") else set()), r.row
        assert knobs["authors"] and "eval.rerank_input" not in knobs["authors"]
    assert "eval.rerank_input" not in study.cells[_row_cells(study, "XII", "MHSA-Net (K=8) (public code)")[
        "occluded_duke"]].knobs["authors"]  # (l) is the paper-text default now: no difference left
    a = study.cells[f"occluded_duke__{FULL}-a.a__s0"]
    assert a.knobs["authors"] == {"model.attention_softmax": "positions"}
    assert cell_overrides(study, a)["model"]["attention_softmax"] == "positions"
    j2 = study.cells["occluded_duke__mhsam-K8-fdrt0.0001-ihtl1-acm1e-06g0.001-a.j2__s0"]
    assert cell_overrides(study, j2)["loss"]["competition_threshold"] == 1e-3


def test_authors_rows_merge_into_the_variant_and_ids_are_deterministic(config):
    from mhsa.study.build import authors_suffix

    assert authors_suffix({}) == ""
    assert authors_suffix({"loss.distance": "euclidean", "model.attention_softmax": "positions"}) == "-a.a.h"
    assert authors_suffix(dict(config["variants"]["authors_code"]["authors"])) == "-authors"
    odd = {"loss.distance": "euclidean", "loss.competition_threshold": 0.5}
    assert authors_suffix(odd) == authors_suffix(dict(reversed(odd.items()))) and \
        authors_suffix(odd).startswith("-a.") and len(authors_suffix(odd)) == 3 + 8
    cfg = _with(config, tables={"II": dict(config["tables"]["II"], rows=[
        {"row": "x", "variant": "mhsa_net_authors", "authors": {"loss.distance": "squared"}}])}, figures={})
    (cell,) = build_study(cfg, "paper").cells.values()
    assert cell.knobs["authors"]["loss.distance"] == "squared"  # the row's value wins
    assert cell.knobs["authors"]["model.attention_softmax"] == "positions"  # the variant's keys stay
    # (h) reverted: no tag set covers the mapping, so the id carries its digest
    digest = authors_suffix(cell.knobs["authors"])
    assert cell.id == f"occluded_duke__mhsam-K8-fdrt0.0001-ihtl1-acm0.0001g0.001{digest}__s0"
    assert len(digest) == len("-a.") + 8


@pytest.mark.parametrize("authors, message", [
    ({"model.attention_sofmax": "positions"}, r"Table II / x: authors: .*model\.attention_sofmax"),
    ({"model.attention_softmax": "everywhere"}, r"Table II / x: authors: .*attention_softmax"),
    ({"attention_softmax": "positions"}, r"Table II / x: authors: 'attention_softmax' is not a dotted"),
    ({"loss.lambda3": 1.0}, r"Table II / x: authors: 'loss\.lambda3' is set by a knob"),
])
def test_bad_authors_keys_are_rejected_naming_the_row(config, authors, message):
    cfg = _with(config, tables={"II": dict(config["tables"]["II"], rows=[{"row": "x", "variant": "mhsa_net",
                                                                         "authors": authors}])})
    with pytest.raises(StudyError, match=message):
        build_study(cfg, "paper")


def test_bad_authors_key_in_a_variant_is_rejected_even_unused(config):
    cfg = copy.deepcopy(config)
    cfg["variants"]["unused"] = {"authors": {"optim.warmpu": "staircase"}}
    with pytest.raises(StudyError, match=r"variants\.unused: authors: .*optim\.warmpu"):
        build_study(cfg, "ci")


def test_two_readings_tables_run_in_paper_and_demo_not_ci(config):
    for preset in ("paper", "demo"):
        assert {"XII", "XIII"} <= set(build_study(config, preset).table_ids())
    assert build_study(config, "ci").table_ids() == ["II", "IV", "VI", "VIII"]


def test_every_cell_is_evaluated_in_every_branch(config):
    """Per-branch diagnostics (docs/demo-study.md): q*, p*, [p*, q*] and each head, whatever the rows need."""
    study = build_study(config, "ci")
    for cell in study.cells.values():
        for target in cell_overrides(study, cell)["eval"]["targets"].values():
            if cell.knobs["mhsam"]:
                K = cell.knobs["K"]
                assert {"global", "local", "concat", *(f"head{i}" for i in range(1, K + 1))} <= set(target["modes"])
            else:
                assert "global" in target["modes"]


def test_the_rehearsal_preset_is_the_paper_recipe_on_published_size_stand_ins(config):
    """One cell per training set; Market-1501 at the paper's recipe with Table I's test modes and Table IV's
    sets, the other sets on the reduced model and input their dataset_recipe states; seeded weights of each
    backbone under the results directory; the step cap in every cell."""
    from mhsa.config import build_run_config

    study = build_study(config, "rehearsal")
    paper = build_study(config, "paper")
    assert {c.dataset for c in study.cells.values()} == {"market1501", "dukemtmc", "cuhk03_detected",
                                                           "cuhk03_labeled", "occluded_duke", "p_dukemtmc"}
    assert set(study.cells) <= set(paper.cells)  # the paper's own cells (ids), a subset of its grid
    for cell in study.cells.values():
        cfg = build_run_config(study.config["recipe"], cell_overrides(study, cell))
        assert cfg.optim.max_steps == 2 and cfg.device == "cpu" and cfg.data.root.startswith("data/rehearsal/")
        assert cfg.optim.epochs == 400 and (cfg.data.p, cfg.data.k) == (32, 4) and cfg.model.last_stride == 1
        if cell.dataset == "market1501":
            assert (cfg.model.backbone, cfg.data.height, cfg.data.width) == ("resnet50", 384, 128)
            assert cfg.model.pretrained == "results/rehearsal/pretrained/seeded-resnet50.pth"
            assert set(cell.targets) == {"market1501", "partial_reid", "partial_ilids"}
            assert {"concat", "local", "concat_rerank"} <= set(cfg.eval.targets["market1501"]["modes"])
        else:
            assert (cfg.model.backbone, cfg.data.height, cfg.data.width) == ("resnet18", 128, 64)
            assert cfg.model.pretrained == "results/rehearsal/pretrained/seeded-resnet18.pth"
    moved = build_study(config, "rehearsal", results_dir="elsewhere")
    cell = next(iter(moved.cells.values()))
    assert cell_overrides(moved, cell)["model"]["pretrained"] == "elsewhere/pretrained/seeded-resnet50.pth"


@pytest.mark.parametrize("entry, message", [
    ({"rows": ["MHSA-Net (K=9)"]},
     r"presets.rehearsal.rows: no table of the preset has the row\(s\) \['MHSA-Net \(K=9\)'\]"),
    ({"rows": ["Baseline"], "tables": ["I", "VIII"]}, r"presets.rehearsal.rows leaves Table VIII without rows"),
    ({"dataset_recipe": {"dukemtmc": {"loss": {"lambda1": 1.0}}}},
     r"dataset_recipe.dukemtmc: \['loss.lambda1'\] are set by the rows"),
    ({"dataset_recipe": {"dukemtmc": {"model": {"num_heads": 4}}}}, r"\['model.num_heads'\] are set by the rows"),
    ({"dataset_recipe": {"dukmtmc": {}}}, r"presets.rehearsal.dataset_recipe: unknown key\(s\) \['dukmtmc'\]"),
    ({"dataset_recipe": {"dukemtmc": {"data": {"height": 8}}}}, r"dataset_recipe.dukemtmc: .*'data.height'"),
    ({"datasets": {"market1510": {"root": "x"}}}, r"presets.rehearsal.datasets: unknown key\(s\) \['market1510'\]"),
])
def test_a_presets_rows_datasets_and_dataset_recipe_are_checked(config, entry, message):
    bad = copy.deepcopy(config)
    bad["presets"]["rehearsal"].update(entry)
    with pytest.raises(StudyError, match=message):
        build_study(bad, "rehearsal")


# ----------------------------------------------------------------------- the occlusion knob (premise)
def test_the_occlusion_knob_gives_each_level_its_cells_and_its_data_sets():
    from mhsa.study.build import cell_data, data_sets

    study = build_study(load_study_config(ROOT / "config.yaml"), "premise")
    ids = list(study.cells)
    for level in (0, 35, 65):
        assert f"occluded_duke__baseline-occ{level}__s0" in ids  # the Baseline keeps its data knob
        assert any(i.endswith(f"-occ{level}__s2") and "mhsam" in i for i in ids)
    assert set(data_sets(study)) == {"occluded_duke", "occluded_duke-occ0", "occluded_duke-occ35",
                                     "occluded_duke-occ65"}
    cell = study.cells["occluded_duke__baseline-occ65__s0"]
    assert cell_data(study, cell) == {"occluded_duke-occ65": ("occluded_duke", 0.65)}
    over = cell_overrides(study, cell)
    assert over["data"]["root"] == over["eval"]["targets"]["occluded_duke"]["root"] == \
        "results/premise/synthetic/occluded_duke-occ65"
    assert study.config["recipe"]["model"]["pretrained"] == "results/premise/pretrain/backbone.pt"
    assert study.config["synthetic"]["labels"] is True


def test_the_occlusion_knob_is_refused_on_real_data():
    config = load_study_config(ROOT / "config.yaml")
    config["tables"]["II"]["rows"][0]["occlusion"] = 0.5
    with pytest.raises(StudyError, match="occlusion.*real data"):
        build_study(config, "paper")


def test_two_models_never_share_a_cell_id(monkeypatch):
    """The safety net behind the ids: were a knob left out of the id, build_study refuses instead of
    showing one model's numbers under another's row."""
    from mhsa.study import build

    real = build.cell_id
    monkeypatch.setattr(build, "cell_id", lambda d, k, s: real(d, {**k, "occlusion": None}, s))
    with pytest.raises(StudyError, match="same cell id"):
        build_study(load_study_config(ROOT / "config.yaml"), "premise")
