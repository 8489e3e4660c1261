"""DukeMTMC-reID (Ristani et al., ECCVW 2016; Zheng et al., ICCV 2017)."""

from __future__ import annotations

from pathlib import Path

from .base import ReidDataset, load_market_style

NAME = "dukemtmc"
URL = (
    "DukeMTMC-reID.zip, https://github.com/layumi/DukeMTMC-reID_evaluation "
    "(DukeMTMC was withdrawn by Duke University in 2019; use only a copy you are licensed to use)"
)
FOLDER_NAMES = ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmc")


def load(root: str | Path) -> ReidDataset:
    """Parse DukeMTMC-reID.

    Layout: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` with names like
    ``0001_c2_f0046182.jpg`` (pid, camera 1-8, frame). Statistics (8 cameras):
    train 702 ids / 16,522 images; query 702 ids / 2,228 images;
    gallery 1,110 ids (702 + 408 distractor ids) / 17,661 images.
    """
    return load_market_style(root, NAME, FOLDER_NAMES, URL)
