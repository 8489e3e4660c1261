"""Shared pieces of the data set parsers: the `ReidDataset` record, root lookup, Market-style names.

Every parser returns items as ``(path: str, pid: int, camid: int)`` with 0-based camera ids.
Train pids are relabelled ``0..N-1`` in sorted order of the original ids (classification targets);
query and gallery keep the original ids so that results can be traced back to files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mhsa.errors import DataError

Item = tuple[str, int, int]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

# "0002_c1s1_000451_03.jpg" (Market), "0001_c2_f0046182.jpg" (Duke), "0001_c1_1.png" (CUHK03-NP):
# pid (may be -1 for junk) then "_c" and a single camera digit.
MARKET_NAME = re.compile(r"^([-\d]+)_c(\d)")


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A data set root is missing or does not have the published folder layout."""


class FileNameError(DataError, ValueError):
    """An image whose file name does not carry the identity (and camera) the layout promises."""


@dataclass
class ReidDataset:
    """One Re-ID benchmark split into train / query / gallery item lists."""

    name: str
    root: str
    train: list[Item] = field(default_factory=list)
    query: list[Item] = field(default_factory=list)
    gallery: list[Item] = field(default_factory=list)

    @property
    def num_train_pids(self) -> int:
        return len({pid for _, pid, _ in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({cam for _, _, cam in self.train})

    def summary(self) -> str:
        """A small text table: identities, images and cameras per split."""
        lines = [
            f"{self.name} ({self.root})",
            f"  {'split':<8} | {'# ids':>6} | {'# images':>8} | {'# cams':>6}",
            "  " + "-" * 38,
        ]
        for split, items in (("train", self.train), ("query", self.query), ("gallery", self.gallery)):
            ids = len({pid for _, pid, _ in items})
            cams = len({cam for _, _, cam in items})
            lines.append(f"  {split:<8} | {ids:>6} | {len(items):>8} | {cams:>6}")
        return "\n".join(lines)


def find_root(
    root: str | Path, name: str, folder_names: Sequence[str], required: Sequence[str], url: str
) -> Path:
    """Return the folder holding all ``required`` sub-paths: ``root`` itself or ``root/<folder_name>``.

    Accepting both lets users pass either the data set folder or the folder that contains it.
    """
    root = Path(root).expanduser()
    candidates = [root] + [root / f for f in folder_names]
    for cand in candidates:
        if all((cand / r).is_dir() for r in required):
            return cand
    tried = ", ".join(str(c) for c in candidates)
    raise DatasetNotFoundError(
        f"{name}: data set not found under {root} (tried {tried}); expected the folders "
        f"{', '.join(required)} inside it. The data set is published at {url}"
    )


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name so that item order is reproducible."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def parse_market_name(path: Path) -> tuple[int, int]:
    """``(pid, camid)`` from a Market-style file name; camid is returned 0-based."""
    m = MARKET_NAME.match(path.name)
    if m is None:
        raise FileNameError(f"unexpected file name {path} (expected '<pid>_c<cam>...', e.g. "
                            "0002_c1s1_000451_03.jpg); rename or remove the file")
    return int(m.group(1)), int(m.group(2)) - 1


def parse_market_dir(folder: Path, drop_pids: Iterable[int] = (-1,)) -> list[Item]:
    """All images of a Market-style folder, skipping the pids in ``drop_pids`` (junk by default)."""
    drop = set(drop_pids)
    items = []
    for path in image_files(folder):
        pid, cam = parse_market_name(path)
        if pid not in drop:
            items.append((str(path), pid, cam))
    return items


def relabel(items: list[Item]) -> list[Item]:
    """Map pids to ``0..N-1`` in sorted order of the original ids (deterministic across machines)."""
    mapping = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in items}))}
    return [(path, mapping[pid], cam) for path, pid, cam in items]


def load_market_style(
    root: str | Path, name: str, folder_names: Sequence[str], url: str, drop_train_pids=(-1, 0)
) -> ReidDataset:
    """Market-1501 family: ``bounding_box_train`` / ``query`` / ``bounding_box_test``.

    Junk (-1) is dropped everywhere; distractors (pid 0) stay in the gallery but never in train.
    """
    base = find_root(root, name, folder_names, ("bounding_box_train", "query", "bounding_box_test"), url)
    return ReidDataset(
        name=name,
        root=str(base),
        train=relabel(parse_market_dir(base / "bounding_box_train", drop_pids=drop_train_pids)),
        query=parse_market_dir(base / "query"),
        gallery=parse_market_dir(base / "bounding_box_test"),
    )
