"""Comparisons shared by the operator tests."""

import torch
from torch import Tensor

from tokred.reference.distance import pairwise_distance

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def randn(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, rng: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=rng, device=device, dtype=torch.float64).to(dtype)


def vit_like_tokens(
    shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device, rng: torch.Generator
) -> Tensor:
    """Tokens [B, N, C] like a ViT's: a large part common to the image (30× the rest), and 20 groups of
    near-duplicates (a flat image region) 0.01 apart — where |a|² + |b|² - 2ab cancels."""
    b, n, c = shape
    common = 30 * torch.randn(b, 1, c, generator=rng, device=device, dtype=torch.float64)
    groups = torch.randn(b, 20, c, generator=rng, device=device, dtype=torch.float64)
    member = torch.randint(0, 20, (b, n), generator=rng, device=device)
    jitter = 0.01 * torch.randn(b, n, c, generator=rng, device=device, dtype=torch.float64)
    return (common + groups.gather(1, member[..., None].expand(-1, -1, c)) + jitter).to(dtype)


def scores_with_spreads(
    spreads: list[float], k: int, n: int, eps: float, dtype: torch.dtype, device: torch.device, rng: torch.Generator
) -> Tensor:
    """[len(spreads), k, n] scores whose image i has z = scores / eps spread over exactly spreads[i] (centred on 0)."""
    x = randn((len(spreads), k, n), torch.float64, device, rng)
    low, high = x.amin((1, 2), keepdim=True), x.amax((1, 2), keepdim=True)
    spread = torch.tensor(spreads, dtype=torch.float64, device=device)[:, None, None]
    return ((x - low) / (high - low) - 0.5).mul(spread * eps).to(dtype)


def non_contiguous(t: Tensor) -> Tensor:
    """The same values in a tensor whose last dimension is strided."""
    wide = torch.stack([t, torch.zeros_like(t)], dim=-1)
    out = wide[..., 0]
    assert not out.is_contiguous()
    return out


def assert_same_clustering(x: Tensor, got: tuple[Tensor, Tensor], want: tuple[Tensor, Tensor], exact: bool) -> None:
    """Centres and assignments equal the reference's.

    With ``exact`` (float64 inputs) they must be identical. Otherwise (float32 arithmetic in another
    summation order) a few images may take another branch at a near-tie: at most 5 % of the images may
    choose other centres, and within the others an assignment may differ only where the two centres are
    equally near (within 1e-4 relative) in float64.
    """
    (got_c, got_a), (want_c, want_a) = got, want
    assert got_c.shape == want_c.shape and got_a.shape == want_a.shape
    assert got_c.dtype == got_a.dtype == torch.long
    if exact:
        assert torch.equal(got_c, want_c) and torch.equal(got_a, want_a)
        return
    same_centres = (got_c == want_c).all(-1)
    assert (~same_centres).sum() <= max(1, 0.05 * len(same_centres)), "centres differ in too many images"
    dist = pairwise_distance(x.double())
    for b in torch.nonzero(same_centres).flatten().tolist():
        differ = torch.nonzero(got_a[b] != want_a[b]).flatten()
        for i in differ.tolist():
            d_got = dist[b, i, got_c[b, got_a[b, i]]]
            d_want = dist[b, i, want_c[b, want_a[b, i]]]
            assert torch.isclose(d_got, d_want, rtol=1e-4, atol=1e-6), f"image {b} token {i}: not a near-tie"
