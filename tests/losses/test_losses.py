"""Losses (Eq 3, 4, 5, 12, 13) against brute-force Python-loop references and hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from mhsa.losses import TERMS, Criterion, competition, fdrt, hard_triplet, ihtl


def _d(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum((float(x) - float(y)) ** 2 for x, y in zip(a.flatten(), b.flatten(), strict=True))


def _soft_margin_mean(pairs: list[tuple[list[float], list[float]]]) -> float:
    losses = [math.log1p(math.exp(max(pos) - min(neg))) for pos, neg in pairs if pos and neg]
    return sum(losses) / len(losses) if losses else 0.0


def ref_hard_triplet(feats: torch.Tensor, pids: list[int]) -> float:
    B = len(pids)
    pairs = []
    for a in range(B):
        pos = [_d(feats[a], feats[p]) for p in range(B) if p != a and pids[p] == pids[a]]
        neg = [_d(feats[a], feats[n]) for n in range(B) if pids[n] != pids[a]]
        pairs.append((pos, neg))
    return _soft_margin_mean(pairs)


def ref_ihtl(P: torch.Tensor, pids: list[int], self_positive: bool) -> float:
    B, K, _ = P.shape
    pairs = []
    for a in range(B):
        pos, neg = [], []
        for o in range(B):
            heads = [_d(P[a, i], P[o, j]) for i in range(K) for j in range(K)]
            if pids[o] == pids[a] and (o != a or self_positive):
                pos.append(max(heads))
            elif pids[o] != pids[a]:
                neg.append(min(heads))
        pairs.append((pos, neg))
    return _soft_margin_mean(pairs)


def ref_fdrt(P: torch.Tensor, norm: str) -> float:
    B, K, _ = P.shape
    total = 0.0
    for b in range(B):
        unit = [P[b, i] / P[b, i].norm() for i in range(K)]
        dev = [[float(unit[i] @ unit[j]) - (1.0 if i == j else 0.0) for j in range(K)] for i in range(K)]
        if norm == "l1":
            total += sum(abs(v) for row in dev for v in row) / K**2
        else:
            total += math.sqrt(sum(v * v for row in dev for v in row)) / K**2
    return total / B


def _random_batch(seed: int, B: int = 8, D: int = 6, ids: int = 3, duplicate: bool = False):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, D, generator=g, dtype=torch.float64)
    pids = torch.randint(0, ids, (B,), generator=g)
    if duplicate:  # tied distances: repeated features (same and different ids)
        feats[1] = feats[0]
        feats[5] = feats[0]
        feats[6] = feats[2]
    return feats, pids


# ---------------------------------------------------------------- Eq 4
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("duplicate", [False, True])
def test_hard_triplet_matches_loop_reference(seed, duplicate):
    feats, pids = _random_batch(seed, duplicate=duplicate)
    got = hard_triplet(feats, pids)
    assert got.item() == pytest.approx(ref_hard_triplet(feats, pids.tolist()), rel=1e-5, abs=1e-6)


def test_hard_triplet_hand_computed_1d():
    # anchor 0: d_p = 1, d_n = 9; anchor 1: d_p = 1, d_n = 4; anchor 2 has no positive -> skipped
    feats = torch.tensor([[0.0], [1.0], [3.0]])
    got = hard_triplet(feats, torch.tensor([0, 0, 1]))
    expected = (math.log1p(math.exp(-8)) + math.log1p(math.exp(-3))) / 2
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_hard_triplet_anchor_is_not_its_own_positive():
    # if the anchor counted itself, d_p would be 0 for anchor 0 via itself, but its real positive is at 10
    feats = torch.tensor([[0.0], [10.0], [1.0], [12.0]])
    pids = torch.tensor([0, 0, 1, 1])
    assert hard_triplet(feats, pids).item() == pytest.approx(ref_hard_triplet(feats, [0, 0, 1, 1]), rel=1e-6)
    # anchor 0: d_p = 100, d_n = 1 -> ~99
    assert hard_triplet(feats, pids).item() > 50


def test_hard_triplet_without_valid_anchor_is_differentiable_zero():
    feats = torch.randn(4, 3, requires_grad=True)
    loss = hard_triplet(feats, torch.zeros(4, dtype=torch.long))  # no negatives anywhere
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(feats.grad, torch.zeros_like(feats))


def test_hard_triplet_gradient_is_finite_with_skipped_anchors():
    feats = torch.randn(5, 4, requires_grad=True)
    hard_triplet(feats, torch.tensor([0, 0, 1, 1, 2])).backward()  # anchor 4 has no positive
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0


# ---------------------------------------------------------------- Eq 5
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("self_positive", [False, True])
@pytest.mark.parametrize("duplicate", [False, True])
def test_ihtl_matches_loop_reference(seed, self_positive, duplicate):
    g = torch.Generator().manual_seed(seed)
    P = torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    pids = torch.tensor([0, 0, 1, 1, 2, 3])
    if duplicate:
        P[1] = P[0]
        P[2, 1] = P[0, 2]
    got = ihtl(P, pids, self_positive=self_positive)
    assert got.item() == pytest.approx(ref_ihtl(P, pids.tolist(), self_positive), rel=1e-5, abs=1e-6)


def test_ihtl_hand_computed_both_ways():
    # K=2, D=1. image 0 heads {0, 1}, image 1 {2, 2} (same id), image 2 {4, 5} (other id)
    P = torch.tensor([[[0.0], [1.0]], [[2.0], [2.0]], [[4.0], [5.0]]])
    pids = torch.tensor([0, 0, 1])
    # anchor 0: max_ij pos = 4, min_ij neg = 9; anchor 1: 4 vs 4; anchor 2: no positive
    paper = (math.log1p(math.exp(-5)) + math.log(2)) / 2
    assert ihtl(P, pids).item() == pytest.approx(paper, rel=1e-6)
    # own heads as positive: anchors 0/1 unchanged (own spread 1 and 0 < 4); anchor 2: own spread 1 vs 4
    code = (math.log1p(math.exp(-5)) + math.log(2) + math.log1p(math.exp(-3))) / 3
    assert ihtl(P, pids, self_positive=True).item() == pytest.approx(code, rel=1e-6)


def test_ihtl_with_one_head_equals_hard_triplet():
    feats, pids = _random_batch(3)
    assert ihtl(feats.unsqueeze(1), pids).item() == pytest.approx(hard_triplet(feats, pids).item(), rel=1e-9)


# ---------------------------------------------------------------- Eq 3
@pytest.mark.parametrize("norm", ["l1", "fro"])
def test_fdrt_matches_loop_reference(norm):
    P = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    P[0, 1] = P[0, 0] * 3.0  # a duplicated (rescaled) head
    assert fdrt(P, norm=norm).item() == pytest.approx(ref_fdrt(P, norm), rel=1e-6)


@pytest.mark.parametrize("norm", ["l1", "fro"])
def test_fdrt_orthonormal_heads_is_zero(norm):
    scales = torch.tensor([1.0, 2.0, 0.5]).view(3, 1)  # any length: heads are L2-normalised first
    P = (torch.eye(5)[:3] * scales).unsqueeze(0).repeat(2, 1, 1)
    assert fdrt(P, norm=norm).item() == pytest.approx(0.0, abs=1e-7)


def test_fdrt_identical_heads_known_value():
    K = 4
    P = torch.randn(1, 1, 7).repeat(2, K, 1)
    # G is all ones: off-diagonal deviation 1 in K(K-1) entries
    assert fdrt(P).item() == pytest.approx((K - 1) / K, rel=1e-6)
    assert fdrt(P, norm="fro").item() == pytest.approx(math.sqrt(K * (K - 1)) / K**2, rel=1e-6)


def test_fdrt_rejects_unknown_norm():
    with pytest.raises(ValueError, match="norm"):
        fdrt(torch.randn(1, 2, 3), norm="l2")


# ---------------------------------------------------------------- Eq 12
def test_competition_hand_values():
    alpha = torch.tensor(
        [[[[0.0005, 0.002]], [[0.5, 0.0]]], [[[0.001, 0.009]], [[0.02, 0.3]]]]
    )  # (B=2, K=2, H=1, W=2)
    gamma = 1e-3
    image0 = 0.0005**2 + gamma**2 + gamma**2 + 0.0
    image1 = gamma**2 + gamma**2 + gamma**2 + gamma**2
    assert competition(alpha, gamma).item() == pytest.approx((image0 + image1) / 2, rel=1e-5)
    # authors' code: unsquared sum of weights below 0.01, gamma ignored
    code = ((0.0005 + 0.002 + 0.0) + (0.001 + 0.009)) / 2
    assert competition(alpha, gamma, form="code").item() == pytest.approx(code, rel=1e-5)
    assert competition(alpha, 0.5, form="code").item() == pytest.approx(code, rel=1e-5)


def test_competition_gradient_only_below_threshold():
    alpha = torch.tensor([[[[0.0004, 0.3]]]], requires_grad=True)
    competition(alpha, 1e-3).backward()
    assert alpha.grad[0, 0, 0, 0].item() == pytest.approx(2 * 0.0004, rel=1e-5)
    assert alpha.grad[0, 0, 0, 1].item() == 0.0


def test_competition_rejects_unknown_form():
    with pytest.raises(ValueError, match="form"):
        competition(torch.rand(1, 2, 3, 3), 1e-3, form="other")


# ---------------------------------------------------------------- Eq 8, 10, 11, 13
def _fake_outputs(B=8, K=3, D=6, C=4, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, requires_grad=True)

    alpha = torch.softmax(torch.randn(B, K, 3, 2, generator=g), dim=1).requires_grad_()
    return {
        "q": r(B, D),
        "p": r(B, D),
        "P": r(B, K, D),
        "z": r(B, D),
        "alpha": alpha,
        "logits_q": r(B, C),
        "logits_p": r(B, C),
        "logits_z": r(B, C),
    }


PIDS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])


def test_criterion_composes_eq13_with_unweighted_terms():
    out = _fake_outputs()
    crit = Criterion(lambda1=0.3, lambda2=0.7, lambda3=5.0, gamma=0.2)
    total, terms = crit(out, PIDS)
    assert tuple(terms) == TERMS
    ce = torch.nn.functional.cross_entropy
    expected = {
        "ce_global": ce(out["logits_q"], PIDS),
        "ce_local": ce(out["logits_p"], PIDS),
        "triplet_local": hard_triplet(out["p"], PIDS),
        "ce_residual": ce(out["logits_z"], PIDS),
        "triplet_residual": hard_triplet(out["z"], PIDS),
        "fdrt": fdrt(out["P"]),
        "ihtl": ihtl(out["P"], PIDS),
        "competition": competition(out["alpha"], 0.2),
    }
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5), name
        assert not terms[name].requires_grad
    weights = {"fdrt": 0.3, "ihtl": 0.7, "competition": 5.0}
    assert total.item() == pytest.approx(
        sum(weights.get(n, 1.0) * v.item() for n, v in expected.items()), rel=1e-5
    )
    total.backward()
    # q* itself is only trained through logits_q (no triplet on the GFB, Section IV)
    assert out["q"].grad is None
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for n, t in out.items() if n != "q")


def test_criterion_skips_zero_weight_terms_and_global_ce():
    out = _fake_outputs()
    _, terms = Criterion(lambda1=0.0, lambda2=0.0, lambda3=0.0, global_ce=False)(out, PIDS)
    assert set(terms) == {"ce_local", "triplet_local", "ce_residual", "triplet_residual"}
    _, terms = Criterion(lambda1=0.0, lambda3=0.0)(out, PIDS)
    assert set(terms) == {"ce_global", "ce_local", "triplet_local", "ce_residual", "triplet_residual", "ihtl"}


def test_criterion_baseline_outputs_only_global_ce():
    out = _fake_outputs()
    baseline = {"q": out["q"], "logits_q": out["logits_q"]}
    total, terms = Criterion()(baseline, PIDS)
    assert set(terms) == {"ce_global"}
    assert total.item() == pytest.approx(torch.nn.functional.cross_entropy(out["logits_q"], PIDS).item())
    with pytest.raises(ValueError, match="global_ce"):
        Criterion(global_ce=False)(baseline, PIDS)


def test_criterion_options_reach_the_losses():
    out = _fake_outputs(seed=1)
    crit = Criterion(label_smoothing=0.1, fdrt_norm="fro", competition_form="code", ihtl_self_positive=True)
    _, terms = crit(out, PIDS)
    smoothed = torch.nn.functional.cross_entropy(out["logits_q"], PIDS, label_smoothing=0.1)
    assert terms["ce_global"].item() == pytest.approx(smoothed.item(), rel=1e-6)
    assert terms["fdrt"].item() == pytest.approx(fdrt(out["P"], norm="fro").item(), rel=1e-6)
    assert terms["competition"].item() == pytest.approx(competition(out["alpha"], 1.0, form="code").item())
    assert terms["ihtl"].item() == pytest.approx(ihtl(out["P"], PIDS, self_positive=True).item(), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"fdrt_norm": "l2"}, "fdrt_norm"),
        ({"competition_form": "x"}, "competition_form"),
        ({"lambda2": -1.0}, "lambda2"),
    ],
)
def test_criterion_rejects_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Criterion(**kwargs)
