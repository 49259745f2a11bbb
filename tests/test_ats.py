import pytest
import torch

from tokred import ops, reference
from tokred.reference.ats import ats_quantiles

from helpers import FLOAT_DTYPES, non_contiguous

PAPER_K = [49, 12, 3, 98, 24, 137, 96, 67, 176, 158, 142]  # floor(196 r^s), SPEC §0.1


def scores_and_mask(batch: int, n: int, device, rng, masked: float = 0.0, dtype=torch.float32):
    scores = torch.rand(batch, n, generator=rng, device=device, dtype=torch.float64).pow(3).to(dtype)
    mask = torch.rand(batch, n, generator=rng, device=device) >= masked
    return scores, mask


def assert_same_sample(got: ops.AtsSample, want: tuple) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and torch.equal(g.cpu(), w.cpu())


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("rule", ["nearest", "inverse"])
@pytest.mark.parametrize("batch,n,k", [(64, 196, 98), (1, 196, 49), (5, 17, 9), (3, 31, 1), (4, 12, 12), (2, 5, 40)])
def test_matches_reference(device, rng, dtype, rule, batch, n, k):
    scores, mask = scores_and_mask(batch, n, device, rng, dtype=dtype)
    assert_same_sample(ops.ats_sample(scores, mask, k, rule), reference.ats_sample(scores, mask, k, rule))


@pytest.mark.parametrize("rule", ["nearest", "inverse"])
def test_masked_tokens_are_never_sampled(device, rng, rule):
    scores, mask = scores_and_mask(16, 196, device, rng, masked=0.4)
    mask[3] = False  # an image with nothing left
    got = ops.ats_sample(scores, mask, 98, rule)
    assert_same_sample(got, reference.ats_sample(scores, mask, 98, rule))
    picked = got.ids.clamp_min(0)
    assert mask.gather(1, picked)[got.mask].all()
    assert got.counts[3] == 0 and not got.mask[3].any()


def test_ties_and_degenerate_scores(device, rng):
    n = 40
    flat = torch.ones(2, n, device=device)  # uniform scores: every token equally likely
    zero = torch.zeros(2, n, device=device)  # no mass at all
    negative = -torch.rand(2, n, generator=rng, device=device)  # counted as 0
    steps = torch.zeros(2, n, device=device)
    steps[:, ::7] = 1.0  # long runs of equal CDF values
    for scores in (flat, zero, negative, steps):
        for rule in ("nearest", "inverse"):
            assert_same_sample(ops.ats_sample(scores, None, 13, rule), reference.ats_sample(scores, None, 13, rule))


def test_non_contiguous_inputs(device, rng):
    scores, mask = scores_and_mask(8, 50, device, rng, masked=0.2)
    got = ops.ats_sample(non_contiguous(scores), non_contiguous(mask), 20)
    assert_same_sample(got, reference.ats_sample(scores, mask, 20))


def test_output_invariants(device, rng):
    scores, _ = scores_and_mask(32, 196, device, rng)
    for k in PAPER_K:
        ids, mask, counts = ops.ats_sample(scores, None, k)
        assert ids.shape == mask.shape == (32, k)
        assert (counts <= k).all() and (counts >= 1).all()
        assert torch.equal(mask.sum(-1), counts) and torch.equal(mask, ids >= 0)
        kept = torch.where(mask, ids, 10**6)
        assert (kept[:, 1:] > kept[:, :-1])[mask[:, 1:]].all(), "ids must be unique and ascending"
        assert (ids[mask] < 196).all()


def test_quantile_grid_has_k_points():
    """The study requests K + 1 samples but its grid has K points (SPEC §3.5, §13)."""
    for k in PAPER_K:
        q = ats_quantiles(k, torch.device("cpu"))
        assert len(q) == k and q[0] > 0 and q[-1] < 1
        torch.testing.assert_close(
            q, torch.tensor([(2 * i + 1) / (2 * (k + 1)) for i in range(k)], dtype=torch.float64)
        )


def test_rules_by_hand():
    # CDF ≈ [0.1, 0.2, 0.6, 1.0]; K = 3 gives q = 1/8, 3/8, 5/8.
    scores = torch.tensor([[0.1, 0.1, 0.4, 0.4]])
    # nearest CDF value: 0.125 -> 0.1 (0); 0.375 -> 0.2 (1), 0.175 away vs 0.225; 0.625 -> 0.6 (2)
    assert ops.ats_sample(scores, None, 3, "nearest").ids.tolist() == [[0, 1, 2]]
    # first CDF value reaching q: 0.2 (1), 0.6 (2), 1.0 (3)
    assert ops.ats_sample(scores, None, 3, "inverse").ids.tolist() == [[1, 2, 3]]
    # duplicates collapse: all three quantiles land on the one heavy token
    heavy = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    assert ops.ats_sample(heavy, None, 3, "inverse").ids.tolist() == [[1, -1, -1]]
    # the study's nearest rule can keep a token without mass: CDF [0, 1, 1, 1], q = 1/8 and 3/8 are nearer 0
    assert ops.ats_sample(heavy, None, 3, "nearest").ids.tolist() == [[0, 1, -1]]


def test_batch_independence(device, rng):
    """Each image's sample depends on that image alone (SPEC §13)."""
    scores, mask = scores_and_mask(12, 196, device, rng, masked=0.3)
    whole = ops.ats_sample(scores, mask, 98)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0)).to(device)
    permuted = ops.ats_sample(scores[perm], mask[perm], 98)
    for g, w in zip(permuted, whole, strict=True):
        assert torch.equal(g, w[perm])
    halves = [ops.ats_sample(scores[s], mask[s], 98) for s in (slice(0, 5), slice(5, 12))]
    for i in range(3):
        assert torch.equal(torch.cat([h[i] for h in halves]), whole[i])


def test_trim_to_batch_max(device, rng):
    scores, _ = scores_and_mask(6, 196, device, rng)
    sample = ops.ats_sample(scores, None, 142)
    trimmed = ops.trim_to_batch_max(sample)
    width = int(sample.counts.max())
    assert trimmed.ids.shape == (6, width) and torch.equal(trimmed.ids, sample.ids[:, :width])
    assert not sample.mask[:, width:].any()


@pytest.mark.parametrize("rule", ["nearest", "inverse"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_zeros_and_masks_together(device, rng, dtype, rule):
    """Few distinct scores (many equal CDF values), zero and negative scores, masked runs, empty images and K up to
    3 N: the sample is the reference's, image by image."""
    batch, n = 24, 23
    levels = torch.tensor([-0.5, 0.0, 0.0, 0.25, 1.0], dtype=torch.float64, device=device)
    scores = levels[torch.randint(len(levels), (batch, n), generator=rng, device=device)].to(dtype)
    mask = torch.rand(batch, n, generator=rng, device=device) >= torch.linspace(0, 1, batch, device=device)[:, None]
    for k in (1, 2, 7, n, 3 * n):
        assert_same_sample(ops.ats_sample(scores, mask, k, rule), reference.ats_sample(scores, mask, k, rule))


def test_kernel_refusals_are_typed_errors(device):
    """The wrapper leaves the checks to the kernel; its refusals still come as the wrapper's typed errors."""
    scores = torch.rand(2, 10, device=device)
    with pytest.raises(TypeError, match="num_samples must be an int, got bool"):
        ops.ats_sample(scores, None, True)
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        ops.ats_sample(scores, scores, 3)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        ops.ats_sample(scores, None, 0)
    with pytest.raises(ValueError, match="rule must be one of"):
        ops.ats_sample(scores, None, 3, "median")
    with pytest.raises(ValueError, match="mask is on meta"):
        ops.ats_sample(scores, torch.ones(2, 10, dtype=torch.bool, device="meta"), 3)
