"""P-DukeMTMC-reID (Zhuo et al., ICME 2018): DukeMTMC-reID identities with occluded images."""

from __future__ import annotations

import re
from pathlib import Path

from .base import DatasetNotFoundError, Item, ReidDataset, image_files, relabel

NAME = "p_dukemtmc"
URL = "https://github.com/tinajia2012/ICME2018_Occluded-Person-Reidentification_datasets"
FOLDER_NAMES = ("P-DukeMTMC-reid", "P-DukeMTMC-reID", "p_dukemtmc")
KINDS = ("occluded_body_images", "whole_body_images")
# If a file name carries no camera ("_c<digit>"), the kind decides the camera instead.
FALLBACK_CAM = {"occluded_body_images": 0, "whole_body_images": 1}
CAMERA = re.compile(r"_c(\d)")


def _kind_dirs(split_dir: Path, kind: str) -> list[tuple[int, Path]]:
    """``(pid, folder)`` for one kind; accepts ``<split>/<kind>/<pid>/`` and ``<split>/<pid>/<kind>/``."""
    if (split_dir / kind).is_dir():  # published layout: kind first, one folder per pid
        return [(int(d.name), d) for d in sorted((split_dir / kind).iterdir()) if d.name.isdigit()]
    return [(int(d.name), d / kind) for d in sorted(split_dir.iterdir())
            if d.name.isdigit() and (d / kind).is_dir()]


def _parse(split_dir: Path, kinds: tuple[str, ...]) -> list[Item]:
    items = []
    for kind in kinds:
        for pid, folder in _kind_dirs(split_dir, kind):
            for path in image_files(folder):
                m = CAMERA.search(path.stem)
                cam = int(m.group(1)) - 1 if m else FALLBACK_CAM[kind]
                items.append((str(path), pid, cam))
    return sorted(items)


def _find(root: str | Path) -> Path:
    root = Path(root).expanduser()
    for cand in [root] + [root / f for f in FOLDER_NAMES]:
        if (cand / "train").is_dir() and (cand / "test").is_dir() and _parse(cand / "test", KINDS[:1]):
            return cand
    raise DatasetNotFoundError(
        f"{NAME}: data set not found under {root} (tried {root} and {', '.join(FOLDER_NAMES)} inside it); "
        f"expected train/ and test/ each with occluded_body_images/<pid>/*.jpg and "
        f"whole_body_images/<pid>/*.jpg. The data set is published at {URL}"
    )


def load(root: str | Path) -> ReidDataset:
    """Parse P-DukeMTMC-reID.

    Layout (published): ``{train,test}/{occluded_body_images,whole_body_images}/<pid>/*.jpg``;
    ``{train,test}/<pid>/{occluded_body_images,whole_body_images}/*.jpg`` is accepted too.
    pid comes from the ``<pid>`` folder, the camera from ``_c<digit>`` in the Duke-style file name
    (``0001_c2_f0046182.jpg``); without it occluded images get camera 0 and whole-body images camera 1.
    train = both kinds of train; query = test occluded; gallery = test whole-body.
    Statistics: train 665 ids / 12,927 images (2,647 occluded + 10,280 whole);
    query 634 ids / 2,163 images; gallery 634 ids / 9,053 images.
    (The MHSA-Net paper quotes 2,652 training images, which matches the occluded train part only.)
    """
    base = _find(root)
    return ReidDataset(
        name=NAME,
        root=str(base),
        train=relabel(_parse(base / "train", KINDS)),
        query=_parse(base / "test", ("occluded_body_images",)),
        gallery=_parse(base / "test", ("whole_body_images",)),
    )
