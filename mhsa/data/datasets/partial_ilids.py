"""Partial-iLIDS (Zheng et al., 2011 / He et al., DSR CVPR 2018): a test-only partial benchmark."""

from __future__ import annotations

from pathlib import Path

from .base import ReidDataset, find_root
from .partial_reid import GALLERY_CAM, QUERY_CAM, parse_numbered

NAME = "partial_ilids"
URL = (
    "Partial_iLIDS, linked from https://github.com/lingxiao-he/Partial-Person-ReID "
    "(built from i-LIDS by He et al., DSR, CVPR 2018)"
)
FOLDER_NAMES = ("Partial_iLIDS", "Partial-iLIDS", "PartialiLIDS", "partial_ilids")


def load(root: str | Path) -> ReidDataset:
    """Parse Partial-iLIDS: ``Probe/`` (query) and ``Gallery/`` (gallery), names like ``001.jpg``.

    119 ids, 238 images: one occluded/partial probe and one whole-body gallery image per id
    (the MHSA-Net paper quotes 476 images). Test only. Query camid 0, gallery camid 1.
    """
    base = find_root(root, NAME, FOLDER_NAMES, ("Probe", "Gallery"), URL)
    return ReidDataset(
        name=NAME,
        root=str(base),
        query=parse_numbered(base / "Probe", QUERY_CAM),
        gallery=parse_numbered(base / "Gallery", GALLERY_CAM),
    )
