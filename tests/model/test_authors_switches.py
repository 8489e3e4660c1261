"""The authors' public code as a second reading (docs/paper-to-code.md "Two readings"): each switch changes
what it says, and only that.

References are written from the authors' code (hongchenphd/MHSA-Net 317160e) or by hand, never by calling
the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mhsa.config import ConfigError, build_run_config, weights_config
from mhsa.evaluation import evaluate_modes, re_ranking
from mhsa.losses import Criterion, competition, fdrt, fdrt_authors, hard_triplet, ihtl
from mhsa.model import build_model
from mhsa.run import train as train_mod
from mhsa.run.optim import staircase_warmup

TINY = (64, 32)  # -> 4x2 feature map with last_stride=1
PIDS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])


def tiny_model(num_heads=8, **switches):
    torch.manual_seed(0)
    return build_model(num_classes=5, num_heads=num_heads, backbone="resnet18", **switches)


def tiny_batch(b=8):
    return torch.randn(b, 3, *TINY, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------- (a) softmax over positions
def test_alpha_sums_to_one_over_heads_by_default_and_over_positions_under_a():
    x = tiny_batch(4)
    with torch.no_grad():
        heads = tiny_model().eval()(x)["alpha"]
        positions = tiny_model(attention_softmax="positions").eval()(x)["alpha"]
    torch.testing.assert_close(heads.sum(1), torch.ones(4, 4, 2))  # every pixel, over K
    torch.testing.assert_close(positions.sum((2, 3)), torch.ones(4, 8))  # every head, over h*w
    assert not torch.allclose(positions.sum(1), torch.ones(4, 4, 2))


def test_positions_pool_is_the_alpha_weighted_sum_as_torch_bmm_in_the_code():
    model = tiny_model(attention_softmax="positions").eval()
    x = tiny_batch(2)
    with torch.no_grad():
        Q = model.backbone(x)
        out = model(x)
        # networks.py:262-267: x.view(B, C, h*w).transpose -> softmax(dim=1) over positions -> bmm -> fc
        flat = Q.flatten(2).transpose(1, 2)  # (B, hw, C)
        logits = model.mhsam.attention(Q).flatten(2).transpose(1, 2)  # (B, hw, K)
        attn = logits.softmax(dim=1)
        ref = model.mhsam.embed(torch.bmm(attn.transpose(1, 2), flat))
    torch.testing.assert_close(out["heads"], ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------- (b) attention MLP widths
def test_attention_mlp_widths_paper_and_authors():
    def widths(model):
        return [(m.in_channels, m.out_channels, m.bias is None) for m in model.mhsam.attention
                if isinstance(m, torch.nn.Conv2d)]

    assert widths(tiny_model()) == [(512, 512, True), (512, 8, True)]
    assert widths(tiny_model(attention_mlp="authors")) == [(512, 1024, True), (1024, 256, True), (256, 8, True)]
    with pytest.raises(ValueError, match="attention_layers"):
        tiny_model(attention_mlp="authors", attention_layers=3)


# ------------------------------------------------------------------- (d) SAFFM, one weight per head
def test_authors_saffm_is_layernormed_convex_combination_with_one_weight_per_head():
    model = tiny_model(saffm_form="authors").eval()
    x = tiny_batch(3)
    with torch.no_grad():
        out = model(x)
        P = out["heads"]
        fc1, fc2, fc3 = model.fusion.score
        beta = torch.softmax(fc3(fc2(fc1(P.reshape(3, -1)))), dim=1)  # (B, K): networks.py:280-284
        ref = F.layer_norm(torch.einsum("bk,bkd->bd", beta, P), (512,), model.rlm.norm.weight, model.rlm.norm.bias)
    assert [layer.out_features for layer in model.fusion.score] == [2048, 512, 8]
    torch.testing.assert_close(out["local"], ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(out["local"].mean(1), torch.zeros(3), atol=1e-5)  # the LayerNorm on p*


# ------------------------------------------------------------------- (e) LayerNorm on z
def test_z_layernorm_normalises_z_with_the_rlm_layernorm():
    x = tiny_batch()
    z_paper = tiny_model().train()(x)["z"]
    z_authors = tiny_model(z_layernorm=True).train()(x)["z"]
    torch.testing.assert_close(z_authors, F.layer_norm(z_paper, (512,)), rtol=1e-4, atol=1e-4)
    assert z_paper.std(1).mean() > 2  # a sum of K LayerNorm outputs
    torch.testing.assert_close(z_authors.std(1, unbiased=False), torch.ones(8), rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------- (f) extra Bottleneck
def test_extra_bottleneck_follows_layer4_and_updates_bn_stats_as_two_calls_do():
    model = tiny_model(extra_bottleneck=True).train()
    plain = tiny_model().train()
    x = tiny_batch()
    block = model.extra_block
    before = block.bn1.running_mean.clone()
    with torch.no_grad():
        Q = model.backbone(x)
        # the code calls the block twice on the same input per step (networks.py:241, :261)
        twice = torch.nn.BatchNorm2d(block.bn1.num_features)
        twice.running_mean.copy_(before)
        h = block.conv1(Q)
        twice(h)
        twice(h)
        out = model(x)
    torch.testing.assert_close(block.bn1.running_mean, twice.running_mean)
    assert sum(p.numel() for p in model.parameters()) > sum(p.numel() for p in plain.parameters())
    assert out["q"].shape == (8, 512)


# ------------------------------------------------------------------- (g) shared classifier
def test_shared_classifier_scores_p_and_z_with_the_global_classifier():
    model = tiny_model(shared_classifier=True).train()
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert "classifier_q" in names and not names & {"classifier_p", "classifier_z"}
    out = model(tiny_batch())
    torch.testing.assert_close(out["logits_p"], model.classifier_q(out["p"]))
    torch.testing.assert_close(out["logits_z"], model.classifier_q(out["z"]))
    with pytest.raises(ValueError, match="concat"):
        tiny_model(shared_classifier=True, fusion="concat")


# ------------------------------------------------------------------- A2: q* detached in the RLM
def test_residual_detach_q_stops_only_the_gradient_into_the_global_branch():
    x = tiny_batch()
    grads = {}
    for detach in (False, True):
        model = tiny_model(residual_detach_q=detach).train()
        out = model(x)
        out["z"].pow(2).sum().backward()
        grads[detach] = (out["z"].detach(), model.gfb.reduce[0].weight.grad)
    torch.testing.assert_close(grads[False][0], grads[True][0])  # same forward
    assert grads[False][1] is not None and grads[False][1].abs().sum() > 0
    assert grads[True][1] is None


# ------------------------------------------------------------------- initialisation
def test_authors_init_reinitialises_the_heads_as_the_code():
    paper, authors = tiny_model(), tiny_model(init="authors")
    assert paper.classifier_q.weight.std() < 0.01  # normal(std 0.001)
    # kaiming_normal_(mode="fan_out"): std sqrt(2 / num_classes)
    assert authors.classifier_q.weight.std().item() == pytest.approx(math.sqrt(2 / 5), rel=0.1)
    bound = math.sqrt(6 / (512 + 512))  # xavier_uniform_ of fc (2048->512 in the code; 512->512 here)
    w = authors.mhsam.embed.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert not torch.equal(authors.gfb.reduce[1].weight, torch.ones(512))  # N(1, 0.02)


# ------------------------------------------------------------------- (c) the optimiser's parameter set
def test_authors_param_set_leaves_out_attention_mlp_eq2_linear_saffm_last_layer_and_layernorm():
    model = tiny_model()
    assert model.frozen_parameter_names("all") == set()
    assert model.frozen_parameter_names("authors") == {
        "mhsam.attention.0.weight", "mhsam.attention.2.weight", "mhsam.embed.weight", "mhsam.embed.bias",
        "fusion.score.2.weight", "rlm.norm.weight", "rlm.norm.bias"}
    authors = tiny_model(saffm_form="authors")
    assert {n for n in authors.frozen_parameter_names("authors") if n.startswith("fusion")} == {
        "fusion.score.2.weight", "fusion.score.2.bias"}
    assert tiny_model(mhsam=False).frozen_parameter_names("authors") == set()


def test_make_optimizer_under_the_authors_param_set_never_moves_the_frozen_weights():
    model = tiny_model()
    cfg = build_run_config({"optim": {"param_set": "authors"}})
    opt = train_mod.make_optimizer(cfg, model)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    frozen = model.frozen_parameter_names("authors")
    names = {n for n, p in model.named_parameters() if id(p) not in in_opt}
    assert names == frozen
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    total, _ = Criterion()(model.train()(tiny_batch()), PIDS)
    total.backward()
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not moved & frozen and "classifier_q.weight" in moved
    all_params = train_mod.make_optimizer(build_run_config({}), model).param_groups[0]["params"]
    assert len(all_params) == len(list(model.parameters()))


# ------------------------------------------------------------------- (h) Euclidean distances
def _euclid(a, b):
    return math.sqrt(max(sum((float(x) - float(y)) ** 2 for x, y in zip(a, b, strict=True)), 1e-12))


def ref_triplet_euclidean(feats, pids):
    losses = []
    for a in range(len(pids)):
        pos = [_euclid(feats[a], feats[p]) for p in range(len(pids)) if p != a and pids[p] == pids[a]]
        neg = [_euclid(feats[a], feats[n]) for n in range(len(pids)) if pids[n] != pids[a]]
        losses.append(math.log1p(math.exp(max(pos) - min(neg))))
    return sum(losses) / len(losses)


def ref_ihtl_authors(P, pids):
    """loss.py:244-256: Euclidean head distances, MaxPool2d(K) blocks, positives include the anchor."""
    B, K, D = P.shape
    flat = P.reshape(B * K, D)
    scores = (flat[:, None] - flat[None]).pow(2).sum(-1).clamp_min(1e-12).sqrt()
    far = F.max_pool2d(scores[None], K)[0]
    near = -F.max_pool2d(-scores[None], K)[0]
    same = pids[:, None] == pids[None]
    ap = torch.stack([far[i][same[i]].max() for i in range(B)])
    an = torch.stack([near[i][~same[i]].min() for i in range(B)])
    return F.soft_margin_loss(an - ap, torch.ones(B, dtype=P.dtype)).item()


@pytest.mark.parametrize("seed", [0, 1])
def test_euclidean_triplet_and_ihtl_match_loop_references(seed):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(8, 6, generator=g, dtype=torch.float64)
    P = torch.randn(8, 3, 6, generator=g, dtype=torch.float64)
    pids = [0, 0, 1, 1, 2, 2, 2, 0]
    t = torch.tensor(pids)
    assert hard_triplet(feats, t, "euclidean").item() == pytest.approx(ref_triplet_euclidean(feats, pids), rel=1e-6)
    assert ihtl(P, t, self_positive=True, distance="euclidean").item() == pytest.approx(
        ref_ihtl_authors(P, t), rel=1e-6)
    assert hard_triplet(feats, t, "euclidean").item() != pytest.approx(hard_triplet(feats, t).item(), rel=1e-3)


def test_euclidean_distance_hand_computed_1d():
    feats = torch.tensor([[0.0], [3.0], [1.0], [5.0]])
    pids = torch.tensor([0, 0, 1, 1])
    # anchors: 0: pos 3, neg min(1,5)=1; 1: pos 3, neg min(2,2)=2; 2: pos 4, neg min(1,2)=1; 3: pos 4, neg 2
    expected = (math.log1p(math.exp(2)) + math.log1p(math.exp(1)) + math.log1p(math.exp(3))
                + math.log1p(math.exp(2))) / 4
    assert hard_triplet(feats, pids, "euclidean").item() == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------- (i) FDRT, the authors' form
def test_fdrt_authors_hand_computed():
    P = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)  # one image, K=2
    # G = [[1, 1], [1, 2]]; rows to unit norm, then columns (networks.py:301-303)
    rows = [[1 / math.sqrt(2), 1 / math.sqrt(2)], [1 / math.sqrt(5), 2 / math.sqrt(5)]]
    cols = [math.hypot(rows[0][j], rows[1][j]) for j in range(2)]
    Gn = [[rows[i][j] / cols[j] for j in range(2)] for i in range(2)]
    dev = [[Gn[i][j] - (i == j) for j in range(2)] for i in range(2)]
    per_image = math.sqrt(sum(v * v for row in dev for v in row)) / 25
    assert fdrt_authors(P).item() == pytest.approx(per_image, rel=1e-6)
    # summed, not averaged, over the batch; not the paper's Frobenius form
    assert fdrt_authors(P.repeat(3, 1, 1)).item() == pytest.approx(3 * per_image, rel=1e-6)
    assert fdrt(P, norm="fro").item() != pytest.approx(per_image, rel=1e-2)


def test_fdrt_authors_is_scale_invariant_per_head_only_through_g():
    P = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scaled = P * torch.tensor([1.0, 3.0, 1.0, 1.0], dtype=torch.float64).view(1, 4, 1)
    # the paper normalises the heads before G, so a head's length cannot matter; the code's form it does
    assert fdrt(scaled, norm="fro").item() == pytest.approx(fdrt(P, norm="fro").item(), rel=1e-6)
    assert fdrt_authors(scaled).item() != pytest.approx(fdrt_authors(P).item(), rel=1e-6)


# ------------------------------------------------------------------- (j) competition, batch sum, thresholds
def test_competition_batch_sum_and_the_two_code_thresholds():
    alpha = torch.tensor([[[[0.0005, 0.002]], [[0.5, 0.0]]], [[[0.001, 0.009]], [[0.02, 0.3]]]])
    root = (0.0005 + 0.002 + 0.0) + (0.001 + 0.009)  # loss.py:278: alpha < 0.01, summed over the batch
    utils = (0.0005 + 0.0) + 0.0  # utils/loss.py:289: alpha < 0.001 (0.001 itself is not below)
    assert competition(alpha, form="code", reduction="sum").item() == pytest.approx(root, rel=1e-6)
    assert competition(alpha, form="code", reduction="sum", code_threshold=1e-3).item() == pytest.approx(
        utils, rel=1e-5)
    assert competition(alpha, 1e-3, reduction="sum").item() == pytest.approx(
        2 * competition(alpha, 1e-3).item(), rel=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        competition(alpha, reduction="max")


def test_criterion_passes_the_authors_loss_options_on():
    torch.manual_seed(0)
    outputs = tiny_model().train()(tiny_batch())
    crit = Criterion(distance="euclidean", fdrt_form="authors", competition_form="code",
                     competition_reduction="sum", competition_threshold=0.2)
    _, terms = crit(outputs, PIDS)
    torch.testing.assert_close(terms["triplet_local"], hard_triplet(outputs["p"], PIDS, "euclidean").detach())
    torch.testing.assert_close(terms["triplet_residual"], hard_triplet(outputs["z"], PIDS, "euclidean").detach())
    torch.testing.assert_close(terms["ihtl"], ihtl(outputs["P"], PIDS, distance="euclidean").detach())
    torch.testing.assert_close(terms["fdrt"], fdrt_authors(outputs["P"]).detach())
    torch.testing.assert_close(terms["competition"], competition(
        outputs["alpha"], form="code", reduction="sum", code_threshold=0.2).detach())
    for kwargs, name in (({"distance": "cos"}, "distance"), ({"fdrt_form": "x"}, "fdrt_form"),
                         ({"competition_reduction": "x"}, "competition_reduction"),
                         ({"competition_threshold": 0.0}, "competition_threshold")):
        with pytest.raises(ValueError, match=name):
            Criterion(**kwargs)


# ------------------------------------------------------------------- (k) staircase warm-up
def _authors_adjust_lr(ep):  # main_reid.py:152-160, called with the 1-based epoch
    if ep < 50:
        return 1e-4 * (ep // 5 + 1)
    if ep < 200:
        return 1e-3
    if ep < 300:
        return 1e-4
    return 1e-5


def test_staircase_warmup_with_milestones_199_299_is_the_authors_schedule():
    cfg = build_run_config({"optim": {"warmup": "staircase", "milestones": [199, 299]}})
    for epoch in range(1, 401):
        assert train_mod.lr_at(cfg, epoch) == pytest.approx(_authors_adjust_lr(epoch), rel=1e-12), epoch
    assert [staircase_warmup(1e-3, 50, e) for e in (1, 4, 5, 9, 10, 49, 50)] == pytest.approx(
        [1e-4, 1e-4, 2e-4, 2e-4, 3e-4, 1e-3, 1e-3])
    assert [staircase_warmup(1.0, 5, e) for e in range(1, 6)] == pytest.approx([0.3, 0.5, 0.7, 0.9, 1.0])
    linear = build_run_config({})
    assert train_mod.lr_at(linear, 1) == pytest.approx(1e-5)  # the default is unchanged


def test_milestone_epoch_at_decays_from_the_milestone_itself_as_the_authors_adjust_lr():
    """(m) optim.milestone_epoch: at, with the paper's milestones [200, 300] and the staircase warm-up, is
    main_reid.py:152-160 at every epoch (tests/reference_impls.py transcribes it); under the default rule it
    is the paper reading's [199, 299]."""
    from reference_impls import authors_adjust_lr

    at = build_run_config({"optim": {"warmup": "staircase", "milestone_epoch": "at"}})
    assert at.optim.milestones == [200, 300]
    shifted = build_run_config({"optim": {"warmup": "staircase", "milestones": [199, 299]}})
    for epoch in range(1, 401):
        assert train_mod.lr_at(at, epoch) == pytest.approx(authors_adjust_lr(epoch), rel=1e-12), epoch
        assert train_mod.lr_at(at, epoch) == train_mod.lr_at(shifted, epoch)
    paper = build_run_config({})
    assert [train_mod.lr_at(paper, e) for e in (200, 201)] == pytest.approx([1e-3, 1e-4])
    assert [train_mod.lr_at(at, e) for e in (199, 200)] == pytest.approx([1e-3, 1e-4])
    # a short preset's milestone moves the same way: the demo's [4] of 5 epochs decays from epoch 4
    demo = build_run_config({"optim": {"milestones": [4], "epochs": 5, "warmup_epochs": 1, "milestone_epoch": "at"}})
    assert [train_mod.lr_at(demo, e) for e in (3, 4, 5)] == pytest.approx([1e-3, 1e-4, 1e-4])


# ------------------------------------------------------------------- A4 / (l) re-ranking input
def test_rerank_input_euclidean_feeds_square_roots_and_leaves_plain_modes_alone():
    """The default (Zhong et al.'s code and the authors' evaluator feed plain Euclidean distances; the
    function squares them): square roots; `squared` (torchreid's engine) feeds the squared distances."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 8)) * 3
    ids = rng.integers(0, 6, 60)
    f = torch.from_numpy((centres[ids] + rng.standard_normal((60, 8))).astype(np.float32))
    q, g = {"concat": f[:15]}, {"concat": f[15:]}
    args = (q, g, ids[:15], ids[15:], np.zeros(15, int), np.ones(45, int), ["concat", "concat_rerank"])
    squared = evaluate_modes(*args, rerank_input="squared")
    euclid = evaluate_modes(*args, rerank_input="euclidean")
    assert evaluate_modes(*args) == euclid  # the default
    assert squared["concat"] == euclid["concat"]
    assert squared["concat_rerank"] != euclid["concat_rerank"]
    d = ((f[:, None] - f[None]) ** 2).sum(-1).clamp_min(0).sqrt().numpy()
    from mhsa.evaluation.protocol import evaluate

    ref = evaluate(re_ranking(d[:15, 15:], d[:15, :15], d[15:, 15:]), ids[:15], ids[15:], np.zeros(15, int),
                   np.ones(45, int), max_rank=50)
    assert euclid["concat_rerank"]["mAP"] == pytest.approx(ref["mAP"] * 100, abs=1e-4)
    ref4 = evaluate(re_ranking(d[:15, 15:] ** 2, d[:15, :15] ** 2, d[15:, 15:] ** 2), ids[:15], ids[15:],
                    np.zeros(15, int), np.ones(45, int), max_rank=50)
    assert squared["concat_rerank"]["mAP"] == pytest.approx(ref4["mAP"] * 100, abs=1e-4)
    with pytest.raises(ValueError, match="rerank_input"):
        evaluate_modes(*args, rerank_input="cosine")


# ------------------------------------------------------------------- config
NEW_KEYS = {
    "model.attention_softmax": "positions", "model.attention_mlp": "authors", "model.saffm_form": "authors",
    "model.z_layernorm": True, "model.extra_bottleneck": True, "model.shared_classifier": True,
    "model.residual_detach_q": True, "model.init": "authors", "loss.distance": "euclidean",
    "loss.fdrt_form": "authors", "loss.competition_reduction": "sum", "loss.competition_threshold": 0.001,
    "optim.param_set": "authors", "optim.warmup": "staircase", "optim.milestone_epoch": "at",
    "data.sampler": "authors", "data.erasing": "cutout", "data.cutout_side": 0.25,
}


def test_new_keys_at_default_leave_the_weights_config_unchanged_and_count_when_set():
    default = weights_config(build_run_config({}))
    assert not set(NEW_KEYS) & set(default)
    for key, value in NEW_KEYS.items():
        cfg = build_run_config({}, dotted=[f"{key}={value}"])
        assert weights_config(cfg)[key] == str(value), key
    assert "eval.rerank_input" not in weights_config(build_run_config({}, dotted=["eval.rerank_input=squared"]))
    assert build_run_config({}).eval.rerank_input == "euclidean"


@pytest.mark.parametrize("key", [k for k, v in NEW_KEYS.items() if isinstance(v, str)] + ["eval.rerank_input"])
def test_bad_values_of_the_new_keys_name_the_key(key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_run_config({}, dotted=[f"{key}=nonsense"])


def test_config_rejects_incompatible_authors_combinations():
    with pytest.raises(ConfigError, match="model.shared_classifier"):
        build_run_config({}, dotted=["model.shared_classifier=true", "model.fusion=concat"])
    with pytest.raises(ConfigError, match="model.attention_mlp"):
        build_run_config({}, dotted=["model.attention_mlp=authors", "model.attention_layers=3"])
    with pytest.raises(ConfigError, match="loss.competition_threshold"):
        build_run_config({}, dotted=["loss.competition_threshold=0"])


def test_every_switch_together_trains_one_step():
    sw = {k.split(".")[1]: v for k, v in NEW_KEYS.items() if k.startswith("model.")}
    model = tiny_model(**sw).train()
    crit = Criterion(global_ce=False, distance="euclidean", fdrt_form="authors", competition_form="code",
                     competition_reduction="sum", lambda3=1e-4, ihtl_self_positive=True, label_smoothing=0.1)
    total, terms = crit(model(tiny_batch()), PIDS)
    assert torch.isfinite(total) and "ce_global" not in terms
    total.backward()
