"""The saliency metric suite on two 2-D maps X, Y, e.g. the 14×14 mean token-depth maps of one model on two
datasets (SPEC §9.4, supplementary section H): KL, Jensen–Shannon (the real one and the study's variant),
Pearson and Spearman correlation, histogram intersection (SIM) and Earth Mover's Distance (EMD).

Degenerate inputs: every metric needs two finite maps of the same 2-D shape. The distribution metrics (KL,
JSD, EMD) sum-normalise, so their maps must be non-negative with a positive sum (else ValueError). PCC and SCC
are NaN when a map is constant (no correlation is defined). SIM treats a constant map as the uniform map.
"""

import functools
import math
from collections.abc import Callable

import numpy as np
import ot
from scipy.special import rel_entr
from scipy.stats import rankdata


def _pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"expected two non-empty 2-D maps of the same shape, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("the maps hold NaN or inf: pass finite maps")
    return x, y


def _distribution(m: np.ndarray) -> np.ndarray:
    """The map divided by its sum: a distribution over the cells."""
    if (m < 0).any():
        raise ValueError("a map with negative values is no distribution: pass non-negative maps (e.g. depths)")
    total = m.sum()
    if total <= 0:
        raise ValueError("a map that sums to 0 is no distribution: pass a map with some positive mass")
    return m / total


def _kl_bits(p: np.ndarray, q: np.ndarray) -> float:
    """D(p‖q) in bits, with 0·log(0/q) = 0 and inf where q = 0 < p."""
    return float(rel_entr(p, q).sum() / math.log(2))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two flat arrays as the mean product of z-scores (ddof 1); NaN if one is constant."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    za, zb = (a - a.mean()) / a.std(ddof=1), (b - b.mean()) / b.std(ddof=1)
    return float(za @ zb / (a.size - 1))


def kl(x: np.ndarray, y: np.ndarray) -> float:
    """KL(X, Y) of the saliency benchmark: D(ŷ‖x̂) = Σ ŷ log₂(ŷ / x̂) with x̂ = X/ΣX, ŷ = Y/ΣY, no epsilon:
    cells with ŷ = 0 add 0, and the result is inf if x̂ = 0 where ŷ > 0. Asymmetric: the study reports both
    KLD12 = kl(x, y) and KLD21 = kl(y, x).

    Args:
        x, y: [H, W] non-negative maps.
    """
    x, y = _pair(x, y)
    return _kl_bits(_distribution(y), _distribution(x))


def jsd(x: np.ndarray, y: np.ndarray) -> float:
    """The Jensen–Shannon divergence in bits, ½ D(x̂‖m) + ½ D(ŷ‖m) with m = (x̂ + ŷ)/2: symmetric, in [0, 1],
    the square of scipy's ``jensenshannon(..., base=2)``.

    Args:
        x, y: [H, W] non-negative maps (sum-normalised here).
    """
    p, q = map(_distribution, _pair(x, y))
    m = (p + q) / 2
    return 0.5 * _kl_bits(p, m) + 0.5 * _kl_bits(q, m)


def jsd_study(x: np.ndarray, y: np.ndarray) -> float:
    """The study's "JSD" (SPEC §9.4, kept for parity): ½ KL(x, m) + ½ KL(y, m) with :func:`kl`'s argument
    order, i.e. ½ D(m‖x̂) + ½ D(m‖ŷ), m = (x̂ + ŷ)/2. Not the Jensen–Shannon divergence (use :func:`jsd`): it is
    inf where one map is 0 and the other is not.

    Args:
        x, y: [H, W] non-negative maps (sum-normalised here).
    """
    p, q = map(_distribution, _pair(x, y))
    m = (p + q) / 2
    return 0.5 * _kl_bits(m, p) + 0.5 * _kl_bits(m, q)


def pcc(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of the maps' cells (MATLAB ``corr2`` on z-scored maps); NaN if a map is constant.

    Args:
        x, y: [H, W] maps.
    """
    x, y = _pair(x, y)
    return _pearson(x.ravel(), y.ravel())


def scc(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation of the maps' cells (ties get their average rank); NaN if a map is constant.

    Args:
        x, y: [H, W] maps.
    """
    x, y = _pair(x, y)
    return _pearson(rankdata(x.ravel()), rankdata(y.ravel()))


def _min_max(m: np.ndarray) -> np.ndarray:
    """The map scaled to [0, 1]; a constant map becomes all ones (the uniform map after sum-normalisation)."""
    low, high = m.min(), m.max()
    return np.ones_like(m) if high == low else (m - low) / (high - low)


def sim(x: np.ndarray, y: np.ndarray) -> float:
    """Histogram intersection Σ min(x̃, ỹ), each map min-max normalised to [0, 1] and then to sum 1; in [0, 1],
    1 for identical maps. A constant map counts as the uniform map.

    Args:
        x, y: [H, W] maps.
    """
    x, y = _pair(x, y)
    return float(np.minimum(_distribution(_min_max(x)), _distribution(_min_max(y))).sum())


@functools.cache
def _ground_distance(shape: tuple[int, int]) -> np.ndarray:
    """[H·W, H·W] Euclidean distance between the (row, column) coordinates of the cells, row-major."""
    coords = np.indices(shape).reshape(2, -1).T.astype(np.float64)
    distance = ot.dist(coords, coords, metric="euclidean")
    distance.setflags(write=False)
    return distance


def emd(x: np.ndarray, y: np.ndarray) -> float:
    """Earth Mover's Distance between the sum-normalised maps (POT ``ot.emd2``), the ground distance being
    the Euclidean distance between cell coordinates in units of one cell. 0 for identical maps.

    Args:
        x, y: [H, W] non-negative maps.
    """
    p, q = map(_distribution, _pair(x, y))
    return float(ot.emd2(p.ravel(), q.ravel(), _ground_distance(p.shape)))


HEATMAP_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "KL": kl,
    "JSD": jsd,
    "JSD_study": jsd_study,
    "PCC": pcc,
    "SCC": scc,
    "SIM": sim,
    "EMD": emd,
}
"""Two maps: name → f(x, y) -> float. KL is asymmetric (call it both ways for KLD12 and KLD21)."""
