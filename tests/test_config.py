"""Run config: defaults are the paper's recipe; bad keys/values fail naming the key."""

import pytest

from mhsa.config import ConfigError, RunConfig, build_run_config, load_config


def test_defaults_are_the_papers_recipe():
    cfg = RunConfig()
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.epochs) == ("adam", 1e-3, 400)
    assert (cfg.optim.warmup_epochs, cfg.optim.milestones) == (50, [200, 300])
    assert (cfg.data.height, cfg.data.width, cfg.data.p, cfg.data.k) == (384, 128, 32, 4)
    assert (cfg.loss.lambda1, cfg.loss.lambda2, cfg.loss.lambda3, cfg.loss.gamma) == (1e-4, 1.0, 1e-3, 1e-3)
    assert cfg.model.num_heads == 8 and cfg.model.last_stride == 1


def test_overrides_merge_and_coerce_yaml_strings():
    cfg = build_run_config({"loss": {"lambda1": "1e-4"}, "model": {"num_heads": 5}},
                           {"model": {"fusion": "sum"}}, ["loss.global_ce=false", "optim.milestones=[3, 4]"])
    assert cfg.loss.lambda1 == 1e-4 and isinstance(cfg.loss.lambda1, float)
    assert cfg.model.num_heads == 5 and cfg.model.fusion == "sum"
    assert cfg.loss.global_ce is False and cfg.optim.milestones == [3, 4]


@pytest.mark.parametrize("data, key", [
    ({"model": {"heads": 8}}, "model.heads"),
    ({"bogus": 1}, "bogus"),
    ({"model": {"num_heads": 0}}, "model.num_heads"),
    ({"loss": {"lambda2": -1}}, "loss.lambda2"),
    ({"loss": {"gamma": 0}}, "loss.gamma"),
    ({"loss": {"lambda1": "abc"}}, "loss.lambda1"),
    ({"data": {"k": 1}}, "data.k"),
    ({"model": {"fusion": "mean"}}, "model.fusion"),
    ({"optim": {"milestones": [300, 200]}}, "optim.milestones"),
])
def test_bad_key_or_value_names_the_key(data, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_run_config(data)


def test_load_config_names_the_file(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("model: {num_heads: -2}\n")
    with pytest.raises(ConfigError, match="run.yaml.*model.num_heads"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_smoke_config_is_valid():
    from pathlib import Path

    cfg = load_config(Path(__file__).parents[1] / "mhsa" / "configs" / "smoke.yaml")
    assert cfg.data.synthetic is not None and cfg.optim.epochs >= 1
