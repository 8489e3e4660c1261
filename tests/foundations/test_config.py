"""Run config: defaults are the paper's recipe; bad keys/values fail naming the key."""

import pytest

from mhsa.config import ConfigError, RunConfig, build_run_config, load_run_config


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
        load_run_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "missing.yaml")


def test_smoke_config_is_valid():
    from pathlib import Path

    cfg = load_run_config(Path(__file__).parents[2] / "mhsa" / "configs" / "smoke.yaml")
    assert cfg.data.synthetic is not None and cfg.optim.epochs >= 1


@pytest.mark.parametrize("modes, message", [
    (["foo"], "unknown test mode 'foo'"),
    (["concat", "head9"], "'head9' but the model has K=8"),
    (["global_rerank", "concat_rerank"], None),
])
def test_eval_modes_are_checked_with_the_config(modes, message):
    """An unknown or impossible test mode fails before training, naming the target's key."""
    data = {"eval": {"targets": {"market1501": {"root": "x", "modes": modes}}}}
    if message is None:
        assert build_run_config(data).eval.targets["market1501"]["modes"] == modes
        return
    with pytest.raises(ConfigError, match=r"eval\.targets\.market1501\.modes.*" + message):
        build_run_config(data)
    with pytest.raises(ConfigError, match="needs MHSAM"):
        build_run_config({"model": {"mhsam": False}, "eval": {"targets": {"m": {"root": "x", "modes": ["local"]}}}})


def test_dotted_override_of_modes_is_checked():
    with pytest.raises(ConfigError, match=r"eval\.targets\.market1501\.modes.*'foo'"):
        build_run_config(None, None, ["eval.targets={market1501: {root: x, modes: [foo]}}"])


def test_amp_and_checkpoint_every():
    assert build_run_config({"amp": "off", "checkpoint_every": 0}).amp == "off"
    with pytest.raises(ConfigError, match="quote 'off'"):
        build_run_config({"amp": False})
    with pytest.raises(ConfigError, match="checkpoint_every"):
        build_run_config({"checkpoint_every": -1})


@pytest.mark.parametrize("height,width,last_stride", [(64, 32, 1), (32, 16, 1), (80, 40, 1), (70, 33, 1),
                                                      (384, 128, 1), (64, 32, 2)])
def test_feature_map_size_is_the_backbones(height, width, last_stride):
    import torch

    from mhsa.model.backbone import Backbone
    from mhsa.switches import feature_map_size

    backbone = Backbone("resnet18", pretrained=False, last_stride=last_stride).eval()
    with torch.no_grad():
        out = backbone(torch.zeros(1, 3, height, width))
    assert tuple(out.shape[-2:]) == feature_map_size(height, width, last_stride)


def test_more_heads_than_feature_map_positions_is_rejected_with_the_reason():
    # 64x32 -> a 4x2 map: 8 positions
    assert build_run_config({"data": {"height": 64, "width": 32}, "model": {"num_heads": 8}}).model.num_heads == 8
    with pytest.raises(ConfigError, match=r"'model.num_heads'.*K=9.*4x2 feature map.*8 positions"):
        build_run_config({"data": {"height": 64, "width": 32}, "model": {"num_heads": 9}})
    # the paper's 384x128 gives 24x8 = 192 positions
    build_run_config({"model": {"num_heads": 192}})
    with pytest.raises(ConfigError, match="192 positions"):
        build_run_config({"model": {"num_heads": 193}})
    # the Baseline has no heads to place
    build_run_config({"data": {"height": 32, "width": 16}, "model": {"mhsam": False, "num_heads": 8}})
