"""Data checks that run before anything trains, reporting every problem at once.

`check_dataset(name, root)`: the set parses, and its identities, images and cameras per split match
the published statistics (`PUBLISHED`, the numbers of docs/data.md and the parsers' docstrings)
within `TOLERANCE`; a synthetic stand-in (README.txt + `.complete` of `mhsa.data.synthetic`) is
checked against its own generator parameters instead. `check_test_sets(sets)`: every query and
gallery image opens and decodes, and each set has at least one query with a valid match (same pid,
another camera) in its gallery; raises one `DataError` listing all problems.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from mhsa.errors import DataError

from .datasets import ReidDataset, load

log = logging.getLogger("mhsa.data.check")

# name -> split -> (identities, images), and the number of cameras (None: assigned by the parser)
PUBLISHED: dict[str, dict] = {
    "market1501": {"train": (751, 12936), "query": (750, 3368), "gallery": (751, 15913), "cams": 6},
    "dukemtmc": {"train": (702, 16522), "query": (702, 2228), "gallery": (1110, 17661), "cams": 8},
    "cuhk03_detected": {"train": (767, 7365), "query": (700, 1400), "gallery": (700, 5332), "cams": 2},
    "cuhk03_labeled": {"train": (767, 7368), "query": (700, 1400), "gallery": (700, 5328), "cams": 2},
    "occluded_duke": {"train": (702, 15618), "query": (519, 2210), "gallery": (1110, 17661), "cams": 8},
    "p_dukemtmc": {"train": (665, 12927), "query": (634, 2163), "gallery": (634, 9053), "cams": None},
    "partial_reid": {"train": (0, 0), "query": (60, 300), "gallery": (60, 300), "cams": None},
    "partial_ilids": {"train": (0, 0), "query": (119, 119), "gallery": (119, 119), "cams": None},
}
TOLERANCE = 0.02  # relative: other releases differ by a few images; an empty or half copy does not
SPLITS = ("train", "query", "gallery")
MAX_LISTED = 5


def _stats(ds: ReidDataset) -> dict:
    out = {s: (len({p for _, p, _ in getattr(ds, s)}), len(getattr(ds, s))) for s in SPLITS}
    out["cams"] = len({c for s in SPLITS for _, _, c in getattr(ds, s)})
    return out


def synthetic_params(root: str | Path) -> dict | None:
    """The generator parameters of a synthetic data set at `root`, None for a real one."""
    marker, readme = Path(root) / ".complete", Path(root) / "README.txt"
    if not (marker.is_file() and readme.is_file()):
        return None
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def _off(got: int, want: int, tolerance: float) -> bool:
    return abs(got - want) > tolerance * want or (want == 0) != (got == 0)


def _mismatches(got: dict, want: dict, tolerance: float) -> list[str]:
    out = [f"{s} {got[s][0]} ids / {got[s][1]} images (expected {want[s][0]} / {want[s][1]})"
           for s in SPLITS if want.get(s) is not None
           and any(_off(g, w, tolerance) for g, w in zip(got[s], want[s], strict=True))]
    if want.get("cams") is not None and got["cams"] != want["cams"]:
        out.append(f"{got['cams']} cameras (expected {want['cams']})")
    return out


def _synthetic_expected(name: str, params: dict) -> dict:
    n, per = params["num_ids"], params["images_per_id"]
    if name.startswith("partial"):
        shots = 1 if name == "partial_ilids" else max(1, per // 2)
        return {"train": (0, 0), "query": (n, n * shots), "gallery": (n, n * shots)}
    return {"train": (n, n * per)}  # query/gallery image counts vary per identity by design


def check_dataset(name: str, root: str | Path) -> list[str]:
    """Problems of data set `name` at `root` (empty: it looks like the published one)."""
    try:
        ds = load(name, root)
    except (DataError, OSError) as err:
        return [str(err)]
    got = _stats(ds)
    params = synthetic_params(ds.root)
    if params and not params.get("published"):  # a published-size stand-in is checked as the real set
        bad = _mismatches(got, _synthetic_expected(name, params), 0.0)
        how = "a synthetic stand-in unlike its generator parameters (.complete); delete the folder to regenerate it"
    else:
        bad = _mismatches(got, PUBLISHED[name], TOLERANCE)
        how = (f"unlike the published data set (counts within {TOLERANCE:.0%} pass; docs/data.md); "
               "is the copy complete and the right release?")
    return [f"{name} at {ds.root}: {', '.join(bad)}: {how}"] if bad else []


def check_datasets(roots: dict[str, str | Path]) -> list[str]:
    """Problems of every `name -> root`, all at once (for the workflow's start-up check)."""
    return [p for name, root in roots.items() for p in check_dataset(name, root)]


def _decode(path: str) -> str | None:
    try:
        with Image.open(path) as im:
            im.draft(im.mode, (1, 1))  # JPEG: decode at 1/8 scale, still reading every byte
            im.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return f"{path} ({type(err).__name__}: {err})"
    return None


def _unreadable(paths: list[str]) -> list[str]:
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # PIL decodes without the GIL
        return [bad for bad in pool.map(_decode, paths, chunksize=64) if bad]


def valid_queries(ds: ReidDataset) -> int:
    """Queries with a valid match in the gallery (same pid, another camera): the evaluation protocol
    leaves every other query out of every metric (docs/evaluation.md)."""
    cams: dict[int, set[int]] = {}
    for _, pid, cam in ds.gallery:
        cams.setdefault(pid, set()).add(cam)
    return sum(bool(cams.get(pid, set()) - {cam}) for _, pid, cam in ds.query)


def eval_set_counts(ds: ReidDataset) -> dict:
    """What a test set's metrics are averaged over, as metrics.json records it (`data.test.<set>`)."""
    return {"queries": len(ds.query), "gallery": len(ds.gallery),
            "query_identities": len({p for _, p, _ in ds.query}),
            "gallery_identities": len({p for _, p, _ in ds.gallery}), "num_valid_queries": valid_queries(ds)}


def data_counts(train: ReidDataset, tests: dict[str, ReidDataset]) -> dict:
    """The sizes a reader of metrics.json wants to see beside the numbers: the training split's images,
    identities and cameras, and each test set's queries, gallery and valid queries."""
    return {"train": {"dataset": train.name, "images": len(train.train),
                      "identities": len({p for _, p, _ in train.train}),
                      "cameras": len({c for _, _, c in train.train})},
            "test": {name: eval_set_counts(ds) for name, ds in tests.items()}}


def _match_problems(name: str, ds: ReidDataset) -> list[str]:
    if not ds.query or not ds.gallery:
        return [f"{name}: {'query' if not ds.query else 'gallery'} is empty (root {ds.root})"]
    valid = valid_queries(ds)
    if not valid:
        return [f"{name}: no query has a valid match (same pid, another camera) in the gallery; "
                f"check the query/ and gallery folders of {ds.root}"]
    if valid < len(ds.query):
        # torchreid's protocol skips them silently; say so once, before training (metrics.json keeps the count)
        log.warning("%s: %d of %d queries have no valid match (same pid, another camera) in the gallery of %s; "
                    "every metric averages over the other %d (num_valid_queries in metrics.json)",
                    name, len(ds.query) - valid, len(ds.query), ds.root, valid)
    return []


def check_test_sets(sets: dict[str, ReidDataset], decoded: frozenset | set = frozenset()) -> None:
    """Before the first training step: every test image decodes and every set has a valid query.
    Sets named in `decoded` were already decoded whole (into the image cache): not read again."""
    problems = []
    for name, ds in sets.items():
        problems += _match_problems(name, ds)
        if name in decoded:
            continue
        bad = _unreadable(sorted({p for p, _, _ in ds.query + ds.gallery}))
        if bad:
            more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
            shown = ", ".join(bad[:MAX_LISTED]) + more
            problems.append(f"{name}: {len(bad)} unreadable image(s): {shown}; replace or remove them")
    if problems:
        raise DataError(f"test set check failed ({len(problems)} problem(s)): " + "; ".join(problems))
