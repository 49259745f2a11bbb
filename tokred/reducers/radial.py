"""Fixed radial patterns ℓ1, ℓ2, ℓ∞: keep the patches nearest the image centre (SPEC §3.1)."""

import math

import torch
from torch import Tensor

from tokred.attention import AttentionExtras
from tokred.reducers.base import Details, Reducer
from tokred.state import TokenState


def radial_distance(grid: int, norm: str) -> Tensor:
    """[grid²] distance of each patch centre from the image centre in row-major order, exact: coordinates
    are the odd integers -(grid-1) .. grid-1 (ℓ2 as the squared distance; only the order matters)."""
    c = torch.arange(-(grid - 1), grid, 2)
    y, x = torch.meshgrid(c, c, indexing="ij")
    if norm == "l1":
        return (x.abs() + y.abs()).flatten()
    if norm == "l2":
        return (x.square() + y.square()).flatten()
    return torch.maximum(x.abs(), y.abs()).flatten()


def shell_threshold(distance: Tensor, target: int) -> int:
    """The radius whose disc count is nearest ``target`` (the smaller radius on ties)."""
    radii = distance.unique()  # ascending
    counts = torch.stack([(distance <= r).sum() for r in radii])
    return int(radii[(counts - target).abs().argmin()])


class Radial(Reducer):
    """Pre-block: keep the patches inside the radial shell whose size is nearest the stage target; the kept
    sets are nested and the same for every image. Tokens are gathered, not masked (same class-token output,
    less compute). ``keep`` holds this stage's indices among the previous stage's kept patches."""

    keep: Tensor

    def __init__(self, dim: int, target: int, keep: Tensor, norm: str) -> None:
        super().__init__(dim, len(keep))
        self.norm = norm
        self.register_buffer("keep", keep, persistent=False)

    @classmethod
    def stages(cls, dim: int, targets: list[int], num_patches: int, norm: str = "l2") -> list[Reducer]:  # type: ignore[override]
        if norm not in ("l1", "l2", "linf"):
            raise ValueError(f"norm must be 'l1', 'l2' or 'linf', got {norm!r}")
        grid = math.isqrt(num_patches)
        if grid * grid != num_patches:
            raise ValueError(f"radial patterns need a square patch grid, got {num_patches} patches")
        distance = radial_distance(grid, norm)
        previous = torch.arange(num_patches)
        stages: list[Reducer] = []
        for target in targets:
            inside = distance[previous] <= shell_threshold(distance, target)
            stages.append(cls(dim, target, torch.nonzero(inside).flatten(), norm))
            previous = previous[inside]
        return stages

    def forward(self, x: Tensor, state: TokenState, extras: AttentionExtras) -> tuple[Tensor, TokenState, Details]:
        x, state = state.select(x, self.keep.expand(x.shape[0], -1))
        return x, state, {}

    def extra_repr(self) -> str:
        return f"norm={self.norm}, keeps={self.target}"
