"""Reading what a finished cell left behind: `metrics.json` and `attention.npz`.

Everything that reads them (the tables, the figures, the overlays, the diagnostics, `sync-mlflow`,
a rerun into a finished `--out`) goes through `read_metrics` / `read_attention`, so a corrupt file
is always reported the same way: a `ResultsError` naming the file and what to do. Both files are
written atomically (`mhsa.io`), so a corrupt one never means "still being written"; showing it as
"n/a" would hide it forever, because Snakemake sees the file and never retrains the cell
(docs/reliability.md, "Corrupt results").

Torch-free (NumPy only).
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np

from mhsa.errors import ResultsError
from mhsa.evaluation.per_query import problem as per_query_problem

__all__ = ["REDO", "CorruptResultError", "check_cell_outputs", "corrupt", "raise_all", "read_attention",
           "read_metrics"]

# What to do about a corrupt output of a cell: Snakemake reruns a job whose output is missing.
REDO = "delete it, then rerun Snakemake (it retrains that cell) or `python -m mhsa train` into that folder"
ATTENTION_KEYS = ("images", "alpha")


class CorruptResultError(ResultsError):
    """One corrupt file of a cell (`path`, `reason`)."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: corrupt {Path(path).name} ({reason}); {REDO}")
        self.path, self.reason = str(path), reason


def corrupt(path: str | Path, reason: str) -> CorruptResultError:
    return CorruptResultError(path, reason)


def raise_all(errors: list) -> None:
    """One ResultsError for every file of `errors` (all at once, not one per rerun); nothing if empty."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        listed = "; ".join(f"{e.path} ({e.reason})" if isinstance(e, CorruptResultError) else str(e)
                           for e in errors)
        raise ResultsError(f"{len(errors)} corrupt results files: {listed}; delete them, then rerun Snakemake "
                           "(it retrains those cells) or `python -m mhsa train` into those folders")


def _number_problem(ev: dict) -> str | None:
    """The first value of metrics.json's eval (test set -> mode -> metric -> percent) that is not a number."""
    for test_set, modes in ev.items():
        if not isinstance(modes, dict):
            return f"eval.{test_set} is not a mapping of test modes"
        for mode, values in modes.items():
            if not isinstance(values, dict):
                return f"eval.{test_set}.{mode} is not a mapping of metrics"
            for name, v in values.items():
                ok = v is None or (isinstance(v, int | float) and not isinstance(v, bool))
                if not ok or (isinstance(v, float) and math.isinf(v)):
                    return f"eval.{test_set}.{mode}.{name} is {v!r}, not a number"
    return None


def _per_query_problem(per_query) -> str | None:
    """The first test set of metrics.json's `per_query` (absent in runs before it existed) that the tables
    could not resample."""
    if per_query is None:
        return None
    if not isinstance(per_query, dict):
        return "per_query is not a mapping of test sets"
    for test_set, data in per_query.items():
        problem = per_query_problem(data)
        if problem:
            return f"per_query.{test_set}: {problem}"
    return None


def check_metrics(data, path: str | Path, cell: str | None = None) -> dict:
    """`data` (a parsed metrics.json) has the shape every reader relies on; raises naming `path`."""
    if not isinstance(data, dict):
        raise corrupt(path, f"a JSON {type(data).__name__}, not an object")
    if not isinstance(data.get("cell"), str) or not isinstance(data.get("eval"), dict):
        raise corrupt(path, "no `cell` name or no `eval` results")
    problem = _number_problem(data["eval"]) or _per_query_problem(data.get("per_query"))
    if problem:
        raise corrupt(path, problem)
    if cell is not None and data["cell"] != cell:
        raise ResultsError(f"{path} holds the results of cell {data['cell']!r}, not of {cell!r} (its folder): "
                           f"copied from another run? {REDO}")
    return data


def read_metrics(path: str | Path, cell: str | None = None) -> dict:
    """A finished cell's metrics.json; `cell`: the id its folder stands for (checked when given)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise corrupt(path, f"not UTF-8 text: {err.reason}") from None
    except json.JSONDecodeError as err:
        raise corrupt(path, f"not JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    return check_metrics(data, path, cell)


def _npz_reason(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    if "pickle" in text:  # NumPy's hint to load it with allow_pickle: never (it could run code)
        return "not a NumPy .npz archive of arrays"
    return f"{type(err).__name__}: {text}"


def read_attention(path: str | Path, required: tuple = ATTENTION_KEYS) -> dict[str, np.ndarray]:
    """A cell's attention.npz as {name: array}, holding the arrays `required` (overlays and grids draw
    `images` and `alpha`; the diagnostics need `alpha` only); raises naming `path`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise corrupt(path, _npz_reason(err)) from None
    missing = [k for k in required if k not in arrays]
    if missing:
        raise corrupt(path, f"no {' or '.join(missing)} array")
    return arrays


def check_cell_outputs(metrics_files, attention_files) -> None:
    """Every metrics.json and attention.npz of a study reads (the tables step, before drawing anything):
    one ResultsError naming every corrupt file at once, rather than one per rerun."""
    bad = []
    for path in metrics_files:
        try:
            read_metrics(path, Path(path).parent.name)
        except ResultsError as err:
            bad.append(err)
    for path in attention_files:
        try:
            read_attention(path)
        except ResultsError as err:
            bad.append(err)
    raise_all(bad)
