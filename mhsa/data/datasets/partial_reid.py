"""Partial-REID (Zheng et al., ICCV 2015): a test-only partial-body benchmark."""

from __future__ import annotations

import re
from pathlib import Path

from .base import FileNameError, Item, ReidDataset, find_root, image_files

NAME = "partial_reid"
URL = (
    "Partial-REID_Dataset, linked from https://github.com/lingxiao-he/Partial-Person-ReID "
    "(Zheng et al., 'Partial Person Re-identification', ICCV 2015)"
)
FOLDER_NAMES = ("Partial-REID_Dataset", "Partial_REID", "PartialREID", "partial_reid")
LEADING_NUMBER = re.compile(r"^(\d+)")

# Single-shot protocol: query and gallery come from "different cameras" so that the usual
# same-pid-same-camera filter of the evaluation never removes a true match.
QUERY_CAM, GALLERY_CAM = 0, 1


def parse_numbered(folder: Path, cam: int) -> list[Item]:
    """Items of a folder of ``<pid>[_<n>].jpg`` files, all with camera ``cam``."""
    items = []
    for path in image_files(folder):
        m = LEADING_NUMBER.match(path.stem)
        if m is None:
            raise FileNameError(f"unexpected file name {path} (expected '<pid>_<n>.jpg' or '<pid>.jpg'); "
                                "rename or remove the file")
        items.append((str(path), int(m.group(1)), cam))
    return items


def load(root: str | Path) -> ReidDataset:
    """Parse Partial-REID: ``partial_body_images/`` (query) and ``whole_body_images/`` (gallery).

    Names like ``001_01.jpg`` (pid, shot). 60 ids, 600 images: 300 partial query images (5 per id)
    and 300 whole-body gallery images (5 per id); the ``occluded_body_images`` folder is not used.
    Test only (no train split): models are trained on Market-1501. Query camid 0, gallery camid 1.
    """
    base = find_root(root, NAME, FOLDER_NAMES, ("partial_body_images", "whole_body_images"), URL)
    return ReidDataset(
        name=NAME,
        root=str(base),
        query=parse_numbered(base / "partial_body_images", QUERY_CAM),
        gallery=parse_numbered(base / "whole_body_images", GALLERY_CAM),
    )
