"""Keep rate and reduction blocks → the spatial token count after each stage (SPEC §0.1)."""

import math
import numbers
from collections.abc import Iterable, Sequence


def check_keep_rate(keep_rate: float) -> float:
    """``keep_rate`` as a float in (0, 1]; any real number type is welcome (numpy scalars included)."""
    if isinstance(keep_rate, bool) or not isinstance(keep_rate, numbers.Real) or not 0 < keep_rate <= 1:
        raise ValueError(
            f"keep_rate must be a number in (0, 1], the fraction each stage keeps of the one before (e.g. 0.7); "
            f"got {keep_rate!r}"
        )
    return float(keep_rate)


def check_reduction_loc(reduction_loc: Sequence[int], depth: int, first: int = 0) -> tuple[int, ...]:
    """The reduction blocks (any iterable of integers: numpy's welcome) as a tuple of ints: strictly increasing,
    each in [first, depth)."""
    if isinstance(reduction_loc, str | bytes) or not isinstance(reduction_loc, Iterable):
        raise TypeError(
            f"reduction_loc must be a sequence of block indices, e.g. (3, 6, 9), or (3,) for one stage at block 3; "
            f"got {reduction_loc!r}"
        )
    items = list(reduction_loc)
    if any(isinstance(b, bool) or not isinstance(b, numbers.Integral) for b in items):
        raise TypeError(f"reduction_loc must hold block indices (ints), e.g. (3, 6, 9); got {reduction_loc!r}")
    loc = tuple(int(b) for b in items)
    if any(b < first or b >= depth for b in loc):
        raise ValueError(f"reduction_loc {list(loc)} must lie in [{first}, {depth - 1}] for this {depth}-block model")
    if any(a >= b for a, b in zip(loc, loc[1:], strict=False)):
        raise ValueError(f"reduction_loc must be strictly increasing, got {list(loc)}")
    return loc


def stage_targets(keep_rate: float, num_stages: int, num_patches: int) -> list[int]:
    """K_s = floor(P · r^s) for s = 1..S, computed in float64 as the study did."""
    rate = check_keep_rate(keep_rate)
    return [int(num_patches * rate**s) for s in range(1, num_stages + 1)]


def smallest_keep_rate(num_stages: int, num_patches: int) -> float:
    """The smallest keep rate, to three decimals, whose last stage keeps at least one token."""
    rate = math.ceil(1000 * num_patches ** (-1 / num_stages)) / 1000
    while stage_targets(rate, num_stages, num_patches)[-1] < 1:
        rate += 0.001
    return rate


def check_schedule(keep_rate: float, reduction_loc: Sequence[int], num_patches: int) -> list[int]:
    """The stage targets K_s, refusing a keep rate whose schedule empties a stage."""
    targets = stage_targets(keep_rate, len(reduction_loc), num_patches)
    if targets and targets[-1] < 1:
        counts = "/".join(map(str, targets))
        raise ValueError(
            f"keep_rate {keep_rate} keeps {counts} of {num_patches} patches at blocks {list(reduction_loc)}: "
            f"every stage must keep a token; with {len(targets)} stages the smallest keep_rate that does is "
            f"{smallest_keep_rate(len(targets), num_patches):g} (or reduce at fewer blocks)"
        )
    return targets
