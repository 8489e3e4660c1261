"""The test-mode grammar: parse, defaults, the features to extract."""

import pytest

from mhsa.config import ConfigError
from mhsa.evaluation.modes import base_modes, default_modes, parse_mode


@pytest.mark.parametrize("mode, parsed", [
    ("global", ("global", None, False)),
    ("local", ("local", None, False)),
    ("concat_rerank", ("concat", None, True)),
    ("head1", ("head1", 1, False)),
    ("head12_rerank", ("head12", 12, True)),
])
def test_parse_mode(mode, parsed):
    assert parse_mode(mode) == parsed


@pytest.mark.parametrize("mode", ["foo", "head0", "head", "head01", "concat_rerank_rerank", "_rerank", "", None, 3])
def test_unknown_modes_name_the_allowed_forms(mode):
    with pytest.raises(ConfigError, match=r"unknown test mode .*global, local, concat or head<i>"):
        parse_mode(mode)


def test_default_and_base_modes():
    assert default_modes(True) == ["global", "local", "concat"]
    assert default_modes(False) == ["global"]
    assert base_modes(["concat_rerank", "local", "concat", "head2_rerank", "head10"]) == [
        "concat", "head10", "head2", "local"]
    with pytest.raises(ConfigError):
        base_modes(["concat", "nope"])
