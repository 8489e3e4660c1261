"""mhsa.study.plots on a small fake study: K sweeps (Figs. 9/10), parameter sweeps, attention grid and overlays."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import yaml

from mhsa.config import ConfigError
from mhsa.study import plots as P
from mhsa.study.build import build_study, load_study_config
from mhsa.study.keys import SCHEMA_PATH
from mhsa.study.tables import load_paper

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    return Path(path).is_file() and Path(path).read_bytes()[:8] == PNG


@pytest.fixture(scope="module")
def study():
    cfg = load_study_config(ROOT / "config.yaml")
    cfg["seeds"] = [0, 1]
    cfg["presets"]["demo"]["tables"] = ["V", "VII", "IX", "X", "XI"]
    cfg["presets"]["demo"]["figures"] = ["7", "9", "10"]
    for fid in ("9", "10"):
        cfg["figures"][fid]["sweep"]["K"] = [6, 7, 8]
    return build_study(cfg, "demo")


@pytest.fixture(scope="module")
def paper():
    return load_paper()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, study) -> Path:
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    for cid, cell in study.cells.items():
        if cell.seed == 1 and cell.knobs.get("K") == 6:
            continue  # a K with a single seed: a point without an error bar
        ev = {
            t: {
                m: {k: float(rng.uniform(30, 90)) for k in ("rank1", "rank3", "rank5", "rank10", "mAP")}
                for m in modes
            }
            for t, modes in cell.targets.items()
        }
        (root / cid).mkdir()
        (root / cid / "metrics.json").write_text(json.dumps({"cell": cid, "eval": ev}))
    return root


@pytest.fixture(scope="module")
def metrics(runs):
    from mhsa.study.tables import load_metrics

    return load_metrics(runs)


def test_paper_points_of_k_sweeps(study, paper):
    pts = P.paper_points_for_series(study, "10", paper)

    def get(series, k, ds, m):
        hit = pts[(pts.series == series) & (pts.K == k) & (pts.dataset == ds) & (pts.metric == m)]
        return None if hit.empty else float(hit.value.iloc[0])

    assert get("MHSAM", 7, "market1501", "rank1") == 93.3  # Table VII K=7
    assert get("MHSAM", 6, "cuhk03_detected", "mAP") == 64.6  # Table VII K=6
    assert get("MHSAM+IHTL", 8, "market1501", "rank1") == 93.5  # Table V +IHTL (K=8)
    assert get("MHSAM+IHTL", 7, "cuhk03_detected", "rank1") == 70.7  # Table X K=7, lambda2=1.0
    assert get("MHSAM+IHTL", 7, "market1501", "rank1") is None  # unknown in the paper
    assert get("MHSAM+IHTL", 6, "cuhk03_detected", "rank1") is None
    pts9 = P.paper_points_for_series(study, "9", paper)
    fdrt = pts9[pts9.series == "MHSAM+FDRT"]
    assert set(fdrt.K) == {8}
    assert float(fdrt[(fdrt.dataset == "cuhk03_detected") & (fdrt.metric == "rank1")].value.iloc[0]) == 70.0


def test_k_sweep_figures(tmp_path, study, metrics, paper):
    for fid in ("9", "10"):
        assert is_png(P.plot_k_sweep(study, fid, metrics, paper, tmp_path / f"fig_{fid}.png"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.fixture
def drawn(monkeypatch):
    """The figures plots.py saves, kept open for the test to read (titles, legends, colours)."""
    kept = []
    real = P.save_figure

    def keep(fig, path, dpi=120):
        kept.append(fig)
        fig.savefig(Path(path).with_suffix(".png"), format="png", dpi=dpi)
        return Path(path)

    monkeypatch.setattr(P, "save_figure", keep)
    yield kept
    for fig in kept:
        P.plt.close(fig)
    assert real


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]


def test_k_sweeps_read_as_the_papers_figures(tmp_path, study, metrics, paper, drawn):
    """Panels (a)-(d) in the paper's order (a data set per row, Rank-1 then mAP), the paper's colours
    (MHSAM orange, the added term blue), and a line saying why a series has paper stars at some K only."""
    P.plot_k_sweep(study, "9", metrics, paper, tmp_path / "fig_9.png")
    (fig,) = drawn
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["(a) Market-1501 - Rank-1", "(b) Market-1501 - mAP",
                      "(c) CUHK03-Detected - Rank-1", "(d) CUHK03-Detected - mAP"]
    handles = {h.get_label(): h for h in fig.legends[0].legend_handles}
    assert matplotlib.colors.to_hex(handles["MHSAM (paper)"].get_color()) == matplotlib.colors.to_hex("tab:orange")
    assert matplotlib.colors.to_hex(handles["MHSAM+FDRT (paper)"].get_color()) == matplotlib.colors.to_hex("tab:blue")
    # the fake runs hold no per-query results: with 2 seeds the t interval over seeds, and at the K with one
    # seed no interval at all (the legend says both)
    assert "MHSAM+FDRT (ours, mean of 1-2 seeds, 95 % interval: t over seeds (not every point))" in handles
    note = " ".join(t for t in _texts(fig) if t.startswith("Paper stars")).replace("\n", " ")
    assert "Fig. 9 prints no numbers" in note
    # MHSAM's K=8 is Table V's Baseline+MHSAM (K=8), the first row of the study with that model
    assert "MHSAM: every K (Table VII, Table V)" in note and "MHSAM+FDRT: K=8 (Table V)" in note


def test_star_note_names_the_k_with_a_paper_number(study, paper):
    pts = P.paper_points_for_series(study, "10", paper)
    note = P.star_note("10", ["MHSAM", "MHSAM+IHTL"], [6, 7, 8], pts)
    assert "MHSAM: every K (Table VII, Table V)" in note
    assert "MHSAM+IHTL: K=7,8 (Table X, Table V)" in note


def test_k_sweep_colours_are_checked_when_the_study_is_built():
    cfg = load_study_config(ROOT / "config.yaml")
    cfg["figures"]["9"]["plot"]["colors"] = ["tab:orange"]
    with pytest.raises(ConfigError, match=r"figures\.9\.plot\.colors has 1 colour\(s\) for 2 series"):
        build_study(cfg, "demo")
    cfg["figures"]["9"]["plot"]["colors"] = ["tab:orange", "blu"]
    with pytest.raises(ConfigError, match=r"figures\.9\.plot\.colors: \['blu'\] are not colours"):
        build_study(cfg, "demo")


def test_sweep_legends_name_their_reference_rows(tmp_path, study, metrics, paper, drawn):
    P.plot_param_sweep(study, "IX", metrics, paper, tmp_path / "ix.png")
    P.plot_param_sweep(study, "X", metrics, paper, tmp_path / "x.png")
    ix, x = ({h.get_label() for h in fig.legends[0].legend_handles} for fig in drawn)
    assert {"Baseline+MHSAM (ours)", "Baseline+MHSAM (paper)"} <= ix
    assert not any("reference row" in label for label in ix | x)
    assert {"K=7 Baseline+MHSAM (ours)", "K=8 Baseline+MHSAM (paper)"} <= x


def test_param_sweeps(tmp_path, study, metrics, paper):
    names = [P.sweep_file_name(study, t) for t in study.table_ids() if study.config["tables"][t].get("plot")]
    assert names == ["table_9_lambda1.png", "table_10_lambda2.png", "table_11_lambda3_gamma.png"]
    for tid, name in zip(("IX", "X", "XI"), names, strict=True):
        assert is_png(P.plot_param_sweep(study, tid, metrics, paper, tmp_path / name))
    panels = P.sweep_panels(study, "XI")
    xs = [sorted(study.cells[r.cells[0]].knobs[p.x] for r in p.rows) for p in panels]
    assert xs[0] == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert xs[1] == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 0.5, 1.0])
    assert [[r.row for r in p.reference] for p in panels] == [["Baseline+MHSAM"]] * 2
    assert [p.scale for p in panels] == ["log", "log"]
    (x_panel,) = P.sweep_panels(study, "X")
    assert x_panel.group == "K" and len(x_panel.rows) == 10
    assert [r.row for r in x_panel.reference] == ["K=7 Baseline+MHSAM", "K=8 Baseline+MHSAM"]


def test_a_sweep_plot_is_a_config_edit(tmp_path):
    """Table VII drawn as a K sweep by adding a `plot:` entry (no code): the rows are the K's of
    Baseline+MHSAM, the reference the row without MHSAM; a bad knob is a ConfigError naming it."""
    cfg = load_study_config(ROOT / "config.yaml")
    cfg["presets"]["demo"]["tables"] = ["VII"]
    cfg["presets"]["demo"]["figures"] = []
    cfg["tables"]["VII"]["plot"] = {"kind": "param_sweep",
                                    "panels": [{"x": "K", "reference": {"mhsam": False}, "label": "heads"}]}
    study = build_study(cfg, "demo")
    (panel,) = P.sweep_panels(study, "VII")
    for ds in ("market1501", "cuhk03_detected"):
        assert [study.cells[r.cells[0]].knobs["K"] for r in panel.rows if r.dataset == ds] == list(range(1, 10))
        assert [r.row for r in panel.reference if r.dataset == ds] == ["Baseline"]
    assert panel.scale == "linear" and panel.label == "heads"
    assert [p.name for p in P.build_all_figures(study, tmp_path / "runs", tmp_path)] == ["table_7_K.png"]
    cfg["tables"]["VII"]["plot"]["panels"][0]["where"] = {"heads": 8}
    with pytest.raises(ConfigError, match=r"tables\.VII\.plot\.panels\[0\].*'heads'"):
        P.sweep_panels(build_study(cfg, "demo"), "VII")
    cfg["tables"]["VII"]["plot"]["kind"] = "bar_chart"
    with pytest.raises(ConfigError, match=r"tables\.VII\.plot\.kind is 'bar_chart'"):
        P.build_all_figures(build_study(cfg, "demo"), tmp_path / "runs", tmp_path)


def test_plots_does_not_know_the_paper_by_name():
    """No table numeral, figure number, variant, data set or knob value in mhsa/study/plots.py: all of it
    comes from config.yaml."""
    text = (ROOT / "mhsa" / "study" / "plots.py").read_text()
    cfg = load_study_config(ROOT / "config.yaml")
    for name in [*cfg["variants"], *cfg["datasets"], *cfg["tables"]]:
        assert not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), name
    assert not re.search(r"(Fig(ure)?s?\.?|Tables?) ?\d", text)
    assert not re.search(r"\b(1e-3|1\.0e-3|0\.001)\b", text)


def test_schema_lists_the_plot_kinds_of_the_code():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    tables = schema["properties"]["tables"]["additionalProperties"]["properties"]["plot"]
    figures = schema["properties"]["figures"]["additionalProperties"]["properties"]["plot"]
    assert sorted(tables["properties"]["kind"]["enum"]) == sorted(P.TABLE_PLOTS)
    assert sorted(figures["properties"]["kind"]["enum"]) == sorted(P.FIGURE_PLOTS)


@pytest.mark.parametrize("k,layout", [(1, "chw"), (8, "hwc")])
def test_attention_overlay(tmp_path, k, layout):
    rng = np.random.default_rng(k)
    images = rng.integers(0, 256, size=(2, 3, 32, 16), dtype=np.uint8)
    if layout == "hwc":
        images = images.transpose(0, 2, 3, 1)
    alpha = rng.random((2, k, 8, 4)).astype(np.float32)
    out = P.save_attention_overlay(images, alpha, tmp_path / f"ov_{k}.png", titles=["q0", "q1"])
    assert is_png(out)
    with pytest.raises(ValueError):
        P.save_attention_overlay(images, alpha[:1], tmp_path / "bad.png")


def test_attention_overlay_pixels(tmp_path):
    """Layout and colours, read back: 14 px header, tiles enlarged x2 (32 px -> 64) with 2 px gaps,
    the image column is the image, a head column the image half and half with the jet colour of
    the head's map (one colour scale per image, 0 .. max over heads), then the max column."""
    images = np.full((1, 32, 16, 3), 100, np.uint8)
    images[0, :16] = 200  # upper half brighter
    alpha = np.zeros((1, 2, 8, 4), np.float32)
    alpha[0, 1] = 2.0  # head 2 uniform at the image's max, head 1 zero
    png = P.save_attention_overlay(images, alpha, tmp_path / "ov.png")
    from PIL import Image

    px = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert px.shape == (14 + 64 + 2, 4 * (32 + 2), 3)
    tile = lambda j: px[14:14 + 64, j * 34:j * 34 + 32]  # noqa: E731
    assert (tile(0)[:32] == 200).all() and (tile(0)[32:] == 100).all()
    jet = np.asarray(matplotlib.colormaps["jet"]([0.0, 1.0])[:, :3]) * 255
    for j, colour in ((1, jet[0]), (2, jet[1]), (3, jet[1])):  # head 1 = vmin, head 2 = max = vmax
        expected = np.round(0.5 * 100 + 0.5 * colour)
        assert np.abs(tile(j)[50, 10] - expected).max() <= 1, j
    assert (px[14:14 + 64, 32:34] == 255).all()  # the gap


def test_overlay_from_npz(tmp_path):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "attention.npz", images=rng.integers(0, 256, (2, 3, 32, 16), dtype=np.uint8),
             alpha=rng.random((2, 3, 8, 4)).astype(np.float32), pids=np.array([4, 7]))
    direct = P.save_attention_overlay(np.load(tmp_path / "attention.npz")["images"],
                                      np.load(tmp_path / "attention.npz")["alpha"], tmp_path / "direct.png",
                                      titles=["id 4", "id 7"])
    out = P.overlay_from_npz(tmp_path / "attention.npz", tmp_path / "attention.png")
    assert out.read_bytes() == direct.read_bytes()


def test_upsample_bilinear():
    a = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32)
    up = P.upsample_bilinear(a, 4, 4)
    assert up.shape == (4, 4)
    assert up[0, 0] == pytest.approx(0.0) and up[-1, -1] == pytest.approx(3.0)
    assert up.mean() == pytest.approx(a.mean())
    assert P.upsample_bilinear(np.ones((2, 3, 2, 2)), 6, 4).shape == (2, 3, 6, 4)


def test_attention_grid_models_of_fig_7(study):
    """Fig. 7: MHSAB is MHSAM + FRM (FDRT and IHTL) + SAFFM, MHSAB+ACM is MHSA-Net (Sec. V)."""
    series = P.attention_series(study, "7", "occluded_duke")
    assert series == [
        ("Baseline", ["occluded_duke__baseline__s0", "occluded_duke__baseline__s1"]),
        ("MHSAB", [f"occluded_duke__mhsam-K8-fdrt0.0001-ihtl1__s{s}" for s in (0, 1)]),
        ("MHSAB+ACM", [f"occluded_duke__mhsam-K8-fdrt0.0001-ihtl1-acm0.001g0.001__s{s}" for s in (0, 1)]),
    ]


def test_attention_grid(tmp_path, study):
    runs = tmp_path / "runs"
    with pytest.raises(FileNotFoundError):
        P.plot_attention_grid(study, "7", "occluded_duke", runs, tmp_path / "fig7.png")
    cells = dict(P.attention_series(study, "7", "occluded_duke"))
    rng = np.random.default_rng(0)
    for label, k in (("Baseline", 1), ("MHSAB+ACM", 8)):  # MHSAB missing: skipped
        d = runs / cells[label][1]  # the second seed's maps are used when the first has none
        d.mkdir(parents=True)
        np.savez(
            d / "attention.npz",
            images=rng.integers(0, 256, (3, 3, 32, 16), dtype=np.uint8),
            alpha=rng.random((3, k, 8, 4)).astype(np.float32),
        )
    assert is_png(P.plot_attention_grid(study, "7", "occluded_duke", runs, tmp_path / "fig7.png"))


def test_attention_grid_labels_colour_bar_and_entropy(tmp_path, study, drawn):
    """One title (the data set not repeated, no line break inside a name), the Baseline's column called an
    activation map, the others the max over their heads, each with its mean attention entropy, and one
    colour bar; groups of (query, series...) side by side, so the figure is wider than tall."""
    runs = tmp_path / "runs"
    cells = dict(P.attention_series(study, "7", "occluded_duke"))
    focused = np.full((6, 8, 8, 4), 1e-6, np.float32)
    focused[:, :, 0, 0] = 1.0  # every head on one position: entropy ~0
    maps = {"Baseline": np.ones((6, 1, 8, 4), np.float32), "MHSAB": np.ones((6, 8, 8, 4), np.float32),
            "MHSAB+ACM": focused}
    for label, alpha in maps.items():
        d = runs / cells[label][0]
        d.mkdir(parents=True)
        np.savez(d / "attention.npz", images=np.zeros((6, 3, 32, 16), np.uint8), alpha=alpha)
    P.plot_attention_grid(study, "7", "occluded_duke", runs, tmp_path / "fig7.png")
    (fig,) = drawn
    title = fig._suptitle.get_text()
    assert title.startswith("Fig. 7: Attention maps (Baseline, MHSAB, MHSAB+ACM) on Occluded-DukeMTMC\n")
    assert title.count("Occluded-DukeMTMC") == 1 and "Occluded-\n" not in title
    headers = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert headers[:4] == ["query", "Baseline\nactivation map\nH = 1.00", "MHSAB\nmax of 8 heads\nH = 1.00",
                           "MHSAB+ACM\nmax of 8 heads\nH = 0.00"]
    assert any(ax.get_xlabel() == "attention, each map scaled to its maximum" for ax in fig.axes)  # the bar
    width, height = fig.get_size_inches()
    assert width > height  # fits a screen: the report opens it at its top


def test_attention_grid_outlines_the_occluder_where_the_test_set_has_label_maps(tmp_path, study, drawn):
    """attention.npz's `occluder` masks (a labelled synthetic test set) are drawn as one outline per tile that
    has an occluder, around its pixels; without masks no outline and no word of one."""
    cells = dict(P.attention_series(study, "7", "occluded_duke"))
    occluder = np.zeros((6, 32, 16), bool)
    occluder[:3, 10:20, 4:12] = True  # three of the six images occluded
    for with_masks in (True, False):
        runs = tmp_path / f"runs{with_masks}"
        for label in cells:
            d = runs / cells[label][0]
            d.mkdir(parents=True)
            extra = {"occluder": occluder} if with_masks else {}
            np.savez(d / "attention.npz", images=np.zeros((6, 3, 32, 16), np.uint8),
                     alpha=np.ones((6, 1 if label == "Baseline" else 8, 8, 4), np.float32), **extra)
        P.plot_attention_grid(study, "7", "occluded_duke", runs, tmp_path / f"fig7{with_masks}.png")
    with_fig, without_fig = drawn
    tiles = [ax for ax in with_fig.axes if ax.images]
    outlined = [ax for ax in tiles if ax.collections]
    assert len(tiles) == 6 * 4 and len(outlined) == 3 * 4  # query + 3 series columns, the 3 occluded images
    for ax in outlined:
        (x0, y0), (x1, y1) = ax.collections[0].get_paths()[0].get_extents().get_points()
        assert 3 <= x0 <= 4 and 11 <= x1 <= 12 and 9 <= y0 <= 10 and 19 <= y1 <= 20  # around the occluder
    assert any("white outline: the occluder" in t for t in _texts(with_fig))
    assert not any(ax.collections for ax in without_fig.axes if ax.images)
    assert not any("white outline" in t for t in _texts(without_fig))


def test_build_all_figures(tmp_path):
    cfg = load_study_config(ROOT / "config.yaml")
    cfg["presets"]["demo"]["tables"] = ["IX"]
    cfg["presets"]["demo"]["figures"] = ["9", "7"]
    cfg["figures"]["9"]["sweep"]["K"] = [8]
    small = build_study(cfg, "demo")
    runs = tmp_path / "runs"
    # no metrics.json and no attention maps: paper points only, Fig. 7 not drawn
    paths = P.build_all_figures(small, runs, tmp_path / "figs")
    assert [p.name for p in paths] == ["fig_9.png", "table_9_lambda1.png"]
    assert all(is_png(p) for p in paths)

    d = runs / P.attention_series(small, "7", "occluded_duke")[0][1][0]
    d.mkdir(parents=True)
    np.savez(d / "attention.npz", images=np.zeros((2, 32, 16, 3), np.uint8), alpha=np.ones((2, 1, 8, 4), np.float32))
    paths = P.build_all_figures(small, runs, tmp_path / "figs2")
    assert [p.name for p in paths] == ["fig_9.png", "fig_7_attention_occluded_duke.png", "table_9_lambda1.png"]
    assert all(is_png(p) for p in paths)

    del cfg["figures"]["9"]["plot"]
    with pytest.raises(ConfigError, match=r"figures\.9 has no `plot"):
        P.build_all_figures(build_study(cfg, "demo"), runs, tmp_path / "figs3")


# ----------------------------------------------------------------------------- the figures step and MLflow


def test_log_run_artifacts_attaches_overlays_and_tags(tmp_path, caplog):
    from mlflow.tracking import MlflowClient

    from mhsa.run.tracking import init_store, log_run_artifacts

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init_store(uri, ["figs"])
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("figs").experiment_id
    r1, r2 = (client.create_run(exp, run_name=n).info.run_id for n in ("a", "b"))
    png = P.save_attention_overlay(np.zeros((1, 32, 16, 3), np.uint8), np.ones((1, 1, 8, 4)),
                                   tmp_path / "attention.png")
    items = [(r1, [png], {"feeds": "Table I / x; Table II / y"}), ("0" * 32, [png], {"feeds": "z"}),
             (None, [png], {}), (r2, [png], {"feeds": "Table III / w"})]
    with caplog.at_level("WARNING", logger="mhsa.run.tracking"):
        assert log_run_artifacts(uri, items) == 2
    # the missing run, named in exactly one warning (other mhsa.run.tracking warnings may come with it)
    assert sum(r.message.count("0" * 32) for r in caplog.records) == 1
    for run_id, feeds in ((r1, "Table I / x; Table II / y"), (r2, "Table III / w")):
        assert [a.path for a in client.list_artifacts(run_id)] == ["attention.png"]
        assert client.get_run(run_id).data.tags["feeds"] == feeds


def test_log_run_artifacts_tolerates_a_down_store(tmp_path, capsys):
    from mhsa.run.tracking import log_run_artifacts

    (tmp_path / "not-a-dir").write_text("")  # the store's directory cannot be created
    uri = f"sqlite:///{tmp_path / 'not-a-dir' / 'mlflow.db'}"
    png = tmp_path / "attention.png"
    png.write_bytes(PNG)
    assert log_run_artifacts(uri, [(f"{i:032d}", [png], {"feeds": "x"}) for i in range(3)]) == 0
    assert capsys.readouterr().err.count("WARNING") == 1


def test_figure_points_and_error_bars_are_the_tables_numbers_and_intervals(tmp_path, study, metrics, paper, drawn):
    """Each K-sweep point is the value `cell_interval` gives the tables, its error bar that interval (the t
    interval over 2 seeds here); the K with one seed and no per-query results gets its point, no bar."""
    from mhsa.study.uncertainty import cell_interval

    P.plot_k_sweep(study, "9", metrics, paper, tmp_path / "fig_9.png")
    (fig,) = drawn
    ax = fig.axes[0]  # (a) Market-1501 - Rank-1
    rows = [r for r in study.rows if r.source == "figure" and r.table == "9" and r.dataset == "market1501"]
    want = {(r.K, round(iv.value, 6)): iv for r in rows
            if (iv := cell_interval(metrics, r.cells, r.dataset, r.mode, "rank1")) is not None}
    drawn_points = {(int(k), round(float(y), 6)) for line in ax.lines if line.get_marker() == "o"
                    for k, y in zip(line.get_xdata(), line.get_ydata(), strict=True)}
    assert drawn_points == set(want)
    bars = {(int(x), round(float(lo), 6), round(float(hi), 6))
            for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer)
            for seg in c.lines[2][0].get_segments() for (x, lo), (_, hi) in [seg]}
    assert bars == {(k, round(iv.low, 6), round(iv.high, 6)) for (k, _), iv in want.items() if iv.n_seeds == 2}
    assert any(iv.n_seeds == 1 for iv in want.values())  # K=6's seed-1 cell is missing: a point, no bar


def test_sweep_groups_are_named_by_their_rows_where_the_rows_say_it():
    """Table XIV's groups are `mhsam` False/True: named by their rows ("Baseline, 35 %" -> "Baseline"), not
    "mhsam=False"; groups whose rows are not named "<name>, <x>" keep "<knob>=<value>"."""
    from mhsa.study.figure_specs import sweep_panels

    premise = build_study(load_study_config(ROOT / "config.yaml"), "premise")
    (panel,) = sweep_panels(premise, "XIV")
    assert P.group_names(premise, panel) == {False: "Baseline", True: "MHSA-Net (K=8)"}
    renamed = load_study_config(ROOT / "config.yaml")
    for row in renamed["tables"]["XIV"]["rows"]:
        row["row"] = row["row"].replace(", ", " at ")
    other = build_study(renamed, "premise")
    (panel,) = sweep_panels(other, "XIV")
    assert P.group_names(other, panel) == {False: "mhsam=False", True: "mhsam=True"}


def test_a_sweep_legend_lists_only_what_its_panels_draw(tmp_path, drawn):
    """Table XIV has no paper numbers and no reference rows: its legend has ours per group, nothing else."""
    premise = build_study(load_study_config(ROOT / "config.yaml"), "premise")
    P.plot_param_sweep(premise, "XIV", {}, load_paper(), tmp_path / "xiv.png")
    (fig,) = drawn
    assert [h.get_label() for h in fig.legends[0].legend_handles] == ["Baseline ours", "MHSA-Net (K=8) ours"]
