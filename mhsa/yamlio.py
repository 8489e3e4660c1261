"""YAML as the project reads it: PyYAML's safe loader, except that a key given twice in one mapping
is an error naming the file, the line and the key.

PyYAML (and Snakemake's `configfile:` loader) keep the last of two equal keys without a word, so a
second `baseline:` variant, a repeated `lambda1:` or a table defined twice would silently replace
the first (docs/reliability.md, "Duplicates"). Merge keys (`<<: *anchor`) may still be overridden by
a key of the mapping itself: that is YAML's meaning of a merge, not a repetition.

    data = load_file("config.yaml")           # ConfigError on a repeated key
    value = load_text("[1, 2]", "--set x")    # the name appears in error messages
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mhsa.errors import ConfigError

__all__ = ["DuplicateKeyError", "StrictLoader", "load_file", "load_text"]

_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(ConfigError):
    """A key given twice in one YAML mapping."""


def _where(mark) -> str:
    return f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}"


class StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that rejects a key repeated in one mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self._check_unique_keys(node)
        return super().construct_mapping(node, deep=deep)

    def _check_unique_keys(self, node: yaml.MappingNode) -> None:
        first: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                continue
            if earlier is not key_node.start_mark:
                raise DuplicateKeyError(
                    f"{_where(key_node.start_mark)}: key {key!r} is given twice in one mapping (first at "
                    f"line {earlier.line + 1}); YAML would keep only the last one: remove or rename one of them")


def load_text(text: str, name: str = "<string>"):
    """Parse `text`; `name` (a file, a --set item) is what error marks show."""
    loader = StrictLoader(text)
    loader.name = name  # the reader's name: every mark (line, column) carries it
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_file(path: str | Path):
    """Parse the YAML file at `path` (malformed YAML raises yaml.MarkedYAMLError naming the file)."""
    path = Path(path)
    return load_text(path.read_text(encoding="utf-8"), str(path))
