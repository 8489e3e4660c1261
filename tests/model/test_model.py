"""MHSA-Net model: shapes (Section IV, Eq 1-2, 6-7, 9), gradients, Table V/VIII variants, weight loading."""

from __future__ import annotations

import pytest
import torch
from torchvision import models

from mhsa.losses import Criterion
from mhsa.model import build_model

TINY = (64, 32)  # -> 4x2 feature map with last_stride=1
PIDS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])  # 2 ids x 4 images


def tiny_model(num_heads=8, **switches):
    torch.manual_seed(0)
    return build_model(num_classes=5, num_heads=num_heads, backbone="resnet18", **switches)


def tiny_batch(b=8):
    return torch.randn(b, 3, *TINY, generator=torch.Generator().manual_seed(1))


def test_resnet50_feature_tensor_and_attention_at_paper_resolution():
    model = build_model(num_classes=10).eval()
    x = torch.randn(1, 3, 384, 128)
    with torch.no_grad():
        Q = model.backbone(x)
        out = model(x)
    assert Q.shape == (1, 2048, 24, 8)  # Q(x) in R^{24x8x2048}
    assert out["alpha"].shape == (1, 8, 24, 8)
    torch.testing.assert_close(out["alpha"].sum(1), torch.ones(1, 24, 8))
    assert out["heads"].shape == (1, 8, 512) and out["concat"].shape == (1, 1024)


def test_last_stride_two_restores_torchvision_downsampling():
    with torch.no_grad():
        Q = tiny_model(last_stride=2).eval().backbone(tiny_batch(1))
    assert Q.shape == (1, 512, 2, 1)


@pytest.mark.parametrize("K", [1, 5, 8, 9])
def test_shapes_for_any_number_of_heads(K):
    model = tiny_model(num_heads=K)
    x = tiny_batch(4)
    out = model.train()(x)
    assert out["P"].shape == (4, K, 512)
    assert out["p"].shape == out["z"].shape == out["q"].shape == (4, 512)
    assert out["alpha"].shape == (4, K, 4, 2)
    assert all(out[k].shape == (4, 5) for k in ("logits_q", "logits_p", "logits_z"))
    torch.testing.assert_close(out["alpha"].sum(1), torch.ones(4, 4, 2))
    with torch.no_grad():
        ev = model.eval()(x)
    assert set(ev) == {"global", "local", "concat", "heads", "alpha"}
    assert ev["global"].shape == ev["local"].shape == (4, 512)
    assert ev["concat"].shape == (4, 1024) and ev["heads"].shape == (4, K, 512)
    torch.testing.assert_close(ev["concat"], torch.cat([ev["local"], ev["global"]], 1))
    if K == 1:  # softmax over a single head: every pixel gets weight 1
        torch.testing.assert_close(ev["alpha"], torch.ones_like(ev["alpha"]))


@pytest.mark.parametrize("fusion, dim", [("concat", 5 * 512), ("sum", 512)])
def test_fusion_ablations(fusion, dim):
    model = tiny_model(num_heads=5, fusion=fusion)
    out = model(tiny_batch(4))
    assert out["p"].shape == (4, dim) and out["logits_p"].shape == (4, 5)
    if fusion == "sum":
        torch.testing.assert_close(out["p"], out["P"].sum(1))
    else:
        torch.testing.assert_close(out["p"], out["P"].flatten(1))
    with torch.no_grad():
        assert model.eval()(tiny_batch(2))["concat"].shape == (2, dim + 512)


def test_saffm_is_convex_combination_of_heads_per_channel():
    model = tiny_model(num_heads=3)
    out = model(tiny_batch(4))
    P, p = out["P"], out["p"]
    # softmax across heads: every channel of p* lies between the min and max of that channel over heads
    assert (p >= P.amin(1) - 1e-5).all() and (p <= P.amax(1) + 1e-5).all()


def test_rlm_residual_switch():
    model = tiny_model(num_heads=3)
    out = model(tiny_batch(4))
    ln = model.rlm.norm
    torch.testing.assert_close(out["z"], ln(out["P"] + out["q"].unsqueeze(1)).sum(1))
    model = tiny_model(num_heads=3, residual=False)
    out = model(tiny_batch(4))
    torch.testing.assert_close(out["z"], model.rlm.norm(out["P"]).sum(1))


def test_baseline_outputs():
    model = tiny_model(mhsam=False)
    assert not hasattr(model, "mhsam")
    out = model(tiny_batch(4))
    assert set(out) == {"q", "logits_q"}
    with torch.no_grad():
        assert set(model.eval()(tiny_batch(2))) == {"global"}


def test_classifier_and_bn_init():
    model = tiny_model()
    for name in ("classifier_q", "classifier_p", "classifier_z"):
        layer = getattr(model, name)
        assert layer.weight.std().item() == pytest.approx(0.001, rel=0.1)
        assert torch.count_nonzero(layer.bias) == 0
    bn = model.gfb.reduce[1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


@pytest.mark.parametrize("switches", [{}, {"attention_layers": 3}, {"mhsam": False}])
def test_every_parameter_gets_a_gradient(switches):
    model = tiny_model(**switches)
    total, _ = Criterion(lambda1=0.1, lambda2=0.5, lambda3=0.1, gamma=0.2)(model(tiny_batch()), PIDS)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    if switches.get("mhsam", True):
        attention = model.mhsam.attention
        named = {
            "w1": attention[0].weight,
            "w2": attention[-1].weight,
            "w3": model.mhsam.embed.weight,
            "b3": model.mhsam.embed.bias,
            "w4": model.fusion.score[0].weight,
            "w5": model.fusion.score[2].weight,
        }
        assert len(attention) == 2 * switches.get("attention_layers", 2) - 1
        for name, param in named.items():
            assert param.grad.abs().sum() > 0, name


# Table V rows (model switches, criterion options) and Table VIII rows
VARIANTS = {
    "baseline": ({"mhsam": False}, {}),
    "mhsam": ({}, {"lambda1": 0.0, "lambda2": 0.0, "lambda3": 0.0}),
    "mhsam+acm": ({}, {"lambda1": 0.0, "lambda2": 0.0}),
    "mhsam+fdrt": ({}, {"lambda2": 0.0, "lambda3": 0.0}),
    "mhsam+ihtl": ({}, {"lambda1": 0.0, "lambda3": 0.0}),
    "mhsam+ihtl+acm": ({}, {"lambda1": 0.0}),
    "mhsam+fdrt+acm": ({}, {"lambda2": 0.0}),
    "mhsam+ihtl+fdrt": ({}, {"lambda3": 0.0}),
    "mhsa-net": ({}, {}),
    "mhsa-net-dagger": ({}, {"global_ce": False}),
    "mhsa-net-k5": ({"num_heads": 5}, {}),
    "concat": ({"fusion": "concat"}, {}),
    "sum": ({"fusion": "sum"}, {}),
    "wo-rlm": ({"residual": False}, {}),
    "authors-code": (  # the public code's reading (docs/paper-to-code.md, Reading 2)
        {"attention_softmax": "positions", "attention_mlp": "authors", "saffm_form": "authors",
         "z_layernorm": True, "extra_bottleneck": True, "shared_classifier": True, "init": "authors"},
        {"label_smoothing": 0.1, "competition_form": "code", "ihtl_self_positive": True, "global_ce": False,
         "distance": "euclidean", "fdrt_form": "authors", "competition_reduction": "sum", "lambda3": 1e-4},
    ),
}


@pytest.mark.parametrize("switches", [
    {"attention_softmax": "positions"}, {"attention_mlp": "authors"}, {"saffm_form": "authors"},
    {"z_layernorm": True}, {"extra_bottleneck": True}, {"shared_classifier": True}, {"init": "authors"},
])
def test_every_parameter_gets_a_gradient_under_each_authors_switch(switches):
    model = tiny_model(**switches)
    total, _ = Criterion(lambda1=0.1, lambda2=0.5, lambda3=0.1, gamma=0.2)(model(tiny_batch()), PIDS)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_trains_one_step(name):
    switches, crit_kwargs = VARIANTS[name]
    model = tiny_model(**switches)
    crit = Criterion(**crit_kwargs)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = model.gfb.reduce[0].weight.detach().clone()
    total, terms = crit(model(tiny_batch()), PIDS)
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in terms.values())
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    assert not torch.equal(before, model.gfb.reduce[0].weight)


def test_channels_last_and_autocast():
    model = tiny_model(num_heads=3).to(memory_format=torch.channels_last)
    x = tiny_batch().to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        total, _ = Criterion()(out, PIDS)
    assert out["alpha"].dtype == torch.float32
    torch.testing.assert_close(out["alpha"].sum(1), torch.ones(8, 4, 2))
    assert torch.isfinite(total)
    total.backward()


def test_forward_creates_no_tensor_on_a_fixed_device():
    # on the meta device any tensor created on the CPU inside forward or the losses raises a device mismatch
    model = tiny_model(num_heads=3).to("meta")
    out = model(torch.empty(8, 3, *TINY, device="meta"))
    assert all(v.device.type == "meta" for v in out.values())
    total, _ = Criterion()(out, PIDS.to("meta"))
    assert total.device.type == "meta"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"attention": True}, "attention"),
        ({"fusion": "max"}, "fusion"),
        ({"residual": "yes"}, "residual"),
        ({"last_stride": 3}, "last_stride"),
        ({"attention_layers": 4}, "attention_layers"),
        ({"feat_dim": 0}, "feat_dim"),
        ({"mhsam": 1}, "mhsam"),
        ({"backbone": "vgg16"}, "backbone"),
        ({"num_heads": 0}, "num_heads"),
        ({"pretrained": 3}, "pretrained"),
    ],
)
def test_bad_switches_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        build_model(num_classes=5, **kwargs)


def test_load_local_state_dict(tmp_path):
    torch.manual_seed(123)
    reference = models.resnet18(weights=None).state_dict()  # includes fc.*, which must be ignored
    path = tmp_path / "resnet18.pth"
    torch.save(reference, path)
    model = build_model(num_classes=5, backbone="resnet18", pretrained=str(path))
    torch.testing.assert_close(model.backbone.stem[0].weight, reference["conv1.weight"])
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, reference["layer4.1.conv2.weight"])
    # strict apart from fc: a missing backbone key is an error
    del reference["layer1.0.bn1.weight"]
    torch.save(reference, path)
    with pytest.raises(RuntimeError, match="layer1.0.bn1.weight"):
        build_model(num_classes=5, backbone="resnet18", pretrained=path)


def test_missing_weights_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "resnet50.pth"
    with pytest.raises(FileNotFoundError) as err:
        build_model(num_classes=5, pretrained=str(path))
    assert str(path) in str(err.value) and "checkpoints" in str(err.value)


def test_offline_imagenet_error_says_where_to_put_the_file(monkeypatch):
    def offline(self, *args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(models.ResNet18_Weights, "get_state_dict", offline)
    with pytest.raises(RuntimeError) as err:
        build_model(num_classes=5, backbone="resnet18", pretrained="imagenet")
    message = str(err.value)
    assert torch.hub.get_dir() in message and "resnet18-f37072fd.pth" in message


def test_seeded_weights_are_a_loadable_state_dict_that_repeats(tmp_path):
    """`model.pretrained: seeded` (the rehearsal): torchvision's init from a seed, the same tensors for the
    same seed, loaded through the `pretrained: <path>` path; the global RNG is left as it was."""
    from mhsa.model.backbone import Backbone, seeded_state_dict

    rng = torch.random.get_rng_state()
    a, b, c = seeded_state_dict("resnet18", 0), seeded_state_dict("resnet18", 0), seeded_state_dict("resnet18", 1)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    path = tmp_path / "seeded-resnet18.pth"
    torch.save(a, path)
    backbone = Backbone("resnet18", pretrained=str(path))
    assert torch.equal(backbone.stem[0].weight, a["conv1.weight"])
