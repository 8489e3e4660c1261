"""Market-1501 (Zheng et al., ICCV 2015), release Market-1501-v15.09.15."""

from __future__ import annotations

from pathlib import Path

from .base import ReidDataset, load_market_style

NAME = "market1501"
URL = (
    "Market-1501-v15.09.15.zip from the authors' project page "
    "http://www.liangzheng.com.cn/Project/project_reid.html (Zheng et al., ICCV 2015)"
)
FOLDER_NAMES = ("Market-1501-v15.09.15", "market1501", "Market-1501")


def load(root: str | Path) -> ReidDataset:
    """Parse Market-1501.

    Layout: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` with names like
    ``0002_c1s1_000451_03.jpg`` (pid, camera 1-6, sequence, frame, box). Statistics (6 cameras):
    train 751 ids / 12,936 images; query 750 ids / 3,368 images; gallery 750 ids + distractor id 0 /
    15,913 images (``bounding_box_test`` holds 19,732 files; the 3,819 junk files, pid -1, are dropped).

    pid -1 (junk) is dropped; pid 0 (distractors) is kept in the gallery and dropped from train.
    """
    return load_market_style(root, NAME, FOLDER_NAMES, URL)
