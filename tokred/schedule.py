"""Keep rate and reduction blocks → the spatial token count after each stage (SPEC §0.1)."""

from collections.abc import Sequence


def check_keep_rate(keep_rate: float) -> float:
    if isinstance(keep_rate, bool) or not isinstance(keep_rate, int | float) or not 0 < keep_rate <= 1:
        raise ValueError(f"keep_rate must be a number in (0, 1], got {keep_rate!r}")
    return float(keep_rate)


def check_reduction_loc(reduction_loc: Sequence[int], depth: int, first: int = 0) -> tuple[int, ...]:
    """The reduction blocks as a tuple: strictly increasing, each in [first, depth)."""
    loc = tuple(reduction_loc)
    if any(isinstance(b, bool) or not isinstance(b, int) for b in loc):
        raise TypeError(f"reduction_loc must hold block indices (ints), got {reduction_loc!r}")
    if any(b < first or b >= depth for b in loc):
        raise ValueError(f"reduction_loc {list(loc)} must lie in [{first}, {depth - 1}] for this {depth}-block model")
    if any(a >= b for a, b in zip(loc, loc[1:], strict=False)):
        raise ValueError(f"reduction_loc must be strictly increasing, got {list(loc)}")
    return loc


def stage_targets(keep_rate: float, num_stages: int, num_patches: int) -> list[int]:
    """K_s = floor(P · r^s) for s = 1..S, computed in float64 as the study did."""
    rate = check_keep_rate(keep_rate)
    return [int(num_patches * rate**s) for s in range(1, num_stages + 1)]
