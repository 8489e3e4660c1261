"""The pretrained start of our own (mhsa.run.pretrain): a backbone the model loads like torchvision's
weights, the same bytes from the same seed, and a spec checked before anything trains."""

from __future__ import annotations

import json

import pytest
import torch

from mhsa.config import ConfigError, PretrainSpec
from mhsa.model import build_model
from mhsa.run.pretrain import pretrain

TINY = PretrainSpec(identities=6, images_per_id=4, height=32, width=16, epochs=2, batch=8, seed=1)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrain")
    record = pretrain(TINY, tmp / "data", tmp / "a" / "backbone.pt", tmp / "cache")
    return tmp, record


def test_the_backbone_loads_as_model_pretrained_and_learned_something(backbone):
    tmp, record = backbone
    path = tmp / "a" / "backbone.pt"
    state = torch.load(path, weights_only=True)
    assert not any(k.startswith("fc.") for k in state)  # the classifier over its identities is dropped
    model = build_model(5, num_heads=2, backbone="resnet18", pretrained=str(path))
    assert torch.equal(model.backbone.stem[0].weight, state["conv1.weight"])
    assert record["identities"] == 6 and len(record["history"]) == 2
    assert record["history"][-1]["loss"] < record["history"][0]["loss"]
    assert json.loads((tmp / "a" / "backbone.json").read_text())["spec"]["seed"] == 1


def test_the_same_seed_gives_the_same_bytes(backbone, tmp_path):
    tmp, _ = backbone
    pretrain(TINY, tmp / "data", tmp_path / "backbone.pt", tmp / "cache")
    a = torch.load(tmp / "a" / "backbone.pt", weights_only=True)
    b = torch.load(tmp_path / "backbone.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_bad_spec_names_the_key():
    with pytest.raises(ConfigError, match="pretrain: unknown key"):
        PretrainSpec.parse({"identites": 10})
    with pytest.raises(ConfigError, match="pretrain.backbone"):
        PretrainSpec.parse({"backbone": "vgg"})
    with pytest.raises(ConfigError, match="pretrain.epochs"):
        PretrainSpec.parse({"epochs": 0})
