"""The package's layers (docs/architecture.md "Layers"): a module imports its own layer and those below,
never one above. Imports are read with `ast`, inside functions too (the lazy imports count)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mhsa"
LAYERS = (  # lowest first
    ("foundations", ("mhsa.errors", "mhsa.io", "mhsa.switches")),
    ("science", ("mhsa.model", "mhsa.losses", "mhsa.data", "mhsa.evaluation")),
    ("run config", ("mhsa.config",)),
    ("a cell's life", ("mhsa.run",)),
    ("the study", ("mhsa.study",)),
    ("entry points", ("mhsa.__main__", "mhsa.tables", "mhsa.diagnostic_plots", "mhsa")),
)


def layer_of(module: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and docs/architecture.md")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} if node.module != "mhsa" else {f"mhsa.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m == "mhsa" or m.startswith("mhsa.")}


def test_every_import_runs_down_the_layers():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = module_name(path)
        for target in imports(path):
            if layer_of(target) > layer_of(me):
                upward.append(f"{me} ({LAYERS[layer_of(me)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_the_rule_sees_an_upward_import(tmp_path):
    """The checker itself: an import from the science layer into the run layer is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from mhsa.run.train import train_cell\n")
    assert imports(bad) == {"mhsa.run.train"}
    assert layer_of("mhsa.run.train") > layer_of("mhsa.model.build")


def test_the_package_root_holds_foundations_and_entry_points_only():
    """At most ~8 files beside the layer packages, each folder saying what its layer is."""
    files = sorted(p.name for p in PACKAGE.iterdir() if p.is_file())
    assert files == ["__init__.py", "__main__.py", "config.py", "diagnostic_plots.py", "errors.py", "io.py",
                     "switches.py", "tables.py"], files
    for package in ("model", "losses", "data", "evaluation", "run", "study"):
        doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
        assert doc and len(doc) > 40, f"mhsa/{package}/__init__.py should say what the layer is"
