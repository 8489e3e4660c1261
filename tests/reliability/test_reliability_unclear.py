"""Mistakes that were silently wrong or ended in a traceback, now one line naming the key or file
(docs/reliability.md, "Cases and their tests", rows 12-): out-of-range knobs before any training,
a rerun into a finished --out with another config, counts recorded in metrics.json, a full disk
during a write, unusable `model.pretrained` files, unreadable test images with the image cache, a
results_dir overridden, in the way or read-only, and malformed YAML in config.yaml under Snakemake.

CLI cases call `python -m mhsa`'s `main` in-process (one torch import for all), as
tests/test_reliability_errors.py does; the full-disk and read-only cases need a mount of their own
and run in a user namespace (skipped where there is none).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mhsa.errors import describe

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "mhsa" / "configs" / "smoke.yaml"
DATA = "results/synthetic/smoke-market1501"  # the smoke config's root, relative to the work dir
SMALL = ["--set", "tracking.enabled=false", "--set", "optim.epochs=1", "--set", "eval.attention_images=2",
         "--set", "data.height=32", "--set", "data.width=16", "--set", "model.num_heads=2",
         "--set", "keep_weights=false"]  # a 2x1 feature map: 2 positions


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from mhsa.data.synthetic import generate

    work = tmp_path_factory.mktemp("unclear")
    generate(work / DATA, "market1501", seed=0, num_ids=16, images_per_id=8, height=64, width=32)
    return work


@pytest.fixture
def cli(work, capsys, monkeypatch):
    """`python -m mhsa train smoke.yaml SMALL ARGS` in-process in `work`: (exit code, stderr lines)."""
    from mhsa.__main__ import main

    monkeypatch.chdir(work)

    def run(*args):
        capsys.readouterr()
        rc = main(["train", str(SMOKE), *SMALL, *args])
        return rc, capsys.readouterr().err.rstrip("\n").splitlines()

    return run


def one_line(err: list, *needles) -> str:
    """The run's one `error:` line (then where the traceback is), holding every needle."""
    assert not any("Traceback" in line for line in err), err
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and err[-2] == errors[0], err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


# ---------------------------------------------------------------------------- bounds of the knobs
@pytest.mark.parametrize("item, message", [
    ("seed=-1", "config key 'seed': must be >= 0, got -1"),
    ("data.test_batch=0", "config key 'data.test_batch': must be >= 1, got 0"),
    ("threads=-1", "config key 'threads': must be >= 0, got -1"),
    ("data.pad=-4", "config key 'data.pad': must be >= 0, got -4"),
    ("optim.momentum=1.5", "config key 'optim.momentum': must be in [0, 1], got 1.5"),
    ("optim.lr=.inf", "config key 'optim.lr': expected a finite number, got inf"),
    ("eval.attention_images=0", "config key 'eval.attention_images': must be >= 1, got 0"),
    ("data.synthetic.num_ids=0", "config key 'data.synthetic.num_ids': must be >= 1, got 0"),
    ("data.synthetic.width=8", "config key 'data.synthetic.width': must be >= 10, got 8"),
    ("data.synthetic.num_idz=4", "unknown generator parameter(s) ['num_idz']"),
    ("eval.targets={market1501: {root: x, mode: [global]}}", "unknown key(s) ['mode']"),
])
def test_an_out_of_range_knob_stops_before_anything_runs(cli, work, item, message):
    rc, err = cli("--set", item, "--out", str(work / "never"))
    assert rc == 2
    one_line(err, message)
    assert not (work / "never").exists()


# ------------------------------------------------------------------- a finished --out, counts
@pytest.fixture
def finished(work, tmp_path):
    """What a cell finished with keep_weights: false leaves: metrics.json (recording its resolved config)
    and config.yaml, no checkpoint (a real run of it: tests/test_reliability_kills.py)."""
    from mhsa.config import load_run_config, save_config
    from mhsa.io import atomic_write_json

    cfg = load_run_config(SMOKE, [a for a in SMALL if a != "--set"])
    out = tmp_path / "finished"
    (out / "checkpoints").mkdir(parents=True)
    atomic_write_json(out / "metrics.json", {"cell": cfg.name, "config": cfg.to_dict(),
                                             "eval": {"market1501": {"global": {"rank1": 50.0}}}})
    save_config(cfg, out / "config.yaml")
    return out


@pytest.mark.parametrize("keep_weights", ["false", "true"])
def test_a_rerun_with_another_config_never_overwrites_a_finished_cell(cli, finished, keep_weights):
    before = (finished / "metrics.json").read_bytes()
    rc, err = cli("--set", "loss.lambda1=0.5", "--set", f"keep_weights={keep_weights}", "--out", str(finished))
    assert rc == 1
    one_line(err, f"{finished / 'metrics.json'} holds a cell finished with another config",
             "loss.lambda1: 0.0001 -> 0.5", "pass another --out, or delete")
    assert (finished / "metrics.json").read_bytes() == before
    assert not list((finished / "checkpoints").glob("*.pt"))  # nothing trained


def test_the_same_config_is_not_refused(finished):
    """A rerun with only runtime keys changed (a test mode, the threads) re-evaluates: no refusal."""
    from mhsa.config import load_run_config
    from mhsa.run.checkpoint import check_finished_run

    cfg = load_run_config(SMOKE, [a for a in SMALL if a != "--set"] + ["threads=3", "data.test_batch=7"])
    check_finished_run(cfg, finished)
    check_finished_run(load_run_config(SMOKE, ["loss.lambda1=0.5"]), finished.parent / "elsewhere")


def test_queries_without_a_valid_match_are_warned_about_and_counted(caplog):
    """14 of 32 queries without a match in another camera: the metrics average over 18, and say so."""
    import numpy as np

    from mhsa.data.check import check_test_sets, eval_set_counts
    from mhsa.data.datasets import ReidDataset
    from mhsa.evaluation import evaluate

    query = [(f"q{i}.jpg", i, 0) for i in range(32)]
    gallery = [(f"g{i}.jpg", i, 1 if i < 18 else 0) for i in range(32)]  # pids 18-31: same camera only
    ds = ReidDataset("market1501", "/data/m", [], query, gallery)
    with caplog.at_level(logging.WARNING, logger="mhsa.data.check"):
        check_test_sets({"market1501": ds}, decoded={"market1501"})
    assert "market1501: 14 of 32 queries have no valid match" in caplog.text and "other 18" in caplog.text
    assert eval_set_counts(ds)["num_valid_queries"] == 18
    pids, cams = np.array([p for _, p, _ in query]), np.array([c for *_, c in query])
    res = evaluate(np.random.default_rng(0).random((32, 32)), pids, np.array([p for _, p, _ in gallery]),
                   cams, np.array([c for *_, c in gallery]))
    assert res["num_valid_queries"] == 18  # the protocol's own count: the same definition


# ------------------------------------------------------------------------------ model.pretrained
def _evil(path: Path) -> Path:
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"conv1.weight": Evil()}, path)
    return path


@pytest.mark.parametrize("kind, message", [
    ("evil", "holds Python objects a state dict never contains (refused: loading them could run code)"),
    ("truncated", "is corrupt or not a torch file"),
    ("list", "does not hold a state dict (got list)"),
    ("resnet34", "do not fit this ResNet (model.backbone)"),
])
def test_an_unusable_pretrained_file_is_one_line_without_the_weights_only_hint(cli, work, tmp_path, kind, message):
    import torch
    import torchvision

    path = tmp_path / f"{kind}.pt"
    if kind == "evil":
        _evil(path)
    elif kind == "truncated":
        torch.save(torchvision.models.resnet18().state_dict(), path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "list":
        torch.save([1, 2], path)
    else:
        torch.save(torchvision.models.resnet34().state_dict(), path)
    rc, err = cli("--set", f"model.pretrained={path}", "--out", str(tmp_path / "o"))
    assert rc == 1
    one_line(err, str(path), "model.pretrained", message)
    assert not any("weights_only=False" in line or "weights_only` set to `False" in line for line in err)


# ------------------------------------------------------------------ unreadable images, image cache
def test_unreadable_test_images_with_the_image_cache_are_listed_at_once(cli, work):
    root = work / "bad_test_images"
    shutil.copytree(work / DATA, root)
    gallery = [f for f in sorted((root / "bounding_box_test").glob("*.jpg")) if not f.name.startswith("-1")]
    bad = sorted((root / "query").glob("*.jpg"))[:2] + gallery[:1]  # (-1: distractors, not in the gallery)
    for f in bad:
        f.write_bytes(f.read_bytes()[:100])
    on = ["--set", f"data.root={root}", "--set", "data.synthetic=null", "--set", "data.cache=true",
          "--set", f"data.cache_dir={work / 'cache'}", "--set", f"eval.targets={{market1501: {{root: {root}}}}}"]
    rc, err = cli(*on, "--out", str(work / "o_bad"))
    assert rc == 1
    one_line(err, "3 unreadable image(s)", *map(str, bad))
    assert not (work / "o_bad" / "metrics.json").exists()


# ----------------------------------------------------------------------------- full disk, writes
def test_a_write_that_fails_names_its_target_not_the_temp_file(tmp_path, monkeypatch):
    from mhsa import io

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a file object's write raises it

    with pytest.raises(OSError) as err:
        io.atomic_write(tmp_path / "metrics.json", full)
    assert describe(err.value) == (f"{tmp_path / 'metrics.json'}: No space left on device; the disk is full; "
                                   "free space or choose another output directory")
    assert os.listdir(tmp_path) == []  # no temp file left

    def torch_like(tmp):  # torch.save to a path: the errno is lost in a RuntimeError
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(io, "_disk_full", lambda folder: True)
    with pytest.raises(OSError) as err:
        io.atomic_write(tmp_path / "last.pt", torch_like)
    assert err.value.errno == errno.ENOSPC and str(tmp_path / "last.pt") in describe(err.value)
    monkeypatch.setattr(io, "_disk_full", lambda folder: False)
    with pytest.raises(RuntimeError):  # not a write failure: the bug keeps its traceback
        io.atomic_write(tmp_path / "last.pt", torch_like)


def test_a_checkpoint_keeps_the_errno_of_a_full_disk(tmp_path, monkeypatch):
    """Saved through a file object, torch raises the OSError itself (to a path: a RuntimeError)."""
    import builtins

    import torch

    from mhsa.run.checkpoint import save_checkpoint

    real_open = builtins.open

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(builtins, "open", lambda f, mode="r", *a, **k: Full(real_open(f, mode, *a, **k))
                        if "w" in mode and str(f).endswith(".tmp") else real_open(f, mode, *a, **k))
    with pytest.raises(OSError) as err:
        save_checkpoint(tmp_path / "last.pt", {"model": torch.zeros(1000), "optimizer": {}, "epoch": 1})
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "last.pt")


def _userns_mount_works() -> bool:
    probe = "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", probe], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_a_full_disk_during_training_is_one_line_naming_the_file(work, tmp_path):
    """A real full disk (a 2 MB tmpfs) under --out: the first checkpoint does not fit."""
    if not _userns_mount_works():
        pytest.skip("no user namespaces to mount a small file system")
    small = tmp_path / "small"
    small.mkdir()
    args = " ".join(SMALL)
    script = (f"mount -t tmpfs -o size=2m tmpfs {small} && exec {sys.executable} -m mhsa train {SMOKE} {args} "
              f"--out {small}/out")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=work, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    err = proc.stderr.rstrip("\n").splitlines()
    assert proc.returncode == 1, proc.stderr[-2000:]
    one_line(err, f"{small}/out/checkpoints/last.pt: No space left on device", "the disk is full")


def test_the_image_cache_reserves_its_file_and_names_it_when_the_disk_is_full(tmp_path, monkeypatch):
    """Memory-mapped writes into a sparse file on a full disk die of SIGBUS: the file is allocated first."""
    from mhsa.data import cache as C

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    img = tmp_path / "0001_c1s1_000000_00.jpg"
    from PIL import Image

    Image.new("RGB", (8, 16)).save(img)
    with pytest.raises(OSError) as err:
        C.DecodedCache.open_or_build([(str(img), 1, 1)], 16, 8, tmp_path / "cache", {"dataset": "x", "split": "q"})
    msg = describe(err.value)
    assert msg.startswith(str(tmp_path / "cache")) and msg.endswith(".npy: No space left on device; the disk is "
                                                                    "full; free space or choose another output "
                                                                    "directory")
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix in (".npy", ".tmp")]


# ------------------------------------------------------------------------------ results_dir, YAML
def test_an_explicit_results_dir_wins_over_the_presets(tmp_path):
    from mhsa.study.build import build_study, dataset_root, load_study_config

    config = load_study_config(REPO / "config.yaml")
    assert build_study(config, "ci").config["results_dir"] == "results/ci"
    study = build_study(config, "ci", results_dir=str(tmp_path / "mine"))
    assert study.config["results_dir"] == str(tmp_path / "mine")
    assert dataset_root(study.config, "market1501") == str(tmp_path / "mine" / "synthetic" / "market1501")
    assert build_study(config, "demo", results_dir="x").config["results_dir"] == "x"


def _snakemake(wd: Path, *args: str, prefix=()) -> subprocess.CompletedProcess:
    cmd = [*prefix, sys.executable, "-m", "snakemake", *args]
    env = {**os.environ, "MLFLOW_TRACKING_URI": "sqlite:///unused.db"}
    return subprocess.run(cmd, cwd=wd, env=env, capture_output=True, text=True, timeout=300)


def test_snakemake_puts_everything_under_a_results_dir_given_on_the_command_line(tmp_path, copy_workflow):
    wd = copy_workflow(tmp_path)
    proc = _snakemake(wd, "-n", "tables", "--config", "preset=ci", "results_dir=elsewhere/ci")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "elsewhere/ci/runs/" in out and "elsewhere/ci/tables/table_2.csv" in out
    assert "results/ci/" not in out


def test_snakemake_results_dir_in_the_way_or_read_only_is_one_line(tmp_path, copy_workflow):
    wd = copy_workflow(tmp_path)
    (wd / "afile").write_text("")
    proc = _snakemake(wd, "-n", "tables", "--config", "preset=ci", "results_dir=afile/ci")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out
    assert "results_dir afile/ci: afile is a file, not a directory; remove it or choose another results_dir" in out
    if not _userns_mount_works():
        pytest.skip("no user namespaces to mount a read-only file system")
    (wd / "ro").mkdir()
    script = (f"mount -t tmpfs -o ro tmpfs {wd / 'ro'} && exec {sys.executable} -m snakemake --cores 1 tables "
              "--config preset=ci results_dir=ro/ci")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=wd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": "sqlite:///unused.db"})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out
    assert "results_dir ro/ci: ro is on a read-only file system; choose a writable results_dir" in out
    assert "No job was started" in out and "rule train_cell" not in out


def test_a_yaml_syntax_error_in_config_yaml_names_line_and_column(tmp_path, copy_workflow, capsys):
    wd = copy_workflow(tmp_path)
    text = (wd / "config.yaml").read_text()
    (wd / "config.yaml").write_text(text.replace("preset: demo ", "preset: [demo ", 1))
    proc = _snakemake(wd, "-n", "tables")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out
    assert "config.yaml, line 12, column 1: malformed YAML (while parsing a flow sequence that starts at line 10" in out

    from mhsa.study.tables import main

    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(wd / "config.yaml"), "--runs", str(tmp_path)])
    assert exit_.value.code == 1
    assert f"error: {wd / 'config.yaml'}, line 12, column 1: malformed YAML" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["", "/", "  "])
def test_an_empty_results_dir_never_means_the_root_of_the_file_system(value):
    from mhsa.study.build import StudyError, build_study, load_study_config

    config = load_study_config(REPO / "config.yaml")
    with pytest.raises(StudyError, match="--config results_dir: expected the name of a folder"):
        build_study(config, "ci", results_dir=value)
    with pytest.raises(StudyError, match="presets.ci.results_dir: expected the name of a folder"):
        build_study({**config, "presets": {**config["presets"], "ci": {**config["presets"]["ci"],
                                                                         "results_dir": value}}}, "ci")


# --------------------------------------------------------------------- more files, one line each
def test_a_corrupt_image_cache_is_one_line_naming_it(tmp_path):
    from mhsa.data.cache import CorruptCacheError, DecodedCache

    bad = tmp_path / "market1501-query-64x32-abc.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(CorruptCacheError) as err:
        DecodedCache._load(bad, (1, 3, 64, 32))
    assert describe(err.value).startswith(f"decoded-image cache {bad} is unreadable") and "delete it" in str(err.value)


def test_a_full_disk_while_generating_a_synthetic_set_names_the_image(tmp_path, monkeypatch):
    from PIL import Image

    from mhsa.data.synthetic import generate

    def full(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(OSError) as err:
        generate(tmp_path / "m", "market1501", seed=0, num_ids=2, images_per_id=3, height=64, width=32)
    msg = describe(err.value)
    assert msg.startswith(str(tmp_path / "m")) and msg.endswith(".jpg: No space left on device; the disk is full; "
                                                                "free space or choose another output directory")


def test_a_run_config_that_is_a_directory(tmp_path):
    from mhsa.config import ConfigError, load_run_config

    with pytest.raises(ConfigError, match="is a directory, not a file"):
        load_run_config(tmp_path)


def test_the_synthetic_generator_checks_its_parameters_against_the_same_bounds(tmp_path):
    """A 16x8 stand-in used to end in `ValueError: low >= high` deep in the renderer."""
    from mhsa.config import ConfigError
    from mhsa.data.synthetic import generate

    for kw, key in ((dict(height=16, width=8), "'width' must be an integer >= 10, got 8"),
                    (dict(height=14), "'height' must be an integer >= 15, got 14"),
                    (dict(num_cams=1), "'num_cams' must be an integer >= 2")):
        with pytest.raises(ConfigError, match=key):
            generate(tmp_path / "m", "market1501", **kw)
    assert not (tmp_path / "m").exists()
    generate(tmp_path / "m", "market1501", num_ids=1, images_per_id=3, height=15, width=10)  # the bound itself
