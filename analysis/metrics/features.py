"""Similarity of two models' CLS features on the same images (SPEC §9.5, supplementary section J): orthogonal
Procrustes, linear CKA, CCA (mean and mean squared correlation), PWCCA in both directions, and SVCCA.

Inputs are CLS matrices as extracted, features × images: ``a`` [a, n] and ``b`` [b, n], the same n images in
the same order. Every metric first applies :func:`normalise` to each matrix, computes in float64 and needs
a < n and b < n (else ValueError: extract more images). The normalised pair enters every metric only through
three Gram matrices, AAᵀ [a, a], BBᵀ [b, b] and ABᵀ [a, b], so :func:`compare_features` computes them once for
all metrics of a pair (one O((a + b)² n) pass instead of one per metric).

Distances (0 for identical inputs): Procrustes, CKA, PWCCA, PWCCA_reverse, SVCCA.
Similarities (1 for identical inputs): mean_cca_corr, mean_sq_cca_corr (as the study's columns of these names).
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

SVCCA_KEEP = 0.99
"""Fraction of each matrix's variance that SVCCA keeps (Raghu et al., 2017)."""


def normalise(x: ArrayLike) -> np.ndarray:
    """Centre each feature over the images, then divide by the Frobenius norm of the whole matrix.

    Args:
        x: [c, n] features × images.

    Returns:
        [c, n] float64 with zero row means and Frobenius norm 1 (idempotent).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"expected a non-empty 2-D CLS matrix (features × images), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("the CLS features hold NaN or inf: re-extract them (e.g. in float32 rather than float16)")
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x)
    if norm == 0:
        raise ValueError("every feature is constant over the images: no similarity is defined; check the extraction")
    return x / norm


@dataclass(frozen=True)
class CCAResult:
    """Canonical correlation analysis of a normalised pair A [a, n], B [b, n] of ranks r_a, r_b.

    Attributes:
        rho: [min(a, b)] canonical correlations, descending, in [0, 1]; 0 past min(r_a, r_b).
        weights_a: [r_a] PWCCA projection weights of A's canonical variates h_i (unit-norm n-vectors, in the
            order of ``rho``): α_i ∝ Σ_j |⟨h_i, A_j⟩| over A's features j, normalised to sum to 1.
        weights_b: [r_b] the same for B.
    """

    rho: np.ndarray
    weights_a: np.ndarray
    weights_b: np.ndarray


class _Basis(NamedTuple):
    """A Gram matrix [c, c] of c features over the images, factorised as diag(s) V diag(λ) Vᵀ diag(s) up to its
    numerical rank r: values λ [r] > 0 descending, orthonormal vectors V [c, r], feature scales s [c] ≥ 0."""

    values: np.ndarray
    vectors: np.ndarray
    scales: np.ndarray

    def whitening(self) -> np.ndarray:
        """[c, r] W with Wᵀ G W = I: the pseudo-inverse square root Σ^{-1/2} of SPEC, in this basis."""
        inverse = np.divide(1.0, self.scales, out=np.zeros_like(self.scales), where=self.scales > 0)
        return inverse[:, None] * self.vectors / np.sqrt(self.values)

    def root(self) -> np.ndarray:
        """[c, r] the factor whose product with its transpose is G (= G W: the features' inner products with
        the whitened directions)."""
        return self.scales[:, None] * self.vectors * np.sqrt(self.values)


def _basis(gram: np.ndarray, n: int, standardise: bool) -> _Basis:
    """Eigen-decomposition of a Gram matrix [c, c] over n images, largest first, without the eigenvalues within
    rounding of 0 (≤ λ_max · max(c, n) · eps: SPEC's clip of negatives, made rank-safe). With ``standardise``,
    the correlation matrix is decomposed instead: CCA does not depend on the features' scales, and features of
    very different scales (e.g. a few massive CLS dimensions) no longer square the covariance's condition number
    into rounding."""
    scales = np.sqrt(np.diag(gram)) if standardise else np.ones(gram.shape[0])
    inverse = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales > 0)
    values, vectors = np.linalg.eigh(inverse[:, None] * gram * inverse[None, :])
    values, vectors = values[::-1], vectors[:, ::-1]
    rank = int(np.sum(values > values[0] * max(gram.shape[0], n) * np.finfo(np.float64).eps))
    return _Basis(values[:rank], vectors[:, :rank], scales)


def _projection_weights(root: np.ndarray, rotation: np.ndarray, paired: int) -> np.ndarray:
    """PWCCA weights α [r] from a basis root [c, r] (:meth:`_Basis.root`) and the rotation [r, r] of the whitened
    directions onto the canonical ones, of which the first ``paired`` have a correlation.

    The features' inner products with the unit-norm variates XᵀW R are X Xᵀ W R = root · R (no n-sized product).
    The variates past ``paired`` (correlation 0) are any orthonormal basis of their span, and their share of the
    normaliser depends on that basis; they are taken as the principal axes of the features' inner products in
    that span, so the result does not depend on the SVD's arbitrary choice.
    """
    products = root @ rotation
    if products.shape[1] > paired:
        _, _, axes = np.linalg.svd(products[:, paired:], full_matrices=False)
        products[:, paired:] = products[:, paired:] @ axes.T
    weights = np.abs(products).sum(axis=0)
    return weights / weights.sum()


def _canonical(cross: np.ndarray, basis_a: _Basis, basis_b: _Basis, size: int) -> CCAResult:
    """CCA from ABᵀ [a, b] and the two bases: the SVD of T = Σ_A^{-1/2} ABᵀ Σ_B^{-1/2} (pseudo-inverse square
    roots), taken in the bases, gives ρ and the rotations; ``size`` entries of ρ are returned (zero-padded)."""
    rot_a, rho, rot_b_t = np.linalg.svd(basis_a.whitening().T @ cross @ basis_b.whitening())
    return CCAResult(
        rho=np.pad(np.clip(rho, 0.0, 1.0), (0, size - rho.size)),
        weights_a=_projection_weights(basis_a.root(), rot_a, rho.size),
        weights_b=_projection_weights(basis_b.root(), rot_b_t.T, rho.size),
    )


def _leading(basis: _Basis, keep: float) -> _Basis:
    """The fewest leading directions of an unstandardised basis whose variance reaches ``keep`` of the total."""
    explained = np.cumsum(basis.values) / basis.values.sum()
    k = min(int(np.searchsorted(explained, keep)) + 1, basis.values.size)
    return _Basis(basis.values[:k], basis.vectors[:, :k], basis.scales)


def _pwcca_distance(weights: np.ndarray, rho: np.ndarray) -> float:
    """1 − Σ α_i ρ_i over the first min(len) terms, α normalised over all of one side's variates (the study's)."""
    dim = min(weights.size, rho.size)
    return float(1.0 - weights[:dim] @ rho[:dim])


class _Pair:
    """A validated, normalised pair reduced to its Gram matrices, with its CCA computed once on demand."""

    def __init__(self, a: ArrayLike, b: ArrayLike) -> None:
        a, b = normalise(a), normalise(b)
        (rows_a, n), (rows_b, n_b) = a.shape, b.shape
        if n != n_b:
            raise ValueError(
                f"A has {n} images (columns) and B has {n_b}: extract both models' CLS features on the same images, "
                "as features × images"
            )
        if max(rows_a, rows_b) >= n:
            raise ValueError(
                f"{n} images are too few for {max(rows_a, rows_b)} features (A is {rows_a} × {n}, B is {rows_b} × {n}):"
                f" the metrics need more images than features; extract at least {max(rows_a, rows_b) + 1} images "
                "(and pass the matrices as features × images)"
            )
        self.n = n
        self.aa, self.bb, self.ab = a @ a.T, b @ b.T, a @ b.T

    @cached_property
    def cca(self) -> CCAResult:
        basis_a, basis_b = _basis(self.aa, self.n, standardise=True), _basis(self.bb, self.n, standardise=True)
        return _canonical(self.ab, basis_a, basis_b, min(self.aa.shape[0], self.bb.shape[0]))

    def procrustes(self) -> float:
        return float(np.clip(2.0 - 2.0 * np.linalg.norm(self.ab, ord="nuc"), 0.0, 2.0))

    def linear_cka(self) -> float:
        similarity = np.sum(self.ab**2) / (np.linalg.norm(self.aa) * np.linalg.norm(self.bb))
        return float(np.clip(1.0 - similarity, 0.0, 1.0))

    def mean_cca_corr(self) -> float:
        return float(self.cca.rho.mean())

    def mean_sq_cca_corr(self) -> float:
        return float(np.mean(self.cca.rho**2))

    def pwcca(self) -> float:
        return _pwcca_distance(self.cca.weights_a, self.cca.rho)

    def pwcca_reverse(self) -> float:
        return _pwcca_distance(self.cca.weights_b, self.cca.rho)

    def svcca(self, keep: float = SVCCA_KEEP) -> float:
        if not 0 < keep <= 1:
            raise ValueError(f"keep is the fraction of variance SVCCA keeps, in (0, 1]; got {keep}")
        basis_a, basis_b = (_leading(_basis(gram, self.n, standardise=False), keep) for gram in (self.aa, self.bb))
        reduced = _canonical(self.ab, basis_a, basis_b, min(basis_a.values.size, basis_b.values.size))
        return float(1.0 - reduced.rho.mean())


def cca(a: ArrayLike, b: ArrayLike) -> CCAResult:
    """Canonical correlation analysis of two CLS matrices (SPEC §9.5), after :func:`normalise`.

    Σ_A = AAᵀ and Σ_B = BBᵀ are eigen-decomposed (as correlation matrices, which leaves CCA unchanged and keeps
    features of very different scales accurate); eigenvalues within rounding of 0 are dropped (the pseudo-inverse
    square roots), and ρ are the singular values of Σ_A^{-1/2} ABᵀ Σ_B^{-1/2}. Symmetric: ``cca(b, a)`` has the
    same ρ with the weights swapped.

    Args:
        a: [a, n] features × images.
        b: [b, n] features × images, the same images.
    """
    return _Pair(a, b).cca


def procrustes(a: ArrayLike, b: ArrayLike) -> float:
    """Orthogonal Procrustes distance ‖A‖² + ‖B‖² − 2‖ABᵀ‖_* = 2 − 2‖ABᵀ‖_* of the normalised matrices: the
    smallest squared distance between Aᵀ and Bᵀ under an orthogonal map (zero-padding the narrower one).
    Symmetric, in [0, 2]; 0 iff the features agree up to rotation, scale and offsets.

    Args:
        a: [a, n] features × images.
        b: [b, n] features × images, the same images.
    """
    return _Pair(a, b).procrustes()


def linear_cka(a: ArrayLike, b: ArrayLike) -> float:
    """Linear CKA distance 1 − ‖BAᵀ‖_F² / (‖AAᵀ‖_F ‖BBᵀ‖_F) of the normalised matrices. Symmetric, in [0, 1];
    0 iff the features agree up to rotation, scale and offsets.

    Args:
        a: [a, n] features × images.
        b: [b, n] features × images, the same images.
    """
    return _Pair(a, b).linear_cka()


def mean_cca_corr(a: ArrayLike, b: ArrayLike) -> float:
    """Mean canonical correlation over all min(a, b) of them (a similarity: 1 for identical inputs, as the
    study's column). Symmetric, in [0, 1], invariant to invertible linear maps of either side.

    Args:
        a: [a, n] features × images.
        b: [b, n] features × images, the same images.
    """
    return _Pair(a, b).mean_cca_corr()


def mean_sq_cca_corr(a: ArrayLike, b: ArrayLike) -> float:
    """Mean squared canonical correlation over all min(a, b) of them (a similarity, like :func:`mean_cca_corr`).

    Args:
        a: [a, n] features × images.
        b: [b, n] features × images, the same images.
    """
    return _Pair(a, b).mean_sq_cca_corr()


def pwcca(a: ArrayLike, b: ArrayLike) -> float:
    """Projection-weighted CCA distance 1 − Σ_i α_i ρ_i (Morcos et al., 2018, as coded by Ding et al., 2021).

    α are A's projection weights (:class:`CCAResult`), normalised over all of A's variates and then truncated to
    the min(a, b) correlations, so the result is **asymmetric**: ``pwcca(a, b)`` weights by A, ``pwcca(b, a)``
    (:func:`pwcca_reverse` with the arguments kept) by B. In [0, 1]; 0 for identical inputs.

    Args:
        a: [a, n] features × images (the side whose weights are used).
        b: [b, n] features × images, the same images.
    """
    return _Pair(a, b).pwcca()


def pwcca_reverse(a: ArrayLike, b: ArrayLike) -> float:
    """:func:`pwcca` weighted by B instead of A, i.e. ``pwcca(b, a)``: the study's reversed row, computed.

    Args:
        a: [a, n] features × images.
        b: [b, n] features × images, the same images (the side whose weights are used).
    """
    return _Pair(a, b).pwcca_reverse()


def svcca(a: ArrayLike, b: ArrayLike, keep: float = SVCCA_KEEP) -> float:
    """SVCCA distance 1 − mean ρ (Raghu et al., 2017): each normalised matrix is reduced to its fewest leading
    singular directions that explain ``keep`` of its variance, then the CCA of the reduced pair gives min(k_a, k_b)
    correlations ρ. Symmetric, in [0, 1]; 0 for identical inputs.

    Args:
        a: [a, n] features × images.
        b: [b, n] features × images, the same images.
        keep: the fraction of variance kept, in (0, 1]; 1 keeps every direction (then SVCCA = 1 − mean ρ of
            :func:`cca` when both have full rank).
    """
    return _Pair(a, b).svcca(keep)


_PAIR_METRICS: dict[str, Callable[[_Pair], float]] = {
    "Procrustes": _Pair.procrustes,
    "CKA": _Pair.linear_cka,
    "PWCCA": _Pair.pwcca,
    "PWCCA_reverse": _Pair.pwcca_reverse,
    "mean_cca_corr": _Pair.mean_cca_corr,
    "mean_sq_cca_corr": _Pair.mean_sq_cca_corr,
    "SVCCA": _Pair.svcca,
}

FEATURE_METRICS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "Procrustes": procrustes,
    "CKA": linear_cka,
    "PWCCA": pwcca,
    "PWCCA_reverse": pwcca_reverse,
    "mean_cca_corr": mean_cca_corr,
    "mean_sq_cca_corr": mean_sq_cca_corr,
    "SVCCA": svcca,
}
"""Name → metric(a [a, n], b [b, n]) -> float; the names are the study's column suffixes (plus PWCCA_reverse and
SVCCA). mean_cca_corr and mean_sq_cca_corr are similarities, the rest distances."""


def compare_features(a: ArrayLike, b: ArrayLike) -> dict[str, float]:
    """Every metric of :data:`FEATURE_METRICS` for one pair, sharing one normalisation, one set of Gram
    matrices and one CCA (SVCCA keeps :data:`SVCCA_KEEP`).

    Args:
        a: [a, n] features × images.
        b: [b, n] features × images, the same images.

    Returns:
        {name: value} in the order of :data:`FEATURE_METRICS`.
    """
    pair = _Pair(a, b)
    return {name: _PAIR_METRICS[name](pair) for name in FEATURE_METRICS}
