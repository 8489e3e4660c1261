"""`python -m mhsa sync-mlflow RESULTS_DIR` replays finished cells into the store, idempotently
(docs/reliability.md, case 3: runs trained while the store was down are not lost)."""

import subprocess
from pathlib import Path

import pytest

from mhsa.config import RunConfig, flatten, save_config
from mhsa.io import atomic_write_json

pytest.importorskip("mlflow")


def _cell(results: Path, name: str, experiment: str, epochs: int) -> dict:
    cfg = RunConfig(name=name)
    cfg.optim.epochs = epochs
    cfg.tracking.experiment = experiment
    run_dir = results / "runs" / name
    history = [{"epoch": e, "loss": 10.0 / e, "ce": 5.0 / e, "lr": 1e-3 * e, "images_per_s": 100.0 + e}
               for e in range(1, epochs + 1)]
    metrics = {"cell": name, "config": cfg.to_dict(),
               "eval": {"market1501": {"global": {"rank1": 50.0, "mAP": 40.0, "mAP@50": 1.0},
                                       "concat": {"rank1": 55.0, "mAP": float("nan")}}},
               "train": {"seconds": 12.5, "images_per_s": 99.0, "peak_mem_mb": 300.0, "epochs": epochs,
                         "device": "cpu", "mlflow_run_id": None, "git_sha": "abc"},
               "history": history, "diagnostics": {"attention": {"entropy_norm_mean": 0.5, "entropy_norm": [0.5]}}}
    atomic_write_json(run_dir / "metrics.json", metrics)
    save_config(cfg, run_dir / "config.yaml")
    (run_dir / "attention.png").write_bytes(b"\x89PNG fake")
    return metrics


def _sync(results: Path, uri: str, capsys) -> subprocess.CompletedProcess:
    """The CLI in-process (a subprocess would pay MLflow's import again for each call)."""
    from mhsa.__main__ import main

    capsys.readouterr()
    rc = main(["sync-mlflow", str(results), "--tracking-uri", uri])
    out = capsys.readouterr()
    return subprocess.CompletedProcess([], rc, out.out, out.err)


def _runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id]) if exp else []


def _check_store(uri, metrics, experiment):
    client, runs = _runs(uri, experiment)
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["cell"] == metrics["cell"]
    assert run.data.params.keys() == {k for k in flatten(metrics["config"]) if not k.startswith("tracking.")}
    assert run.data.params["amp"] == "off"  # what ran on the CPU, not the recipe's bf16
    assert "Train/loss" in run.data.tags["mlflow.note.content"]  # the run's description
    epochs = metrics["train"]["epochs"]
    for key, name in (("loss", "Train/loss"), ("ce", "Train/loss.ce"), ("lr", "Train/lr"),
                      ("images_per_s", "Train/speed")):
        hist = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in hist) == list(range(1, epochs + 1))
        assert [m.value for m in sorted(hist, key=lambda m: m.step)] == [r[key] for r in metrics["history"]]
    for key, value in (("eval/market1501/global/rank1", 50.0), ("eval/market1501/global/mAP_at_50", 1.0),
                       ("run/seconds", 12.5), ("run/epochs", epochs), ("diag/attention_entropy", 0.5)):
        hist = client.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in hist] == [(epochs, value)]
    assert client.get_metric_history(run.info.run_id, "eval/market1501/concat/mAP") == []  # NaN is not logged
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == [
        "attention.png", "config.yaml", "diagnostics.json", "metrics.json"]
    assert client.download_artifacts(run.info.run_id, "diagnostics.json")  # the per-head detail
    return run.info.run_id


def test_sync_twice_gives_one_run_per_cell_with_every_point_once(tmp_path, capsys):
    results, uri = tmp_path / "results", f"sqlite:///{tmp_path / 'store.db'}"
    a = _cell(results, "cellA", "expA", 3)
    b = _cell(results, "cellB", "expB", 2)
    first = _sync(results, uri, capsys)
    assert first.returncode == 0, first.stderr
    assert "cellA: created" in first.stdout and "cellB: created" in first.stdout
    ids = (_check_store(uri, a, "expA"), _check_store(uri, b, "expB"))
    second = _sync(results, uri, capsys)
    assert second.returncode == 0, second.stderr
    assert "cellA: up to date" in second.stdout and "0 item(s) added" in second.stdout
    assert (_check_store(uri, a, "expA"), _check_store(uri, b, "expB")) == ids


def test_sync_completes_a_partly_tracked_run_without_duplicates(tmp_path, capsys):
    """Tracking failed after epoch 1: the training run exists (tag cell=...), RUNNING, one point."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    results, uri = tmp_path / "results", f"sqlite:///{tmp_path / 'store.db'}"
    m = _cell(results, "cellC", "expC", 3)
    client = MlflowClient(tracking_uri=uri)
    # an artifact location of its own: MLflow's default is ./mlruns of the working directory
    exp_id = client.create_experiment("expC", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp_id, run_name="cellC", tags={"cell": "cellC"})
    client.log_batch(run.info.run_id, metrics=[Metric("loss", 10.0, 0, 1)])
    proc = _sync(results, uri, capsys)
    assert proc.returncode == 0, proc.stderr
    assert "cellC: completed" in proc.stdout
    assert _check_store(uri, m, "expC") == run.info.run_id
    assert _sync(results, uri, capsys).returncode == 0
    assert _check_store(uri, m, "expC") == run.info.run_id


def test_metric_points_group_the_names_and_weight_the_terms():
    """The names sync-mlflow replays (mhsa.run.run_metrics; training logs the same, see
    tests/run/test_train.py::test_mlflow_run_holds_exactly_what_sync_replays)."""
    from mhsa.run.run_metrics import metric_points

    m = {"config": {"loss": {"lambda2": 0.5}},
         "history": [{"epoch": 1, "loss": 2.0, "ihtl": 2.0, "lr": 0.1},
                     {"epoch": 2, "loss": 1.0, "ihtl": 1.0, "lr": 0.1}],
         "eval": {"t": {"global": {"rank1": 9.0, "mAP@50": float("nan")}}},
         "train": {"epochs": 2, "seconds": 3.0, "device": "cpu", "ok": True}}
    assert metric_points(m) == {"Train/loss": {1: 2.0, 2: 1.0}, "Train/loss.ihtl": {1: 2.0, 2: 1.0},
                                "Train/weighted.ihtl": {1: 1.0, 2: 0.5}, "Train/lr": {1: 0.1, 2: 0.1},
                                "eval/t/global/rank1": {2: 9.0}, "run/epochs": {2: 2.0}, "run/seconds": {2: 3.0}}


def test_sync_of_nothing_is_harmless(tmp_path, capsys):
    proc = _sync(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", capsys)
    assert proc.returncode == 0 and proc.stdout == ""
    assert not (tmp_path / "store.db").exists()  # nothing to replay: the store is not even created
