"""Parsers for the seven Re-ID benchmarks of MHSA-Net (paper Section VII-A).

``load(name, root)`` returns a :class:`ReidDataset`; ``names()`` lists the registered names;
``where_to_get(name)`` says where the data set is published.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import cuhk03, dukemtmc, market1501, occluded_duke, p_dukemtmc, partial_ilids, partial_reid
from mhsa.errors import ConfigError, DataError


from .base import DatasetNotFoundError, FileNameError, Item, ReidDataset

__all__ = ["DatasetNotFoundError", "FileNameError", "Item", "UnknownDatasetError", "ReidDataset", "load", "names", "where_to_get"]

_REGISTRY: dict[str, tuple[Callable[[str | Path], ReidDataset], str]] = {
    "market1501": (market1501.load, market1501.URL),
    "dukemtmc": (dukemtmc.load, dukemtmc.URL),
    "cuhk03_detected": (cuhk03.load_detected, cuhk03.URL),
    "cuhk03_labeled": (cuhk03.load_labeled, cuhk03.URL),
    "occluded_duke": (occluded_duke.load, occluded_duke.URL),
    "p_dukemtmc": (p_dukemtmc.load, p_dukemtmc.URL),
    "partial_reid": (partial_reid.load, partial_reid.URL),
    "partial_ilids": (partial_ilids.load, partial_ilids.URL),
}


class UnknownDatasetError(ConfigError, DataError, KeyError):
    """A data set name that no parser reads (a KeyError for callers that look names up)."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


def names() -> list[str]:
    """Registered data set names, in the paper's order."""
    return list(_REGISTRY)


def _entry(name: str):
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownDatasetError(f"unknown data set {name!r}; known: {', '.join(_REGISTRY)} "
                                  "(check data.dataset, eval.targets and datasets: in the config)") from None


def where_to_get(name: str) -> str:
    """Where the real data set is published."""
    return _entry(name)[1]


def load(name: str, root: str | Path) -> ReidDataset:
    """Parse data set ``name`` found at ``root`` (the data set folder or the folder containing it)."""
    return _entry(name)[0](root)
