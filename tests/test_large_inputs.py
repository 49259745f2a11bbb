"""Larger than the study's sizes (N = 576 tokens of a 384² image, C = 768): every op against its reference."""

import pytest
import torch

from tokred import ops, reference

from helpers import assert_same_clustering, randn

pytestmark = pytest.mark.slow


def test_ats(device, rng):
    scores = torch.rand(64, 576, generator=rng, device=device)
    for rule in ("nearest", "inverse"):
        got, want = ops.ats_sample(scores, None, 288, rule), reference.ats_sample(scores, None, 288, rule)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


@pytest.mark.parametrize("op", ["dpc_knn", "kmedoids"])
def test_clustering(device, rng, op):
    x = randn((8, 576, 768), torch.float64, device, rng)
    args = (x, 288) if op == "dpc_knn" else (x, torch.rand(8, 576, generator=rng, device=device), 288)
    assert_same_clustering(x, getattr(ops, op)(*args), getattr(reference, op)(*args), exact=True)


def test_sinkhorn(device, rng):
    scores = randn((16, 288, 576), torch.float32, device, rng)
    torch.testing.assert_close(ops.sinkhorn(scores, 0.5, 10), reference.sinkhorn(scores, 0.5, 10), rtol=1e-3, atol=1e-6)
