import pytest
import torch

from tokred import ops, reference
from tokred.reference.distance import pairwise_distance

from helpers import FLOAT_DTYPES, assert_same_clustering, non_contiguous, randn, vit_like_tokens

SHAPES = [(16, 196, 64, 98), (1, 196, 32, 49), (3, 17, 8, 5), (2, 33, 16, 1), (2, 20, 8, 20)]


def inputs(batch, n, c, dtype, device, rng):
    x = randn((batch, n, c), dtype, device, rng)
    weights = torch.rand(batch, n, generator=rng, device=device, dtype=torch.float64).to(dtype)
    return x, weights


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("rule", ["paper", "medoid"])
@pytest.mark.parametrize("batch,n,c,k", SHAPES)
def test_matches_reference(device, rng, dtype, rule, batch, n, c, k):
    x, w = inputs(batch, n, c, dtype, device, rng)
    got = ops.kmedoids(x, w, k, 3, rule)
    assert_same_clustering(x, got, reference.kmedoids(x, w, k, 3, rule), exact=dtype == torch.float64)


@pytest.mark.parametrize("iters", [0, 1, 10])
def test_iterations(device, rng, iters):
    x, w = inputs(4, 60, 16, torch.float64, device, rng)
    for rule in ("paper", "medoid"):
        got = ops.kmedoids(x, w, 12, iters, rule)
        assert_same_clustering(x, got, reference.kmedoids(x, w, 12, iters, rule), exact=True)
    if iters == 0:  # the K heaviest tokens, heaviest first
        assert torch.equal(got.centres, w.topk(12, dim=-1).indices)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rule", ["paper", "medoid"])
def test_tokens_with_a_large_common_part(device, rng, dtype, rule):
    """Distances stay accurate where the norms dwarf them (a shared component, near-duplicate tokens)."""
    x = vit_like_tokens((8, 196, 64), dtype, device, rng)
    w = torch.rand(8, 196, generator=rng, device=device, dtype=torch.float64).to(dtype)
    got = ops.kmedoids(x, w, 49, 3, rule)
    assert_same_clustering(x, got, reference.kmedoids(x, w, 49, 3, rule), exact=dtype == torch.float64)


def test_ties_and_duplicates(device):
    x = torch.ones(2, 10, 4, device=device, dtype=torch.float64)
    w = torch.ones(2, 10, device=device, dtype=torch.float64)
    for rule in ("paper", "medoid"):
        medoids, assignment = ops.kmedoids(x, w, 3, 3, rule)
        assert medoids.tolist() == [[0, 1, 2]] * 2  # equal weights: lower index first; empty clusters stay
        assert assignment.tolist() == [[0] * 10] * 2
    y = torch.randn(1, 6, 4, device=device, dtype=torch.float64).repeat_interleave(2, dim=1)
    v = torch.rand(1, 12, device=device, dtype=torch.float64)
    for rule in ("paper", "medoid"):
        assert_same_clustering(y, ops.kmedoids(y, v, 4, 3, rule), reference.kmedoids(y, v, 4, 3, rule), exact=True)


def test_non_contiguous_inputs(device, rng):
    x, w = inputs(4, 40, 16, torch.float64, device, rng)
    got = ops.kmedoids(non_contiguous(x), non_contiguous(w), 11)
    assert_same_clustering(x, got, reference.kmedoids(x, w, 11), exact=True)


@pytest.mark.parametrize("rule", ["paper", "medoid"])
def test_properties(device, rng, rule):
    """Medoids are input rows inside their own cluster; every token joins its nearest medoid (SPEC §13)."""
    x, w = inputs(6, 196, 32, torch.float64, device, rng)
    medoids, assignment = ops.kmedoids(x, w, 49, 3, rule)
    assert torch.equal(assignment.gather(1, medoids), torch.arange(49, device=device).expand(6, -1))
    to_medoids = pairwise_distance(x).gather(2, medoids[:, None, :].expand(-1, 196, -1))
    assert torch.equal(to_medoids.gather(2, assignment[..., None]).squeeze(-1), to_medoids.amin(-1))


def test_update_rules_by_hand():
    """Paper cost w_i Σ_j D_ij over all tokens vs the textbook medoid of the cluster's own members."""
    x = torch.tensor([[[0.0], [1.0], [2.0], [10.0], [11.0]]])
    w = torch.tensor([[1.0, 0.1, 0.2, 0.3, 0.9]])  # init medoids: token 0 (w=1.0), token 4 (w=0.9)
    # clusters {0, 1, 2} and {3, 4}. Row sums: 24, 21, 20, 44, 48.
    # paper: cluster 0 costs 24, 2.1, 4.0 -> token 1; cluster 1 costs 13.2, 43.2 -> token 3
    assert ops.kmedoids(x, w, 2, 1, "paper").centres.tolist() == [[1, 3]]
    # medoid: cluster 0 sums 3, 2, 3 -> token 1; cluster 1 sums 1, 1 -> token 3 (lower index)
    assert ops.kmedoids(x, w, 2, 1, "medoid").centres.tolist() == [[1, 3]]
    w2 = torch.tensor([[1.0, 0.5, 0.05, 0.3, 0.9]])  # paper costs 24, 10.5, 1.0 -> token 2, not the middle one
    assert ops.kmedoids(x, w2, 2, 1, "paper").centres.tolist() == [[2, 3]]
    assert ops.kmedoids(x, w2, 2, 1, "medoid").centres.tolist() == [[1, 3]]


def test_huge_n_refused_before_allocating(device):
    """As DPC-KNN: N = 10⁶ tokens refused with the workspace's size before anything is allocated."""
    n = 10**6
    x, w = torch.zeros(1, 1, 1, device=device).expand(2, n, 1), torch.zeros(1, 1, device=device).expand(2, n)
    images = min(2, torch.get_num_threads()) if device.type == "cpu" else 2
    with pytest.raises(MemoryError, match=rf"kmedoids needs {images} distance .* {images * n * n * 4 / 2**30:.1f} GiB"):
        ops.kmedoids(x, w, 2)
