"""CUHK03 (Li et al., CVPR 2014) under the 767/700 "new protocol" (Zhong et al., CVPR 2017).

Only the widely used CUHK03-NP image release is read: ``cuhk03-np/{detected,labeled}/
{bounding_box_train,query,bounding_box_test}`` with names like ``0001_c1_1.png`` (pid, camera 1-2
of the pair, index). The ``.mat`` route (``cuhk03_release/cuhk-03.mat`` with
``cuhk03_new_protocol_config_{detected,labeled}.mat``) is NOT supported: convert it once to the
CUHK03-NP folders (write image ``train_idx``/``query_idx``/``gallery_idx`` of the config to
``bounding_box_train``/``query``/``bounding_box_test`` as ``<label:04d>_c<cam>_<n>.png``; the
person-re-ranking repository below ships the converted release).
"""

from __future__ import annotations

from pathlib import Path

from .base import ReidDataset, find_root, parse_market_dir, relabel

URL = (
    "CUHK03-NP: https://github.com/zhunzhong07/person-re-ranking/tree/master/CUHK03-NP "
    "(original CUHK03: http://www.ee.cuhk.edu.hk/~xgwang/CUHK_identification.html)"
)
SPLITS = ("bounding_box_train", "query", "bounding_box_test")


def _load(root: str | Path, kind: str) -> ReidDataset:
    name = f"cuhk03_{kind}"
    # root may be the folder containing cuhk03-np, cuhk03-np itself, or the detected/labeled folder.
    folders = (kind, f"cuhk03-np/{kind}", f"cuhk03_np/{kind}", f"CUHK03-NP/{kind}")
    base = find_root(root, name, folders, SPLITS, URL)
    return ReidDataset(
        name=name,
        root=str(base),
        train=relabel(parse_market_dir(base / "bounding_box_train", drop_pids=(-1, 0))),
        query=parse_market_dir(base / "query"),
        gallery=parse_market_dir(base / "bounding_box_test"),
    )


def load_detected(root: str | Path) -> ReidDataset:
    """CUHK03-NP detected (DPM boxes), 2 cameras per pair.

    train 767 ids / 7,365 images; query 700 ids / 1,400 images; gallery 700 ids / 5,332 images.
    """
    return _load(root, "detected")


def load_labeled(root: str | Path) -> ReidDataset:
    """CUHK03-NP labeled (hand-drawn boxes), 2 cameras per pair.

    train 767 ids / 7,368 images; query 700 ids / 1,400 images; gallery 700 ids / 5,328 images.
    """
    return _load(root, "labeled")
