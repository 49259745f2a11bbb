"""Fixed radial patterns ℓ1, ℓ2, ℓ∞: keep the patches nearest the image centre (SPEC §3.1)."""

import math
from typing import ClassVar

import torch
from torch import Tensor

from tokred.attention import AttentionExtras
from tokred.reducers.base import Details, MethodInfo, Reducer
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
    less compute). ``keep`` holds this stage's indices among the previous stage's kept patches. One subclass
    per norm."""

    norm: ClassVar[str]
    keep: Tensor

    def __init__(self, dim: int, target: int, keep: Tensor) -> None:
        super().__init__(dim, len(keep))
        self.register_buffer("keep", keep, persistent=False)

    @classmethod
    def stages(cls, dim: int, targets: list[int], num_patches: int) -> list[Reducer]:  # type: ignore[override]
        grid = math.isqrt(num_patches)
        if grid * grid != num_patches:
            raise ValueError(f"radial patterns need a square patch grid, got {num_patches} patches")
        distance = radial_distance(grid, cls.norm)
        previous = torch.arange(num_patches)
        stages: list[Reducer] = []
        for target in targets:
            inside = distance[previous] <= shell_threshold(distance, target)
            stages.append(cls(dim, target, torch.nonzero(inside).flatten()))
            previous = previous[inside]
        return stages

    def forward(self, x: Tensor, state: TokenState, extras: AttentionExtras) -> tuple[Tensor, TokenState, Details]:
        x, state = state.select(x, self.keep.expand(x.shape[0], -1))
        return x, state, {}

    def extra_repr(self) -> str:
        return f"norm={self.norm}, keeps={self.target}"


class L1Pattern(Radial):
    """The ℓ1 (diamond) pattern."""

    norm = "l1"
    info = MethodInfo("ℓ1", "fixed pruning", keeps_patches=True, any_rate=True, input_dependent=False)


class L2Pattern(Radial):
    """The ℓ2 (disc) pattern."""

    norm = "l2"
    info = MethodInfo("ℓ2", "fixed pruning", keeps_patches=True, any_rate=True, input_dependent=False)


class LinfPattern(Radial):
    """The ℓ∞ (square) pattern."""

    norm = "linf"
    info = MethodInfo("ℓ∞", "fixed pruning", keeps_patches=True, any_rate=True, input_dependent=False)
