"""One cell end to end on a tiny synthetic data set: metrics.json, determinism, resume, MLflow."""

import ast
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mhsa.config import ConfigError, LossConfig, ModelConfig, OptimConfig, build_run_config
from mhsa.data.datasets import DatasetNotFoundError
from mhsa.data.synthetic import generate
from mhsa.losses import Criterion
from mhsa.model import build_model
from mhsa.model.build import build_model_from_config
from mhsa.run import optim
from mhsa.run import train as train_mod
from mhsa.run.checkpoint import StaleCheckpointError

METRICS = {"rank1", "rank5", "rank10", "mAP", "mINP", "mAP@50"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "market1501"
    generate(root, "market1501", seed=3, num_ids=8, images_per_id=6, height=32, width=16)
    return root


def tiny_cfg(root, tmp, **over):
    recipe = {
        "name": over.pop("name", "tiny"), "seed": 0, "checkpoint_every": 1, "threads": 1,
        "model": {"backbone": "resnet18", "pretrained": False, "num_heads": 3},  # 48x16: a 3x1 map
        "data": {"dataset": "market1501", "root": str(root), "height": 48, "width": 16, "p": 4, "k": 2,
                 "workers": 0, "test_batch": 32},
        "optim": {"lr": 1e-3, "warmup_epochs": 1, "milestones": [2], "epochs": 3},
        "eval": {"targets": {"market1501": {"root": str(root), "modes": ["global", "local", "concat",
                                                                          "head2", "concat_rerank"]}},
                 "rerank_k1": 4, "rerank_k2": 2, "attention_images": 2},
        "tracking": {"experiment": "test"},
    }
    return build_run_config(recipe, over)


def sqlite_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def losses(metrics):
    return [{k: v for k, v in row.items() if k not in ("images_per_s",)} for row in metrics["history"]]


@pytest.fixture(scope="module")
def tracked(data_root, tmp_path_factory):
    """One tiny cell trained with an sqlite MLflow store: (store uri, tmp dir, its metrics)."""
    tmp = tmp_path_factory.mktemp("tracked")
    uri = sqlite_uri(tmp)
    return uri, tmp, train_mod.train_cell(tiny_cfg(data_root, tmp), tmp / "a", tracking_uri=uri)


def test_cell_writes_every_field_and_repeats_bit_for_bit(data_root, tracked):
    uri, tmp_path, m1 = tracked
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    for mode in ("global", "local", "concat", "head2", "concat_rerank"):
        assert METRICS <= set(saved["eval"]["market1501"][mode])
        assert 0 <= saved["eval"]["market1501"][mode]["rank1"] <= 100
    assert {"seconds", "images_per_s", "peak_mem_mb", "epochs", "git_sha"} <= set(saved["train"])
    assert [h["epoch"] for h in saved["history"]] == [1, 2, 3]
    assert {"ce_global", "ce_local", "triplet_local", "fdrt", "ihtl", "competition"} <= set(saved["history"][0])
    assert (tmp_path / "a" / "attention.npz").exists() and (tmp_path / "a" / "config.yaml").exists()
    assert not (tmp_path / "a" / "attention.png").exists()  # the figures step draws it, not training
    diag = saved["diagnostics"]  # docs/demo-study.md: branches, attention entropy/overlap, weighted loss curves
    assert diag["branches"]["target"] == "market1501"
    assert diag["branches"]["branches"]["global"]["rank1"] == saved["eval"]["market1501"]["global"]["rank1"]
    assert 0 <= diag["attention"]["entropy_norm_mean"] <= 1
    assert diag["losses"]["epochs"] == [1, 2, 3] and set(diag["losses"]["weighted"]) >= {"fdrt", "ihtl"}
    # what the numbers are averaged over (docs/reliability.md, "Counts")
    data = saved["data"]
    assert data["train"]["dataset"] == "market1501" and data["train"]["images"] > 0 and data["train"]["identities"] > 0
    test = data["test"]["market1501"]
    assert test["queries"] > 0 and test["gallery"] > 0 and 0 < test["num_valid_queries"] <= test["queries"]
    # what each valid query contributes: the tables' intervals are resampled from it (docs/evaluation.md)
    pq = saved["per_query"]["market1501"]
    assert len(pq["pids"]) == test["num_valid_queries"] and set(pq["modes"]) == set(saved["eval"]["market1501"])
    hits = np.asarray(pq["modes"]["concat"]["first_hit"])
    assert 100 * np.mean(hits < 1) == pytest.approx(saved["eval"]["market1501"]["concat"]["rank1"])
    m2 = train_mod.train_cell(tiny_cfg(data_root, tmp_path), tmp_path / "b", tracking_uri=uri)
    assert m1["eval"] == m2["eval"] and losses(m1) == losses(m2)


def test_mlflow_run_holds_exactly_what_sync_replays(tracked):
    """Training logs the names, steps and values of mhsa.run.run_metrics.metric_points (what sync-mlflow
    replays from metrics.json), grouped for MLflow's chart sections; its params say what ran."""
    from mlflow.tracking import MlflowClient

    from mhsa.run.run_metrics import metric_points

    uri, _, metrics = tracked
    client = MlflowClient(uri)
    run = client.get_run(metrics["train"]["mlflow_run_id"])
    want = metric_points(metrics)
    assert set(run.data.metrics) == set(want)
    for key, steps in want.items():
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert got == pytest.approx(steps), key
    sections = {k.rsplit("/", 1)[0] for k in want}
    assert sections == {"Train", "diag", "eval/market1501/global", "eval/market1501/local", "eval/market1501/concat",
                        "eval/market1501/head2", "eval/market1501/concat_rerank", "run"}
    assert min(sections) == "Train"  # MLflow orders chart sections by code point: the loss curves first
    assert {"Train/loss", "Train/loss.ihtl", "Train/weighted.ihtl", "Train/lr", "Train/speed"} <= set(want)
    history = metrics["history"]
    total = sum(want[k][3] for k in want if k.startswith("Train/weighted."))
    assert total == pytest.approx(history[-1]["loss"], rel=1e-6)  # the loss is the sum of the weighted terms
    assert run.data.params["amp"] == "off" and run.data.params["channels_last"] == "False"  # CPU: what ran
    assert "amp=bf16" in run.data.tags["mlflow.note.content"]  # ... and the description says what was asked
    assert "diagnostics.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_interrupted_run_resumes_to_identical_metrics_in_one_mlflow_run(data_root, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = sqlite_uri(tmp_path)
    full = train_mod.train_cell(tiny_cfg(data_root, tmp_path, name="full"), tmp_path / "full",
                                tracking_uri=uri)
    real_save = train_mod.save_checkpoint

    def crash_after_epoch_2(path, state):
        real_save(path, state)
        if state["epoch"] == 2:
            raise KeyboardInterrupt("simulated kill after epoch 2")

    monkeypatch.setattr(train_mod, "save_checkpoint", crash_after_epoch_2)
    cfg = tiny_cfg(data_root, tmp_path, name="resumed")
    with pytest.raises(KeyboardInterrupt):
        train_mod.train_cell(cfg, tmp_path / "resumed", tracking_uri=uri)
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    resumed = train_mod.train_cell(cfg, tmp_path / "resumed", tracking_uri=uri)
    assert resumed["eval"] == full["eval"] and losses(resumed) == losses(full)

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("test")
    runs = client.search_runs([exp.experiment_id], "attributes.run_name = 'resumed'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert sorted({m.step for m in client.get_metric_history(runs[0].info.run_id, "Train/loss")}) == [1, 2, 3]


def test_changed_config_refuses_the_stale_checkpoint(data_root, tmp_path):
    cfg = tiny_cfg(data_root, tmp_path, name="stale")
    cfg.optim.epochs = 1
    train_mod.train_cell(cfg, tmp_path / "stale", tracking_uri=sqlite_uri(tmp_path))
    changed = tiny_cfg(data_root, tmp_path, name="stale", loss={"lambda1": 0.5})
    changed.optim.epochs = 1
    # the finished cell's metrics.json is refused first (it would be overwritten), then its checkpoint
    with pytest.raises(StaleCheckpointError, match=r"metrics\.json holds .*loss\.lambda1: 0\.0001 -> 0\.5"):
        train_mod.train_cell(changed, tmp_path / "stale", tracking_uri=sqlite_uri(tmp_path))
    (tmp_path / "stale" / "metrics.json").unlink()
    with pytest.raises(StaleCheckpointError, match=r"checkpoint .*loss\.lambda1: 0\.0001 -> 0\.5"):
        train_mod.train_cell(changed, tmp_path / "stale", tracking_uri=sqlite_uri(tmp_path))
    # Runtime settings do not invalidate it: more workers or another test batch resume fine.
    same = tiny_cfg(data_root, tmp_path, name="stale", data={"test_batch": 7})
    same.optim.epochs = 1
    assert train_mod.train_cell(same, tmp_path / "stale", tracking_uri=sqlite_uri(tmp_path))["eval"]


def test_four_cells_at_once_share_one_sqlite_store(data_root, tmp_path):
    from mlflow.tracking import MlflowClient

    from mhsa.config import save_config
    from mhsa.run.tracking import init_store

    uri = sqlite_uri(tmp_path)
    init_store(uri, ["test"])
    procs = []
    for i in range(4):
        cfg = tiny_cfg(data_root, tmp_path, name=f"par{i}", seed=i)
        cfg.optim.epochs, cfg.eval.targets = 2, {}
        save_config(cfg, tmp_path / f"par{i}.yaml")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "mhsa", "train", str(tmp_path / f"par{i}.yaml"), "--out",
             str(tmp_path / f"par{i}"), "--tracking-uri", uri],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"par{i}" for i in range(4)]
    assert all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "Train/loss")) == [1, 2]


def test_missing_root_fails_before_training(tmp_path):
    cfg = tiny_cfg(tmp_path / "nowhere", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="market1501"):
        train_mod.train_cell(cfg, tmp_path / "out", tracking_uri=sqlite_uri(tmp_path))
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_cli_config_error_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {num_heads: 0}\n")
    res = subprocess.run([sys.executable, "-m", "mhsa", "train", str(bad), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "model.num_heads" in res.stderr


def test_non_finite_loss_stops_with_epoch_and_term(data_root, tmp_path, monkeypatch):
    from mhsa import losses

    real_forward = losses.Criterion.forward

    def nan_fdrt(self, outputs, pids):
        total, terms = real_forward(self, outputs, pids)
        terms["fdrt"] = torch.tensor(float("nan"))
        return total, terms

    monkeypatch.setattr(losses.Criterion, "forward", nan_fdrt)
    with pytest.raises(train_mod.NonFiniteLossError, match=r"'tiny'.*epoch 1.*'fdrt'"):
        train_mod.train_cell(tiny_cfg(data_root, tmp_path), tmp_path / "nan", tracking_uri=sqlite_uri(tmp_path))


def test_unreachable_tracking_store_still_writes_metrics(data_root, tmp_path, capsys):
    cfg = tiny_cfg(data_root, tmp_path)
    cfg.optim.epochs = 1
    bad_uri = "sqlite:///" + str(tmp_path / "is_a_file" / "mlflow.db")
    (tmp_path / "is_a_file").write_text("not a directory")
    train_mod.train_cell(cfg, tmp_path / "untracked", tracking_uri=bad_uri)
    assert (tmp_path / "untracked" / "metrics.json").exists()
    assert "WARNING: MLflow tracking store" in capsys.readouterr().err


def test_lr_schedule_matches_the_paper():
    cfg = build_run_config({})
    assert optim.lr_at(cfg.optim, 1) == pytest.approx(1e-5)
    assert optim.lr_at(cfg.optim, 50) == pytest.approx(1e-3 * (0.01 + 0.99 * 49 / 50))
    assert optim.lr_at(cfg.optim, 51) == pytest.approx(1e-3)
    assert optim.lr_at(cfg.optim, 200) == pytest.approx(1e-3)
    assert optim.lr_at(cfg.optim, 201) == pytest.approx(1e-4)
    assert optim.lr_at(cfg.optim, 301) == pytest.approx(1e-5)
    # the whole run config reads its optim section; no warm-up starts at the full lr
    assert [optim.lr_at(cfg, e) for e in (1, 50, 301)] == [optim.lr_at(cfg.optim, e) for e in (1, 50, 301)]
    no_warmup = OptimConfig(lr=0.1, warmup_epochs=0, milestones=[1, 2], decay=0.5)
    assert [optim.lr_at(no_warmup, e) for e in (1, 2, 3)] == [0.1, 0.05, 0.025]


def test_make_optimizer_follows_the_optim_section():
    model = build_model_from_config(5, ModelConfig(backbone="resnet18", pretrained=False, num_heads=2))
    every = list(model.parameters())
    adam = optim.make_optimizer(OptimConfig(lr=0.01, weight_decay=0.5), model)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["weight_decay"] == 0.5
    assert [id(p) for p in adam.param_groups[0]["params"]] == [id(p) for p in every]
    sgd = optim.make_optimizer(OptimConfig(name="sgd", lr=0.01, momentum=0.7, freeze_attention_mlp=True), model)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.7
    frozen = {id(p) for n, p in model.named_parameters() if n.startswith("mhsam.attention")}
    assert frozen and {id(p) for p in sgd.param_groups[0]["params"]} == {id(p) for p in every} - frozen
    optim.set_lr(sgd, 0.25)
    assert all(g["lr"] == 0.25 for g in sgd.param_groups)


def test_config_sections_build_the_same_components_as_their_fields():
    section = ModelConfig(backbone="resnet18", pretrained=False, num_heads=3, fusion="sum", feat_dim=32)
    torch.manual_seed(0)
    by_hand = build_model(7, num_heads=3, backbone="resnet18", pretrained=False, fusion="sum", feat_dim=32)
    torch.manual_seed(0)
    from_section = build_model_from_config(7, section)
    a, b = by_hand.state_dict(), from_section.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="unknown model switch"):
        build_model_from_config(7, {"backbone": "resnet18", "headz": 3})
    crit = Criterion.from_config(LossConfig(lambda1=0.5, fdrt_norm="fro", label_smoothing=0.1))
    assert (crit.lambda1, crit.fdrt_norm, crit.ce.label_smoothing) == (0.5, "fro", 0.1)
    assert Criterion.from_config({"lambda3": 0.0}).lambda3 == 0.0


@pytest.mark.parametrize("name", ["tpu", "mps", "cuda0", ""])
def test_unknown_device_is_a_config_error(name):
    with pytest.raises(ConfigError, match=r"config key 'device'.*use auto, cpu, cuda or cuda:N"):
        train_mod.pick_device(name)


def test_cuda_without_a_gpu_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_mod.pick_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"config key 'device'.*'cuda' but no CUDA device.*auto or cpu"):
        train_mod.pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert train_mod.pick_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"'cuda:2' but only 2 CUDA device"):
        train_mod.pick_device("cuda:2")


def test_device_mistake_fails_before_anything_is_written(data_root, tmp_path):
    cfg = tiny_cfg(data_root, tmp_path, device="tpu")
    with pytest.raises(ConfigError, match="device"):
        train_mod.train_cell(cfg, tmp_path / "out", tracking_uri=sqlite_uri(tmp_path))
    assert not (tmp_path / "out").exists()


TRAIN_SIDE = [Path(train_mod.__file__), Path(optim.__file__)]


def test_training_never_imports_plotting():
    code = ("import sys, mhsa.run.train; "
            "bad = sorted({'mhsa.study.plots', 'matplotlib', 'seaborn'} & set(sys.modules)); "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    # also no import inside a function (the old overlay was imported lazily, after training)
    for path in TRAIN_SIDE:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.startswith(("mhsa.study.plots", "matplotlib", "seaborn"))], path


def test_training_functions_stay_short():
    for path in TRAIN_SIDE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno + 1 <= 60, f"{path.name}:{node.name} is over 60 lines"


@pytest.mark.parametrize("cache", [True, False])
def test_the_authors_sampler_and_cutout_reach_the_training_batches(data_root, tmp_path, cache):
    """data.sampler: authors and data.erasing: cutout (docs/paper-to-code.md items (sa), (co)) on both data
    paths: an epoch is num_ids // P batches of P identities, and erased images hold a zero square."""
    from mhsa.data.sampler import AuthorsSampler

    cfg = tiny_cfg(data_root, tmp_path, data={"sampler": "authors", "erasing": "cutout", "random_erasing": 1.0,
                                              "flip": False, "cache": cache, "cache_dir": str(tmp_path / "c")})
    cell = train_mod.set_up(cfg, torch.device("cpu"), tmp_path / "ckpt")
    assert isinstance(cell.sampler, AuthorsSampler) and (cell.train_cache is not None) == cache
    num_ids = len({pid for _, pid, _ in cell.train_set.train})
    loader = (train_mod.cached_train_batches(cell, 1) if cache
              else train_mod.train_loader(cfg, cell.train_set, cell.sampler, cell.device, 1))
    batches = list(loader)
    assert len(batches) == len(loader) == num_ids // cfg.data.p
    side = round(0.5 * cfg.data.width)
    for imgs, pids, _, _ in batches:
        assert len(set(pids.tolist())) == cfg.data.p
        zero = (imgs == 0).all(1)  # B x H x W: the Cutout square (normalised space)
        assert (zero.flatten(1).sum(1) >= side * side).all()


# ------------------------------------------------------------------ precision on (simulated) GPUs
def _gpu(monkeypatch, name, capability):
    """A CUDA device as torch would describe it: `is_bf16_supported` True with emulation on any GPU, without
    it only from compute capability 8.0 (torch.cuda.is_bf16_supported's own rule)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation or capability[0] >= 8)


def test_bf16_on_a_gpu_without_bf16_is_refused_naming_amp(data_root, tmp_path, monkeypatch):
    """The paper's GeForce 2080 Ti (7.5): bf16 would be emulated, slow and likely out of memory; the cell
    stops with one line naming `amp` before anything is written. fp16 and fp32 run; an A100 runs bf16."""
    from mhsa.run import device

    _gpu(monkeypatch, "NVIDIA GeForce RTX 2080 Ti", (7, 5))
    cuda = torch.device("cuda")
    with pytest.raises(ConfigError, match=r"config key 'amp' is 'bf16' but NVIDIA GeForce RTX 2080 Ti \(compute "
                                          r"capability 7\.5\) has no bf16 units.*amp: fp16"):
        device.check_amp("bf16", cuda)
    device.check_amp("fp16", cuda)
    device.check_amp("off", cuda)
    device.check_amp("bf16", torch.device("cpu"))  # CPU cells run in fp32 whatever amp says
    cfg = tiny_cfg(data_root, tmp_path, device="cuda", amp="bf16")
    with pytest.raises(ConfigError, match="config key 'amp'"):
        train_mod.train_cell(cfg, tmp_path / "out", tracking_uri=sqlite_uri(tmp_path))
    assert not (tmp_path / "out").exists()
    _gpu(monkeypatch, "NVIDIA A100-SXM4-80GB", (8, 0))
    device.check_amp("bf16", cuda)


def test_evaluation_asks_for_no_autocast_whatever_the_cells_amp(data_root, tmp_path, monkeypatch):
    """A bf16 (or fp16) cell on a GPU is evaluated in fp32: features, ranking and re-ranking see unrounded
    embeddings, and bf16 and fp16 cells of one model rank alike (simulated CUDA device, nothing runs on it)."""
    seen = []

    def fake_extract(model, batches, **kw):
        seen.append(kw)
        return {"features": {}, "pids": None, "camids": None}

    monkeypatch.setattr(train_mod, "extract_features", fake_extract)
    monkeypatch.setattr(train_mod, "test_batches", lambda *a: [])
    monkeypatch.setattr(train_mod, "evaluate_modes_per_query", lambda *a, **k: ({}, {}))
    for amp in ("bf16", "fp16"):
        cfg = tiny_cfg(data_root, tmp_path, amp=amp)
        ds = SimpleNamespace(query=[], gallery=[])  # test_batches is replaced: no image is read
        train_mod.evaluate_cell(cfg, None, {"market1501": (ds, ["global"])}, torch.device("cuda"))
    assert len(seen) == 4 and all(kw.get("amp_dtype") is None for kw in seen), seen
    assert all(kw["channels_last"] for kw in seen)  # channels_last stays on CUDA


def test_non_finite_loss_is_found_without_a_sync_per_step_and_names_the_first_bad_step(data_root, tmp_path,
                                                                                          monkeypatch):
    """The finiteness check reads the loss once per epoch (no host sync per step on a GPU), still names the
    first bad iteration and term, and stops before that epoch's checkpoint is written."""
    from mhsa import losses

    real_forward = losses.Criterion.forward
    calls = []

    def nan_on_third(self, outputs, pids):
        total, terms = real_forward(self, outputs, pids)
        calls.append(1)
        if len(calls) == 3:
            terms["ihtl"] = torch.tensor(float("inf"))
        return total, terms

    reads = []
    real_isfinite = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda t: reads.append(1) or real_isfinite(t))
    monkeypatch.setattr(losses.Criterion, "forward", nan_on_third)
    cfg = tiny_cfg(data_root, tmp_path)
    with pytest.raises(train_mod.NonFiniteLossError, match=r"epoch 1, iteration 3: term\(s\) 'ihtl'"):
        train_mod.train_cell(cfg, tmp_path / "inf", tracking_uri=sqlite_uri(tmp_path))
    assert len(calls) > 3 and len(reads) <= 2  # the epoch ran on; one check for it (+ the locator)
    assert not (tmp_path / "inf" / "checkpoints" / "last.pt").exists()


def test_a_step_cap_cuts_the_schedule_and_is_part_of_the_cells_identity(data_root, tmp_path):
    """optim.max_steps (the rehearsal preset): the cell follows the recipe's schedule and stops after that
    many optimiser steps, its last epoch cut short; the cap is weight-defining, left out of the identity at
    its default of 0 (checkpoints and digests of earlier cells unchanged)."""
    from mhsa.config import weights_config

    cfg = tiny_cfg(data_root, tmp_path)
    per_epoch = len(train_mod.PKSampler([p for _, p, _ in train_mod.datasets.load("market1501", data_root).train],
                                        4, 2, seed=0)) // 8
    assert per_epoch >= 2
    capped = tiny_cfg(data_root, tmp_path, optim={"max_steps": per_epoch + 1})
    m = train_mod.train_cell(capped, tmp_path / "capped", tracking_uri=sqlite_uri(tmp_path))
    assert m["train"]["epochs"] == 2 and m["train"]["steps"] == per_epoch + 1  # 3 epochs in the recipe
    assert [row["epoch"] for row in m["history"]] == [1, 2]
    assert m["history"][1]["lr"] == optim.lr_at(capped.optim, 2)  # the recipe's schedule, cut, not squeezed
    assert "optim.max_steps" not in weights_config(cfg)
    assert weights_config(capped)["optim.max_steps"] == str(per_epoch + 1)
    # rerun: finished (the final weights of epoch 2 are the cell's end), it only re-evaluates
    again = train_mod.train_cell(capped, tmp_path / "capped", tracking_uri=sqlite_uri(tmp_path))
    assert again["train"]["steps"] == per_epoch + 1 and again["eval"] == m["eval"]


def test_a_labelled_test_set_reports_where_each_head_looks(tmp_path):
    """With the generator's label maps, metrics.json says each head's share of attention on background,
    visible body and occluder over every query (docs/demo-study.md "The paper's premise")."""
    root = tmp_path / "occluded_duke"
    generate(root, "occluded_duke", seed=3, num_ids=6, images_per_id=5, height=32, width=16, labels=True)
    over = {"data": {"dataset": "occluded_duke", "root": str(root), "cache_dir": str(tmp_path / "cache")},
            "eval": {"targets": {"occluded_duke": {"root": str(root), "modes": ["concat"]}}},
            "optim": {"epochs": 1, "milestones": []}, "tracking": {"enabled": False}, "checkpoint_every": 0}
    metrics = train_mod.train_cell(tiny_cfg(root, tmp_path, **over), tmp_path / "out")
    share = metrics["diagnostics"]["attention_share"]
    assert share["dataset"] == "occluded_duke"
    assert share["images"] == metrics["data"]["test"]["occluded_duke"]["queries"]
    assert len(share["heads"]) == 3 and all(abs(sum(h) - 1) < 1e-6 for h in share["heads"])
    assert share["chance"][2] > 0  # every query is occluded
    # attention.npz keeps where the occluder is in each image it shows (the figures outline it)
    from mhsa.data.synthetic import read_labels

    with np.load(tmp_path / "out" / "attention.npz") as z:
        occluder, pids = z["occluder"], z["pids"]
        assert occluder.shape == (len(pids), *z["images"].shape[2:]) and occluder.dtype == bool
    labels = read_labels(root)
    firsts = {}
    for path, pid, _ in train_mod.datasets.load("occluded_duke", root).query:
        firsts.setdefault(pid, str(Path(path).relative_to(root)))
    height, width = occluder.shape[1:]
    for mask, pid in zip(occluder, pids, strict=True):
        lab = labels[firsts[int(pid)]] == 2  # generated at 32x16, shown at the cell's input size
        assert mask.any() and mask.mean() == pytest.approx(lab.mean(), abs=0.05)
        for y, x in [(0, 0), (height - 1, width - 1), (height // 2, width // 3)]:
            assert mask[y, x] == lab[y * lab.shape[0] // height, x * lab.shape[1] // width]
    base_over = {**over, "model": {"mhsam": False},
                 "eval": {"targets": {"occluded_duke": {"root": str(root), "modes": ["global"]}}}}
    baseline = train_mod.train_cell(tiny_cfg(root, tmp_path, **base_over), tmp_path / "base")
    assert len(baseline["diagnostics"]["attention_share"]["heads"]) == 1  # its activation map


def test_a_test_set_without_label_maps_reports_no_attention_share(data_root, tmp_path):
    over = {"optim": {"epochs": 1, "milestones": []}, "tracking": {"enabled": False}, "checkpoint_every": 0}
    metrics = train_mod.train_cell(tiny_cfg(data_root, tmp_path, **over), tmp_path / "plain")
    assert "attention_share" not in metrics["diagnostics"]
