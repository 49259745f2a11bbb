import math

import pytest
import torch

from tokred import ops, reference
from tokred.reference.distance import pairwise_distance

from helpers import FLOAT_DTYPES, assert_same_clustering, non_contiguous, randn, vit_like_tokens

SHAPES = [(16, 196, 64, 98), (1, 196, 32, 49), (3, 17, 8, 5), (2, 33, 16, 1), (2, 20, 8, 20), (4, 4, 8, 2)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch,n,c,k", SHAPES)
def test_matches_reference(device, rng, dtype, batch, n, c, k):
    x = randn((batch, n, c), dtype, device, rng)
    got = ops.dpc_knn(x, k)
    assert_same_clustering(x, got, reference.dpc_knn(x, k), exact=dtype == torch.float64)


@pytest.mark.parametrize("k_neighbors", [1, 5, 30])
def test_masked_tokens_and_neighbours(device, rng, k_neighbors):
    x = randn((8, 50, 16), torch.float64, device, rng)
    mask = torch.rand(8, 50, generator=rng, device=device) > 0.3
    mask[:, :12] = True  # at least 12 valid tokens per image
    got = ops.dpc_knn(x, 10, k_neighbors, mask)
    assert_same_clustering(x, got, reference.dpc_knn(x, 10, k_neighbors, mask), exact=True)
    assert (got.assignment[~mask] == -1).all() and (got.assignment[mask] >= 0).all()
    assert mask.gather(1, got.centres).all(), "centres are valid tokens while enough remain"


def test_noise_tie_break_is_an_input(device, rng):
    x = randn((4, 30, 8), torch.float64, device, rng)
    noise = 1e-6 * torch.rand(4, 30, generator=rng, device=device, dtype=torch.float64)
    got = ops.dpc_knn(x, 7, noise=noise)
    assert_same_clustering(x, got, reference.dpc_knn(x, 7, noise=noise), exact=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equal_tokens_break_ties_by_index(device, dtype):
    """All tokens equal: every density ties, so the lowest indices win and every token joins centre 0."""
    x = torch.ones(2, 9, 4, device=device, dtype=dtype)
    centres, assignment = ops.dpc_knn(x, 3)
    assert centres.tolist() == [[0, 1, 2]] * 2
    assert assignment.tolist() == [[0, 1, 2] + [0] * 6] * 2
    # duplicated pairs: each pair shares a density and a position
    y = torch.randn(1, 5, 4, device=device, dtype=dtype).repeat_interleave(2, dim=1)
    assert_same_clustering(y, ops.dpc_knn(y, 4), reference.dpc_knn(y, 4), exact=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tokens_with_a_large_common_part(device, rng, dtype):
    """Distances stay accurate where the norms dwarf them (a shared component, near-duplicate tokens)."""
    x = vit_like_tokens((8, 196, 64), dtype, device, rng)
    assert_same_clustering(x, ops.dpc_knn(x, 49), reference.dpc_knn(x, 49), exact=dtype == torch.float64)


def test_non_contiguous_inputs(device, rng):
    x = randn((4, 40, 16), torch.float64, device, rng)
    got = ops.dpc_knn(non_contiguous(x), 11)
    assert_same_clustering(x, got, reference.dpc_knn(x, 11), exact=True)


def test_properties(device, rng):
    """Centres join themselves and every other token joins its nearest centre (SPEC §13)."""
    x = randn((6, 196, 32), torch.float64, device, rng)
    centres, assignment = ops.dpc_knn(x, 49)
    ks = torch.arange(49, device=device).expand(6, -1)
    assert torch.equal(assignment.gather(1, centres), ks)
    sorted_centres = centres.sort(-1).values
    assert (sorted_centres[:, 1:] > sorted_centres[:, :-1]).all(), "centres are distinct"
    to_centres = pairwise_distance(x).gather(2, centres[:, None, :].expand(-1, 196, -1))  # [B, N, K]
    chosen = to_centres.gather(2, assignment[..., None]).squeeze(-1)
    assert torch.allclose(chosen, to_centres.amin(-1))


def test_density_peaks_by_hand():
    """Two tight groups far apart: their densest members are the two centres."""
    a = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1]])
    b = a + 10.0
    x = torch.cat([a, b, torch.tensor([[5.0, 5.0]])])[None]  # one outlier in the middle
    centres, assignment = ops.dpc_knn(x, 2, k_neighbors=2)
    assert sorted(centres[0].tolist()) == [0, 3]  # the corner points have both group-mates nearest
    assert assignment[0, :3].unique().numel() == 1 and assignment[0, 3:6].unique().numel() == 1
    assert assignment[0, 0] != assignment[0, 3]
    # the scale is 1/sqrt(C): the same points in 8 dims (zero-padded) have the same clustering
    wide = torch.nn.functional.pad(x, (0, 6)) * math.sqrt(4)
    assert torch.equal(ops.dpc_knn(wide, 2, k_neighbors=2).assignment, assignment)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_huge_n_refused_before_allocating(device, dtype):
    """N = 10⁶ tokens need 10¹² distances per image, beyond any device's memory: a MemoryError stating the
    workspace, raised before anything is allocated (x is a broadcast view of one element)."""
    n = 10**6
    x = torch.zeros(1, 1, 1, device=device, dtype=dtype).expand(2, n, 1)
    images = min(2, torch.get_num_threads()) if device.type == "cpu" else 2
    gib = images * n * n * (8 if dtype == torch.float64 else 4) / 2**30
    with pytest.raises(MemoryError, match=rf"{images} distance matrices .* {gib:.1f} GiB at once for B = 2, N = {n}"):
        ops.dpc_knn(x, 2)


def test_workspace_rule(monkeypatch):
    """Refused only when the matrices held at once exceed the device's memory: one per CPU thread in the CPU
    kernel, one per image in the reference (and the CUDA kernel)."""
    x = torch.randn(8, 64, 4)
    matrix = 64 * 64 * 4
    monkeypatch.setattr(ops, "_memory_and_threads", lambda device: (3 * matrix, 2))
    assert_same_clustering(x, ops.dpc_knn(x, 4), reference.dpc_knn(x, 4), exact=False)
    monkeypatch.setattr(ops, "has_kernel", lambda op, device: False)
    monkeypatch.setattr(ops, "_warned_fallback", True)
    with pytest.raises(MemoryError, match="8 distance matrices .*one per image"):
        ops.dpc_knn(x, 4)
    monkeypatch.undo()
    monkeypatch.setattr(ops, "_memory_and_threads", lambda device: (matrix, 2))
    with pytest.raises(MemoryError, match="2 distance matrices .*one per CPU thread"):
        ops.dpc_knn(x, 4)
