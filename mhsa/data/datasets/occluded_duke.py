"""Occluded-DukeMTMC (Miao et al., ICCV 2019): a re-split of DukeMTMC-reID with occluded queries."""

from __future__ import annotations

from pathlib import Path

from .base import ReidDataset, load_market_style

NAME = "occluded_duke"
URL = (
    "https://github.com/lightas/Occluded-DukeMTMC-Dataset (name lists + convert_duke_to_occduke.py, "
    "applied to DukeMTMC-reID.zip)"
)
FOLDER_NAMES = ("Occluded_Duke", "occluded_duke", "Occluded-DukeMTMC")


def load(root: str | Path) -> ReidDataset:
    """Parse Occluded-DukeMTMC (folder ``Occluded_Duke``).

    Same folders and file names as DukeMTMC-reID. Statistics (8 cameras):
    train 702 ids / 15,618 images; query 519 ids / 2,210 images (all occluded);
    gallery 1,110 ids / 17,661 images (about 10% occluded).
    """
    return load_market_style(root, NAME, FOLDER_NAMES, URL)
