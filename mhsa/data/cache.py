"""Decoded-image cache: each data set split, at one input size, decoded and resized once.

The images of a split are stored as one uint8 array N x 3 x H x W in a NumPy ``.npy`` file under
``cache_dir`` (``results/cache/`` in the workflow), memory-mapped by every cell that uses it, so the
JPEG decode and resize are paid once per (data set, size) instead of once per image per epoch per
cell. Row ``i`` is ``items[i]`` after exactly the loader path's resize (``transforms.resize_op``),
so ``cache.batch(idx) / 255`` equals what ``ToTensor`` gives the loader path.

The file name carries a digest of the key: data set, resolved root, split, size, resize method and a
fingerprint of the file list (relative paths, sizes and mtimes, in order), so a changed data set gets
a new file. Builds write a temp file and rename it (the ``.npy`` appearing is the commit point),
under an exclusive ``fcntl`` lock on a ``.lock`` file beside it: a second job building the same key
waits for the first and then reuses its file.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from mhsa.errors import DataError
from mhsa.io import atomic_write_text, write_failure

from .loader import ImageDataset, UnreadableImageError
from .transforms import RESIZE_METHOD, resize_op

log = logging.getLogger("mhsa.data.cache")
MAX_LISTED = 5  # unreadable images named in the message (the count says how many more)
# Kept free beside a new cache file: checkpoints, metrics and logs of the running cells need room too.
DISK_RESERVE = 2**30
CACHE_FORMAT = 1  # bump when the file layout or the decode changes: old files are then not reused


def image_bytes(n: int, height: int, width: int) -> int:
    """Size of the cached array of ``n`` images (what ``data.cache_max_gb`` is compared with)."""
    return int(n) * 3 * int(height) * int(width)


def use_cache(setting, n: int, height: int, width: int, max_gb: float) -> bool:
    """``data.cache``: True/False as given; "auto" is on when the split's array fits ``max_gb``.

    The budget is a config value, not the free memory of the moment, so the choice (and with it
    the augmentation's random stream) is the same on every rerun.
    """
    if setting == "auto":
        return n > 0 and image_bytes(n, height, width) <= max_gb * 2**30
    return bool(setting)


def file_fingerprint(items: Sequence[tuple], root: str | Path | None = None) -> str:
    """sha1 over (path relative to ``root``, size, mtime_ns) of every item's file, in order."""
    h = hashlib.sha1()
    base = Path(root).resolve() if root is not None else None
    for item in items:
        path = Path(item[0])
        try:
            st = path.stat()
        except OSError as err:
            raise FileNotFoundError(f"decoded-image cache: cannot stat image {path}: {err}") from err
        rel = str(path)
        if base is not None:
            try:
                rel = str(path.resolve().relative_to(base))
            except ValueError:
                rel = str(path.resolve())
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_key(items: Sequence[tuple], height: int, width: int, key_parts: dict) -> dict:
    """The full key: caller's parts (data set, root, split) + size, resize method, file fingerprint."""
    root = key_parts.get("root")
    key = {**{k: str(v) for k, v in key_parts.items()}, "height": int(height), "width": int(width),
           "resize": RESIZE_METHOD, "format": CACHE_FORMAT, "n": len(items),
           "files": file_fingerprint(items, root)}
    if root is not None:
        key["root"] = str(Path(root).resolve())
    return key


def _cache_path(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    label = "-".join(str(key[k]) for k in ("dataset", "split") if k in key) or "images"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return cache_dir / f"{safe}-{key['height']}x{key['width']}-{digest}.npy"


@contextmanager
def _exclusive(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # blocks while another process builds this key
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class CacheSpaceError(DataError):
    """The disk under `data.cache_dir` cannot hold a split's cache; the message gives both sizes."""


def check_space(cache_dir: str | Path, n: int, height: int, width: int, what: str) -> None:
    """Before a build: the split's array fits on the disk of `cache_dir` with DISK_RESERVE to spare, else a
    one-line CacheSpaceError naming `data.cache_dir` and the three ways out (benchmarks/README.md "Paper
    scale": the eight data sets at the paper's 384x128 take ~23 GB, six times their 128x64 JPEG decodes)."""
    need = image_bytes(n, height, width)
    free = shutil.disk_usage(cache_dir).free
    if need + DISK_RESERVE > free:
        raise CacheSpaceError(
            f"decoded-image cache of {what} at {height}x{width} needs {need / 2**30:.1f} GiB in {cache_dir} "
            f"(data.cache_dir), but its disk has {free / 2**30:.1f} GiB free ({DISK_RESERVE / 2**30:.0f} GiB are "
            "kept for checkpoints and logs); free space, set data.cache_dir to a larger disk, or data.cache: false "
            "(decode the JPEGs every epoch)")


class CorruptCacheError(DataError, OSError):
    """A decoded-image cache file that cannot be read or holds the wrong array; the message names it."""


class UnreadableImagesError(DataError):
    """Images of a split that do not decode, all of them (`paths`), not only the first."""

    def __init__(self, paths: list[str], where: str = ""):
        more = f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else ""
        super().__init__(f"{where + ': ' if where else ''}{len(paths)} unreadable image(s): "
                         f"{', '.join(paths[:MAX_LISTED])}{more}; replace or remove them")
        self.paths = paths


def _decode_into(items: Sequence[tuple], height: int, width: int, out: np.ndarray, threads: int) -> None:
    """Fill ``out[i]`` with item ``i`` decoded and resized exactly as the loader path does. Every image
    that does not decode is listed in one UnreadableImagesError (docs/reliability.md: data problems are
    reported all at once, not one per run)."""
    ds = ImageDataset(items, resize_op(height, width))

    def fill(i: int) -> str | None:
        try:
            out[i] = np.asarray(ds[i][0], dtype=np.uint8).transpose(2, 0, 1)
        except UnreadableImageError:
            return str(items[i][0])
        return None

    # PIL releases the GIL while decoding and resizing, so threads scale on the decode.
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        bad = [path for path in pool.map(fill, range(len(items)), chunksize=64) if path]
    if bad:
        raise UnreadableImagesError(bad)


def _reserve(path: str) -> None:
    """Allocate the whole file now: a memory-mapped write into a sparse file on a full disk kills the
    process with SIGBUS; allocated up front, a full disk is an OSError(ENOSPC) naming the cache."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):  # the file system cannot: as before
            raise
    finally:
        os.close(fd)


def _build(path: Path, items: Sequence[tuple], height: int, width: int, threads: int, header: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(items), 3, height, width))
        _reserve(tmp)
        _decode_into(items, height, width, arr, threads)
        arr.flush()
        del arr
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        atomic_write_text(path.with_suffix(".json"), json.dumps(header, indent=2, sort_keys=True))
        os.replace(tmp, path)  # the commit point: a reader never sees a half-written array
    except BaseException as err:
        failure = write_failure(err, path, tmp) if isinstance(err, OSError) else None
        if os.path.exists(tmp):
            os.unlink(tmp)
        if failure is None or failure is err:
            raise
        raise failure from err


class DecodedCache:
    """A split's decoded images: ``.images`` (read-only uint8 memmap N x 3 x H x W), ``.path``,
    ``.built`` (True when this call decoded it, False when it reused a file)."""

    def __init__(self, path: Path, images: np.ndarray, built: bool):
        self.path, self.images, self.built = path, images, built

    @classmethod
    def open_or_build(cls, items: Sequence[tuple], height: int, width: int, cache_dir: str | Path,
                      key_parts: dict, threads: int | None = None) -> DecodedCache:
        """Open the cache of ``items`` ((path, pid, camid) tuples) at ``height`` x ``width``, building
        it first if absent. ``key_parts``: at least ``dataset``, ``root`` and ``split``."""
        key = cache_key(items, height, width, key_parts)
        path = _cache_path(Path(cache_dir), key)
        built = False
        if not path.exists():
            with _exclusive(path.with_suffix(".lock")):
                if not path.exists():  # the job holding the lock before us may have built it
                    check_space(path.parent, len(items), height, width,
                                f"{key_parts.get('dataset', 'images')} {key_parts.get('split', '')}".strip())
                    t0 = time.perf_counter()
                    _build(path, items, height, width, threads or min(8, os.cpu_count() or 1), key)
                    built = True
                    log.info("decoded-image cache %s: %d images at %dx%d, %.2f GiB, built in %.1f s", path.name,
                             len(items), height, width, image_bytes(len(items), height, width) / 2**30,
                             time.perf_counter() - t0)
        return cls(path, cls._load(path, (len(items), 3, height, width)), built)

    @staticmethod
    def _load(path: Path, shape: tuple) -> np.ndarray:
        try:
            images = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise CorruptCacheError(f"decoded-image cache {path} is unreadable ({err}); delete it to "
                                    "rebuild") from None
        if images.dtype != np.uint8 or images.shape != shape:
            raise CorruptCacheError(f"decoded-image cache {path} holds {images.dtype} {images.shape}, expected "
                                    f"uint8 {shape}; delete it to rebuild")
        return images

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, indices, device: torch.device | str = "cpu") -> torch.Tensor:
        """uint8 tensor B x 3 x H x W of the rows ``indices`` on ``device`` (pinned copy for CUDA)."""
        rows = torch.from_numpy(np.asarray(self.images[np.asarray(indices, dtype=np.int64)]))
        device = torch.device(device)
        if device.type == "cuda":
            return rows.pin_memory().to(device, non_blocking=True)
        return rows.to(device)


def open_split(data_cfg, dataset: str, root: str, split: str, items: Sequence[tuple]) -> DecodedCache | None:
    """The cache of one split under the ``data`` config section (``cache``, ``cache_max_gb``,
    ``cache_dir``, ``height``, ``width``), or None when the switch says to use the PIL loader."""
    d = data_cfg
    if not use_cache(d.cache, len(items), d.height, d.width, d.cache_max_gb):
        return None
    try:
        return DecodedCache.open_or_build(items, d.height, d.width, d.cache_dir,
                                          {"dataset": dataset, "root": root, "split": split})
    except UnreadableImagesError as err:
        raise UnreadableImagesError(err.paths, f"data set {dataset!r} ({split}, root {root})") from None
