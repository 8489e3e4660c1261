"""Distances, feature extraction with a fake model, and per-mode evaluation."""

import numpy as np
import pytest
import torch
from torch import nn

from mhsa.evaluation import evaluate, evaluate_modes, extract_features, re_ranking, squared_euclidean


@pytest.mark.parametrize(
    "n,m,chunk", [(10, 7, 4096), (10, 7, 1), (10, 7, 3), (9, 7, 3), (10, 7, 10), (4, 5, 9)]
)
def test_squared_euclidean_matches_cdist(n, m, chunk):
    g = torch.Generator().manual_seed(n * 31 + chunk)
    a, b = torch.randn(n, 6, generator=g), torch.randn(m, 6, generator=g)
    out = squared_euclidean(a, b, chunk=chunk)
    assert out.dtype == torch.float32 and out.shape == (n, m)
    torch.testing.assert_close(out, torch.cdist(a.double(), b.double()).float() ** 2, atol=1e-4, rtol=1e-5)


def test_squared_euclidean_numpy_and_clamped():
    a = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float64) * 1e3
    out = squared_euclidean(a, a)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert (out >= 0).all()
    with pytest.raises(ValueError):
        squared_euclidean(np.zeros((2, 3)), np.zeros((2, 4)))


class FakeReid(nn.Module):
    """Eval-mode forward returns the architecture.md dict; train mode returns something else."""

    def __init__(self, k=3):
        super().__init__()
        self.k = k
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        assert not self.training and not torch.is_grad_enabled()
        v = x.flatten(1)[:, :1]  # (B, 1) encodes the sample id
        glob = v.repeat(1, 512)
        heads = torch.stack([v.repeat(1, 512) * (h + 1) for h in range(self.k)], 1)
        local = heads.mean(1)
        return {"global": glob, "local": local, "concat": torch.cat([local, glob], 1), "heads": heads}


def _loader(n=10, bs=3):
    batches = []
    for s in range(0, n, bs):
        idx = torch.arange(s, min(s + bs, n))
        img = idx.float()[:, None, None, None].expand(-1, 3, 2, 2).clone()
        batches.append((img, idx * 10, idx % 2, idx))
    return batches


def test_extract_features_modes_heads_order():
    model = FakeReid(k=3)
    model.train()
    res = extract_features(model, _loader(), modes=("global", "concat", "head1", "head3", "local"))
    assert model.training  # state restored
    f = res["features"]
    ids = torch.arange(10).float()
    assert f["global"].shape == (10, 512) and f["global"].dtype == torch.float32
    torch.testing.assert_close(f["global"][:, 0], ids)  # loader order preserved
    torch.testing.assert_close(f["head1"][:, 5], ids)
    torch.testing.assert_close(f["head3"][:, 0], ids * 3)  # 1-based head index
    assert f["concat"].shape == (10, 1024)
    np.testing.assert_array_equal(res["pids"], np.arange(10) * 10)
    np.testing.assert_array_equal(res["camids"], np.arange(10) % 2)


def test_extract_features_errors():
    with pytest.raises(ValueError, match="'foo'"):
        extract_features(FakeReid(), _loader(), modes=("foo",))
    with pytest.raises(ValueError, match="head4.*3 heads"):
        extract_features(FakeReid(k=3), _loader(), modes=("head4",))

    class GlobalOnly(nn.Module):
        def forward(self, x):
            return {"global": x.flatten(1)}

    with pytest.raises(ValueError, match="'concat'.*available keys: \\['global'\\]"):
        extract_features(GlobalOnly(), _loader(), modes=("concat",))


def test_extract_features_autocast_channels_last():
    res = extract_features(
        FakeReid(), _loader(), modes=("global",), amp_dtype=torch.bfloat16, channels_last=True
    )
    assert res["features"]["global"].dtype == torch.float32


def test_features_are_fp32_inside_the_trainings_autocast():
    """The training step runs under autocast; evaluation must not: features computed under bf16 autocast
    are rounded, and ranking, mAP and re-ranking would see those rounded embeddings (hand-checked below:
    the fp32 product of these weights is not representable in bf16)."""

    class LinearReid(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(12, 16, bias=False)
            with torch.no_grad():
                self.lin.weight.copy_(torch.linspace(-1.0, 1.0, 192).reshape(16, 12) * 1.0009765625)

        def forward(self, x):
            return {"global": self.lin(x.flatten(1))}

    model, loader = LinearReid(), _loader()
    exact = torch.cat([model.lin(b[0].flatten(1)) for b in loader]).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the training's autocast, still on
        res = extract_features(model, loader, modes=("global",))
        rounded = model.lin(loader[1][0].flatten(1))
    assert rounded.dtype == torch.bfloat16 and not torch.equal(rounded.float(), exact[3:6])  # it would round
    assert res["features"]["global"].dtype == torch.float32
    assert torch.equal(res["features"]["global"], exact)


def test_evaluate_modes_percent_and_rerank():
    rng = np.random.default_rng(0)
    nq, ng, d = 20, 60, 8
    centres = rng.standard_normal((10, d)) * 2
    q_pids, g_pids = rng.integers(0, 10, nq), rng.integers(0, 10, ng)
    q_cams, g_cams = np.zeros(nq, int), np.ones(ng, int)
    qf = {"global": torch.tensor(centres[q_pids] + rng.standard_normal((nq, d)), dtype=torch.float32)}
    gf = {"global": torch.tensor(centres[g_pids] + rng.standard_normal((ng, d)), dtype=torch.float32)}
    out = evaluate_modes(qf, gf, q_pids, g_pids, q_cams, g_cams, ["global", "global_rerank"])
    assert set(out) == {"global", "global_rerank"}
    assert set(out["global"]) == {"rank1", "rank3", "rank5", "rank10", "mAP", "mINP", "mAP@50"}
    dist = squared_euclidean(qf["global"], gf["global"]).numpy()
    ref = evaluate(dist, q_pids, g_pids, q_cams, g_cams)
    assert out["global"]["mAP"] == pytest.approx(ref["mAP"] * 100)
    assert out["global"]["rank5"] == pytest.approx(ref["cmc"][4] * 100)
    # re-ranking is fed plain Euclidean distances (Zhong et al., the authors' evaluator), which it squares
    rr = re_ranking(
        np.sqrt(dist),
        np.sqrt(squared_euclidean(qf["global"], qf["global"]).numpy()),
        np.sqrt(squared_euclidean(gf["global"], gf["global"]).numpy()),
    )
    rr_map = evaluate(rr, q_pids, g_pids, q_cams, g_cams)["mAP"] * 100
    assert out["global_rerank"]["mAP"] == pytest.approx(rr_map)
    with pytest.raises(ValueError, match="'concat'"):
        evaluate_modes(qf, gf, q_pids, g_pids, q_cams, g_cams, ["concat_rerank"])


def test_per_query_results_average_to_the_metrics_and_survive_json():
    """metrics.json's `per_query` (docs/evaluation.md, "Per-query results"): each metric is the mean of its
    per-query numbers, in every mode, after the round trip through JSON."""
    import json

    from mhsa.evaluation import evaluate_modes_per_query
    from mhsa.evaluation import per_query as PQ

    rng = np.random.default_rng(1)
    nq, ng, d = 24, 50, 6
    q_pids, g_pids = rng.integers(0, 8, nq), rng.integers(0, 8, ng)
    q_pids[0] = 99  # no gallery image: not a valid query
    q_cams, g_cams = rng.integers(0, 2, nq), rng.integers(0, 3, ng)
    qf = {"global": torch.tensor(rng.standard_normal((nq, d)), dtype=torch.float32)}
    gf = {"global": torch.tensor(rng.standard_normal((ng, d)), dtype=torch.float32)}
    modes = ["global", "global_rerank"]
    out, pq = evaluate_modes_per_query(qf, gf, q_pids, g_pids, q_cams, g_cams, modes)
    assert out == evaluate_modes(qf, gf, q_pids, g_pids, q_cams, g_cams, modes)
    back = PQ.from_json(json.loads(json.dumps(PQ.to_json(pq))))
    assert PQ.problem(PQ.to_json(pq)) is None
    assert 0 not in back["index"] and list(back["pids"]) == list(q_pids[back["index"]])
    for mode in modes:
        for metric in ("rank1", "rank3", "rank5", "rank10", "mAP", "mINP", "mAP@50"):
            values = PQ.metric_values(back["modes"][mode], metric)
            assert len(values) == len(back["pids"])
            assert values.mean() == pytest.approx(out[mode][metric], abs=1e-4), (mode, metric)
    with pytest.raises(KeyError, match="no per-query form"):
        PQ.metric_values(back["modes"]["global"], "recall")
    assert "does not hold" in PQ.problem({"index": [1], "pids": [1], "modes": {"global": {"first_hit": [0]}}})
