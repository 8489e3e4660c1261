"""A corrupt results file is named, never shown as "n/a" (docs/reliability.md, "Corrupt results"):
metrics.json and attention.npz as the tables, figures, overlays, diagnostics and sync-mlflow read them,
mhsa/study/paper_results.csv line by line, and a --runs folder that holds nothing of the study. Every error
names the file and says what to do; the tables step lists every corrupt file at once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mhsa.errors import ResultsError
from mhsa.run.results import REDO, check_cell_outputs, read_attention
from mhsa.study import tables as T
from mhsa.study.build import build_study, load_study_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study():
    return build_study(load_study_config(ROOT / "config.yaml"), "ci")


def _metrics(cell: str, targets: dict | None = None) -> dict:
    """A metrics.json of `cell` with every (test set, mode) of `targets` (one by default)."""
    targets = targets or {"occluded_duke": ["global"]}
    return {"cell": cell, "eval": {t: {m: {"rank1": 50.0, "mAP": 40.0} for m in modes} for t, modes in targets.items()},
            "train": {}}


@pytest.fixture
def runs(tmp_path, study) -> Path:
    """metrics.json and attention.npz for every ci cell."""
    root = tmp_path / "runs"
    for cid in study.cells:
        (root / cid).mkdir(parents=True)
        (root / cid / "metrics.json").write_text(json.dumps(_metrics(cid, study.cells[cid].targets)))
        np.savez(root / cid / "attention.npz", images=np.zeros((2, 16, 8, 3), np.uint8),
                 alpha=np.ones((2, 1, 4, 2), np.float32))
    return root


CORRUPTIONS = {
    "truncated": lambda p: p.write_text(p.read_text()[:40]),
    "empty": lambda p: p.write_bytes(b""),
    "binary": lambda p: p.write_bytes(b"\xff\xfe\x00garbage"),
    "a list": lambda p: p.write_text("[1, 2]"),
    "no eval": lambda p: p.write_text(json.dumps({"cell": p.parent.name})),
    "a percent string": lambda p: p.write_text(json.dumps(
        {**_metrics(p.parent.name), "eval": {"occluded_duke": {"global": {"rank1": "55.4%"}}}})),
    "another cell's results": lambda p: p.write_text(json.dumps(_metrics("occluded_duke__baseline__s9"))),
    # per-query results the intervals could not resample (docs/evaluation.md, "Per-query results")
    "per-query lists of other lengths": lambda p: p.write_text(json.dumps(
        {**_metrics(p.parent.name), "per_query": {"occluded_duke": {
            "index": [0, 1], "pids": [3, 4],
            "modes": {"global": {"first_hit": [0], "AP": [1.0], "INP": [1.0], "AP@50": [1.0]}}}}})),
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_a_corrupt_metrics_json_stops_the_tables_naming_it(runs, study, tmp_path, how):
    bad = runs / next(iter(study.cells)) / "metrics.json"
    CORRUPTIONS[how](bad)
    with pytest.raises(ResultsError) as err:
        T.build_all(study, runs, tmp_path / "tables")
    assert str(bad) in str(err.value) and "delete it" in str(err.value), str(err.value)
    assert not (tmp_path / "tables" / "table_2.csv").exists()  # nothing built on top of it


def test_every_corrupt_file_is_named_at_once_and_deleting_them_is_the_fix(runs, study):
    cells = list(study.cells)
    (runs / cells[0] / "metrics.json").write_text("{not json")
    (runs / cells[1] / "metrics.json").write_text("")
    (runs / cells[2] / "attention.npz").write_bytes(b"PK\x03\x04 cut short")
    metrics = [runs / c / "metrics.json" for c in cells]
    attention = [runs / c / "attention.npz" for c in cells]
    with pytest.raises(ResultsError) as err:
        check_cell_outputs(metrics, attention)
    msg = str(err.value)
    assert msg.startswith("3 corrupt results files: ") and "delete them, then rerun Snakemake" in msg
    for path in (metrics[0], metrics[1], attention[2]):
        assert str(path) in msg
    for path in (metrics[0], metrics[1], attention[2]):
        path.unlink()  # what the message says: Snakemake then sees the outputs missing and retrains
    check_cell_outputs([p for p in metrics if p.exists()], [p for p in attention if p.exists()])


@pytest.mark.parametrize("content", [b"", b"garbage" * 20, b"PK\x03\x04 cut short"])
def test_a_corrupt_attention_npz_is_named_by_every_reader(runs, study, tmp_path, content):
    from mhsa.study.diagnostic_plots import diagnostics_of_run
    from mhsa.study.plots import overlay_from_npz, plot_attention_grid

    cid = study.rows[[r.source for r in study.rows].index("figure")].cells[0]  # a cell of Fig. 7
    bad = runs / cid / "attention.npz"
    bad.write_bytes(content)
    (runs / cid / "metrics.json").write_text(json.dumps(_metrics(cid)))  # no diagnostics: read from the npz
    for read in (lambda: overlay_from_npz(bad, tmp_path / "o.png"),
                 lambda: plot_attention_grid(study, "7", "occluded_duke", runs, tmp_path / "g.png"),
                 lambda: diagnostics_of_run(bad.parent)):
        with pytest.raises(ResultsError, match=f"{bad}: corrupt attention.npz"):
            read()
    msg = str(pytest.raises(ResultsError, read_attention, bad).value)
    assert "allow_pickle" not in msg and REDO in msg  # never NumPy's hint to load pickled data


def test_an_attention_npz_without_its_arrays_is_named(tmp_path):
    path = tmp_path / "attention.npz"
    np.savez(path, images=np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(ResultsError, match="no alpha array"):
        read_attention(path)


def test_a_corrupt_metrics_json_outside_the_study_is_not_read(runs, study, tmp_path):
    (runs / "old_cell__s0").mkdir()
    (runs / "old_cell__s0" / "metrics.json").write_text("{")
    assert len(T.build_all(study, runs, tmp_path / "tables")) == 4


def test_the_tables_command_reports_one_line_and_exit_1(runs, study, tmp_path, capsys):
    bad = runs / next(iter(study.cells)) / "metrics.json"
    bad.write_text("{")
    with pytest.raises(SystemExit) as exit_:
        T.main(["--config", str(ROOT / "config.yaml"), "--preset", "ci", "--runs", str(runs),
                "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and err[-1].startswith(f"error: {bad}: corrupt metrics.json (not JSON")
    assert not any("Traceback" in line for line in err)


@pytest.mark.parametrize("args, message, code", [
    (["--runs", "{tmp}/runz"], "runs folder {tmp}/runz does not exist (--runs)", 1),
    (["--runs", "{tmp}"], "no finished cell of preset 'ci' under {tmp} (expected e.g. {tmp}/", 1),
    (["--preset", "cii"], "preset 'cii' is not defined", 2),
    (["--config", "{tmp}/nope.yaml"], "config file {tmp}/nope.yaml does not exist", 2),
])
def test_a_typo_on_the_tables_command_line_is_an_error_not_empty_tables(runs, tmp_path, capsys, args, message, code):
    argv = {"--config": str(ROOT / "config.yaml"), "--preset": "ci", "--runs": str(runs), "--out": str(tmp_path / "t")}
    argv[args[0]] = args[1].format(tmp=tmp_path)
    with pytest.raises(SystemExit) as exit_:
        T.main([x for kv in argv.items() for x in kv])
    assert exit_.value.code == code
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not (tmp_path / "t").exists()  # no all-"n/a" tables


def test_the_figures_command_reports_the_same(runs, tmp_path, capsys):
    from mhsa.study.plots import main

    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(ROOT / "config.yaml"), "--preset", "ci", "--runs", str(tmp_path / "typo")])
    assert exit_.value.code == 1 and "does not exist (--runs)" in capsys.readouterr().err


# ----------------------------------------------------------------------------- paper_results.csv
def _paper(tmp_path, edit) -> Path:
    lines = T.PAPER_CSV.read_text().splitlines()
    edit(lines)
    path = tmp_path / "paper.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda ls: ls.__setitem__(3, ls[3].rsplit(",", 2)[0] + ",55.4%,0"), "line 4: value '55.4%' of (I, MLFN [59], "
     "dukemtmc, rank1) is not a number"),
    (lambda ls: ls.__setitem__(3, ls[3].rsplit(",", 2)[0] + ",,0"), "line 4: value '' of"),
    (lambda ls: ls.__setitem__(3, ls[3].rsplit(",", 2)[0] + ",nan,0"), "line 4: value 'nan' of"),
    (lambda ls: ls.__setitem__(3, ls[3].rsplit(",", 1)[0] + ",yes"), "line 4: own 'yes' of (I, MLFN [59]"),
    (lambda ls: ls.__setitem__(0, "table,row,dataset,metric,val,own"), "missing column(s) ['value']"),
    (lambda ls: ls.insert(3, 'I,"MLFN [59],market1501,rank1,1.0,0'), "not a CSV table"),
])
def test_a_malformed_paper_csv_names_the_file_and_line(tmp_path, edit, message):
    path = _paper(tmp_path, edit)
    with pytest.raises(ResultsError) as err:
        T.load_paper(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value), str(err.value)


def test_every_bad_line_of_the_paper_csv_is_listed(tmp_path):
    def edit(ls):
        for i in (2, 5, 9):
            ls[i] = ls[i].rsplit(",", 2)[0] + ",x,0"

    msg = str(pytest.raises(ResultsError, T.load_paper, _paper(tmp_path, edit)).value)
    assert "3 problem(s)" in msg and all(f"line {i + 1}: value 'x'" in msg for i in (2, 5, 9))
    with pytest.raises(ResultsError, match="does not exist"):
        T.load_paper(tmp_path / "missing.csv")


# ---------------------------------------------------------------------------------- sync-mlflow
def test_sync_mlflow_names_the_corrupt_file_and_replays_the_others(tmp_path, capsys):
    pytest.importorskip("mlflow")
    from mhsa.__main__ import main
    from mhsa.config import RunConfig
    from mhsa.io import atomic_write_json

    results = tmp_path / "results"
    for name in ("good", "bad", "broken"):
        cfg = RunConfig(name=name)
        cfg.optim.epochs = 1
        atomic_write_json(results / "runs" / name / "metrics.json",
                          {"cell": name, "config": cfg.to_dict(), "eval": {"m": {"global": {"rank1": 1.0}}},
                           "train": {"epochs": 1}, "history": [{"epoch": 1, "loss": 1.0}]})
    (results / "runs" / "bad" / "metrics.json").write_text('{"cell": "bad", "ev')
    broken = json.loads((results / "runs" / "broken" / "metrics.json").read_text())
    del broken["config"]["tracking"]
    (results / "runs" / "broken" / "metrics.json").write_text(json.dumps(broken))
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    capsys.readouterr()
    assert main(["sync-mlflow", str(results), "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("error: "))
    assert "2 corrupt results files" in line and "runs/bad/metrics.json (not JSON" in line
    assert "runs/broken/metrics.json (no config.tracking.experiment" in line
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("mhsa")
    assert [r.data.tags["cell"] for r in client.search_runs([exp.experiment_id])] == ["good"]  # replayed anyway

    assert main(["sync-mlflow", str(tmp_path / "typo"), "--tracking-uri", uri]) == 1
    assert f"results directory {tmp_path / 'typo'} does not exist" in capsys.readouterr().err


def test_the_error_stays_until_the_file_is_dealt_with(runs, study):
    """Not a one-off warning in a log: every later tables step stops on it, until it is deleted."""
    bad = runs / next(iter(study.cells)) / "metrics.json"
    bad.write_text("{")
    for _ in range(2):
        with pytest.raises(ResultsError):
            T.load_metrics(runs, study.cells)
    bad.unlink()
    assert len(T.load_metrics(runs, study.cells)) == len(study.cells) - 1


def test_results_of_another_config_or_without_a_rows_mode_are_refused(runs, study, tmp_path):
    """`python -m mhsa tables` after an edit of config.yaml (or outputs accepted with --touch): the old
    numbers would stand under the edited rows, or show n/a."""
    from mhsa.config import build_run_config
    from mhsa.study.build import cell_overrides

    recipe = study.config["recipe"]
    cells = list(study.cells)
    for cid in cells:  # what training records: the resolved run config
        m = json.loads((runs / cid / "metrics.json").read_text())
        m["config"] = build_run_config(recipe, cell_overrides(study, study.cells[cid])).to_dict()
        m["config"]["threads"] = 7  # a runtime key: never a difference
        (runs / cid / "metrics.json").write_text(json.dumps(m))
    assert len(T.build_all(study, runs, tmp_path / "ok")) == 4

    stale = json.loads((runs / cells[0] / "metrics.json").read_text())
    stale["config"]["optim"]["epochs"] = 3
    (runs / cells[0] / "metrics.json").write_text(json.dumps(stale))
    partial = json.loads((runs / cells[1] / "metrics.json").read_text())
    dataset, modes = next(iter(partial["eval"].items()))
    mode = next(m for ref in study.rows for m in [ref.mode] if cells[1] in ref.cells and ref.dataset == dataset)
    del modes[mode]
    (runs / cells[1] / "metrics.json").write_text(json.dumps(partial))
    with pytest.raises(ResultsError) as err:
        T.build_all(study, runs, tmp_path / "tables")
    msg = str(err.value)
    assert f"1 cell(s) trained with another config (optim.epochs: 3 -> 2): {cells[0]}" in msg, msg
    assert f"{cells[1]} has no {mode!r} results on {dataset}" in msg
    assert "rerun Snakemake (it retrains or re-evaluates them)" in msg
    assert not (tmp_path / "tables").exists()


def test_re_ranked_results_of_another_rerank_input_are_refused(tmp_path):
    """The re-ranking input's default changed (docs/paper-to-code.md, "Evaluation"): a cell that re-ranked
    squared distances must not stand under the rows now, although its weights are the same; the cells
    that re-rank name the setting, so Snakemake re-evaluates them."""
    from mhsa.config import build_run_config
    from mhsa.study.build import cell_overrides

    study = build_study(load_study_config(ROOT / "config.yaml"), "demo")
    ref = next(r for r in study.rows if r.mode.endswith("_rerank"))
    cid = ref.cells[0]
    cell = study.cells[cid]
    assert cell_overrides(study, cell)["eval"]["rerank_input"] == "euclidean"
    assert "rerank_input" not in cell_overrides(study, study.cells[next(
        r for r in study.rows if r.table == "II").cells[0]])["eval"]  # a cell that does not re-rank: untouched
    m = _metrics(cid, cell.targets)
    m["config"] = build_run_config(study.config["recipe"], cell_overrides(study, cell)).to_dict()
    m["config"]["eval"]["rerank_input"] = "squared"  # as the runs before the change
    (tmp_path / "runs" / cid).mkdir(parents=True)
    (tmp_path / "runs" / cid / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(ResultsError, match=f"{cid} re-ranked squared distances, the study now feeds euclidean"):
        T.build_all(study, tmp_path / "runs", tmp_path / "tables")
