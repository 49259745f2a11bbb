"""Fixed radial patterns ℓ1, ℓ2, ℓ∞: keep the patches nearest the image centre (SPEC §3.1)."""

import math
from typing import ClassVar

import torch
from torch import Tensor

from tokred.attention import AttentionExtras
from tokred.reducers.base import Details, MethodInfo, Reducer
from tokred.state import TokenState

COORDINATES = ("float32", "exact")


def radial_distance(grid: int, norm: str, coordinates: str = "float32") -> Tensor:
    """[grid²] distance of each patch centre from the image centre, in row-major order.

    ``coordinates``: "float32" (the study) takes both axes from float32 ``torch.linspace(-grid/2, grid/2, grid)``
    (−7 .. 7 for 14×14), where some equal ℓ1 radii differ in the last bit and split their shell (SPEC §3.1);
    "exact" takes the odd integers −(grid−1) .. grid−1, with ℓ2 as the squared distance (only the order matters).
    """
    if coordinates == "float32":
        c = torch.linspace(-grid / 2, grid / 2, grid, dtype=torch.float32)
    elif coordinates == "exact":
        c = torch.arange(-(grid - 1), grid, 2)
    else:
        raise ValueError(f"coordinates must be one of {COORDINATES}, got {coordinates!r}")
    y, x = torch.meshgrid(c, c, indexing="ij")
    if norm == "l1":
        return (x.abs() + y.abs()).flatten()
    if norm == "l2":
        squared = x.square() + y.square()
        return (squared.sqrt() if coordinates == "float32" else squared).flatten()
    return torch.maximum(x.abs(), y.abs()).flatten()


def shell_threshold(distance: Tensor, target: int) -> Tensor:
    """The radius whose disc count is nearest ``target`` (the smaller radius on ties)."""
    radii = distance.unique()  # ascending
    counts = torch.stack([(distance <= r).sum() for r in radii])
    return radii[(counts - target).abs().argmin()]


class Radial(Reducer):
    """Pre-block: keep the patches inside the radial shell whose size is nearest the stage target; the kept
    sets are nested and the same for every image. Tokens are gathered, not masked (same class-token output,
    less compute). ``keep`` holds this stage's indices among the previous stage's kept patches. One subclass
    per norm.

    Options:
        coordinates: "float32" (the study: float32 linspace coordinates, whose rounding splits some ℓ1 shells, so
            ℓ1 at r = 0.5 keeps 92/40/24) or "exact" (integer coordinates: ℓ1 keeps 84/40/24). ℓ2 and ℓ∞ keep
            the same patches either way on the 14×14 grid.
    """

    norm: ClassVar[str]
    keep: Tensor

    def __init__(self, dim: int, target: int, keep: Tensor) -> None:
        super().__init__(dim, len(keep))
        self.register_buffer("keep", keep, persistent=False)

    @classmethod
    def stages(  # type: ignore[override]
        cls, dim: int, targets: list[int], num_patches: int, coordinates: str = "float32"
    ) -> list[Reducer]:
        grid = math.isqrt(num_patches)
        if grid * grid != num_patches:
            raise ValueError(f"radial patterns need a square patch grid, got {num_patches} patches")
        distance = radial_distance(grid, cls.norm, coordinates)
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
