"""Every bad input of docs/reliability.md case 9 gives one line naming the key or file, exits non-zero, and
keeps the traceback out of the terminal (in the --log file, or shown with --debug).

Most cases call the CLI's `main` in-process (one torch import for all); the YAML, log-file and
read-only cases run `python -m mhsa` as a subprocess, as a user would.
"""

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mhsa.errors import describe

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "mhsa" / "configs" / "smoke.yaml"
DATA = "results/synthetic/smoke-market1501"  # the smoke config's root, relative to the work dir


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from mhsa.data.synthetic import generate

    work = tmp_path_factory.mktemp("cli")
    generate(work / DATA, "market1501", seed=0, num_ids=16, images_per_id=8, height=64, width=32)
    return work


@pytest.fixture
def cli(work, capsys, monkeypatch):
    """`python -m mhsa train smoke.yaml --set tracking.enabled=false ARGS` in-process, in `work`."""
    from mhsa.__main__ import main

    monkeypatch.chdir(work)

    def run(*args, env=None):
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        capsys.readouterr()
        rc = main(["train", str(SMOKE), "--set", "tracking.enabled=false", *args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, rc, out.out, out.err)

    return run


def cli_subprocess(work, *args, prefix=()):
    cmd = [*prefix, sys.executable, "-m", "mhsa", "train", str(SMOKE), "--set", "tracking.enabled=false", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300, env=env)


def assert_one_line(proc, *needles, rc=1):
    err = proc.stderr
    assert proc.returncode == rc, err
    assert "Traceback" not in err and "During handling" not in err, err
    lines = err.rstrip("\n").splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-2] == errors[0], err  # the message, then where the traceback is
    assert lines[-1] == "(rerun with --debug for the traceback)"
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def copy_data(work, name):
    dst = work / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(work / DATA, dst)
    return dst


def on(root):
    """Train and test on a copy of the data set at `root` (no regeneration)."""
    return ["--set", f"data.root={root}", "--set", "data.synthetic=null",
            "--set", f"eval.targets={{market1501: {{root: {root}}}}}", "--out", str(Path(root).parent / "o")]


def test_p_larger_than_the_identities_names_data_p(work, cli):
    proc = cli("--set", "data.p=50", "--out", "o")
    assert_one_line(proc, "'data.p'", "16 identities", "at most 16", rc=2)


def test_malformed_yaml_names_file_and_line(work):
    bad = work / "bad.yaml"
    bad.write_text("name: x\nmodel:\n  num_heads: 4\n   fusion: concat\n")
    proc = subprocess.run([sys.executable, "-m", "mhsa", "train", str(bad), "--out", "o"], cwd=work,
                          capture_output=True, text=True, timeout=120)
    assert_one_line(proc, str(bad), "line 4", "malformed YAML")


def test_missing_data_root_names_the_root(work, cli):
    proc = cli(*on(work / "nowhere"))
    assert_one_line(proc, str(work / "nowhere"), "bounding_box_train", "published at")


def test_empty_data_root_names_the_root(work, cli):
    root = work / "empty"
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (root / split).mkdir(parents=True, exist_ok=True)
    proc = cli(*on(root))
    assert_one_line(proc, str(root), "no training images")


def test_corrupt_query_jpeg_is_found_before_training(work, cli):
    root = copy_data(work, "corrupt_query")
    bad = sorted((root / "query").glob("*.jpg"))[0]
    bad.write_bytes(bad.read_bytes()[:200])
    proc = cli(*on(root))
    # found by the test-set check, or, with data.cache on, by decoding the test set into the cache
    msg = assert_one_line(proc, str(bad), "replace or remove")
    assert "unreadable image" in msg or "cannot read image" in msg, msg
    assert "epoch 1/" not in proc.stderr  # before the first training step
    assert not (root.parent / "o" / "checkpoints" / "last.pt").exists()


def test_corrupt_train_jpeg_names_the_file(work, cli):
    root = copy_data(work, "corrupt_train")
    for bad in (root / "bounding_box_train").glob("*.jpg"):  # every one: the first batch fails
        bad.write_bytes(b"not a jpeg at all")
    proc = cli(*on(root), "--set", "optim.epochs=1")
    msg = assert_one_line(proc, str(root / "bounding_box_train"), "replace or remove")
    # the image cache (data.cache: auto) lists every bad file at once; the loader path, the first it reads
    assert "128 unreadable image(s)" in msg or "cannot read image" in msg, msg


def test_unparseable_file_name_names_the_file(work, cli):
    root = copy_data(work, "badname")
    shutil.copy(sorted((root / "bounding_box_train").glob("*.jpg"))[0], root / "bounding_box_train" / "IMG_01.jpg")
    proc = cli(*on(root))
    assert_one_line(proc, str(root / "bounding_box_train" / "IMG_01.jpg"), "rename or remove")


def test_no_valid_query_is_found_before_training(work, cli):
    root = copy_data(work, "noquery")
    for f in (root / "query").glob("*.jpg"):  # a query of a pid that the gallery does not hold
        f.rename(f.with_name("9999" + f.name[4:]))
    proc = cli(*on(root))
    assert_one_line(proc, "no query has a valid match", str(root))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_names_device(work, cli):
    # the device is a config key: exit 2, as for every ConfigError
    assert_one_line(cli("--set", "device=cuda", "--out", "o"), "'device'", "no CUDA device", rc=2)


def test_unknown_device_names_device(work, cli):
    assert_one_line(cli("--set", "device=tpu", "--out", "o"), "'device'", "'tpu'", "use auto, cpu", rc=2)


def test_unknown_data_set_name_is_not_a_bare_key_error(work, cli):
    proc = cli("--set", "data.dataset=market1502", "--out", "o")
    msg = assert_one_line(proc, "unknown data set 'market1502'", "market1501, dukemtmc", rc=2)
    assert "KeyError" not in proc.stderr and not msg.startswith('error: "')


def test_pretrained_weights_missing_offline_says_where_to_put_them(work, cli, tmp_path):
    env = {"TORCH_HOME": str(tmp_path / "torch"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    proc = cli("--set", "model.pretrained=imagenet", "--out", "o", env=env)
    assert_one_line(proc, "resnet18-f37072fd.pth", str(tmp_path / "torch" / "hub" / "checkpoints"),
                    "model.pretrained")


def test_out_dir_that_is_a_file(work, cli):
    (work / "afile").write_text("x")
    assert_one_line(cli("--out", "afile"), "afile", "a file is in the way")


def _read_only_mount_works() -> bool:
    probe = "d=$(mktemp -d) && mount -t tmpfs -o ro tmpfs $d && ! touch $d/x 2>/dev/null"
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", probe], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_read_only_file_system(work, tmp_path):
    if not _read_only_mount_works():
        pytest.skip("no user namespaces to mount a read-only file system")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (f"mount -t tmpfs -o ro tmpfs {ro} && exec {sys.executable} -m mhsa train {SMOKE} "
              f"--set tracking.enabled=false --out {ro}/out")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=work, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert_one_line(proc, f"{ro}/out", "read-only")


def test_describe_os_errors_name_the_file():
    msg = describe(OSError(errno.EROFS, "Read-only file system", "/x/metrics.json"))
    assert msg.startswith("/x/metrics.json: Read-only file system;") and "writable" in msg
    assert "full" in describe(OSError(errno.ENOSPC, "No space left on device", "/x/last.pt"))
    assert describe(ValueError("a bug")) is None  # not a user mistake: the traceback is kept


def test_describe_unwraps_a_dataloader_worker_error():
    """With workers > 0, torch re-raises the worker's exception with its traceback in the message."""
    from mhsa.data.loader import UnreadableImageError

    wrapped = UnreadableImageError(
        "Caught UnreadableImageError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
        "last):\n  File \"x.py\", line 1, in f\nmhsa.data.loader.UnreadableImageError: cannot read image "
        "/d/0001_c1.jpg (item 3): broken; replace or remove the file\n")
    assert describe(wrapped) == "cannot read image /d/0001_c1.jpg (item 3): broken; replace or remove the file"


def test_traceback_goes_to_the_log_file_or_debug(work, cli, tmp_path):
    log = tmp_path / "train.log"
    proc = cli_subprocess(work, "--set", "device=tpu", "--out", "o", "--log", str(log))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == f"(full traceback in {log})"
    assert "Traceback" in log.read_text() and "DeviceError" in log.read_text()
    from mhsa.errors import DeviceError

    with pytest.raises(DeviceError, match="'tpu'"):  # --debug: the exception propagates
        cli("--set", "device=tpu", "--out", "o", "--debug")
