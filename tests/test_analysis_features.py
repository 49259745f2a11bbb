"""CLS-feature similarity metrics against independent formulations (SciPy, scikit-learn, SPEC's eigen-based
CCA with explicit canonical variates, HSIC with an explicit centering matrix), closed-form constructions and the
invariants of SPEC §13."""

import os

import numpy as np
import pytest
import scipy.linalg
from sklearn.cross_decomposition import CCA

from analysis.metrics.features import (
    FEATURE_METRICS,
    cca,
    compare_features,
    linear_cka,
    mean_cca_corr,
    mean_sq_cca_corr,
    normalise,
    procrustes,
    pwcca,
    pwcca_reverse,
    svcca,
)


@pytest.fixture
def gen() -> np.random.Generator:
    """Fresh random inputs on every run (the seed is printed on failure)."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed {seed}")
    return np.random.default_rng(seed)


def related(gen: np.random.Generator, a: int, b: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two CLS-like matrices [a, n], [b, n] sharing a few latent factors, with offsets and unequal scales."""
    latent = gen.standard_normal((3, n))
    x = gen.standard_normal((a, 3)) @ latent + 0.7 * gen.standard_normal((a, n))
    y = gen.standard_normal((b, 3)) @ latent + 0.7 * gen.standard_normal((b, n))
    return x * gen.uniform(0.5, 3, (a, 1)) + gen.normal(0, 5, (a, 1)), y + gen.normal(0, 5, (b, 1))


def centred_orthonormal(gen: np.random.Generator, k: int, n: int) -> np.ndarray:
    """[k, n] orthonormal rows orthogonal to the all-ones vector (already centred and unit-norm)."""
    q, _ = np.linalg.qr(np.column_stack([np.ones(n), gen.standard_normal((n, k))]))
    return q[:, 1:].T


def invertible(gen: np.random.Generator, k: int) -> np.ndarray:
    """A random well-conditioned [k, k] map (singular values in [0.5, 2])."""
    q1, _ = np.linalg.qr(gen.standard_normal((k, k)))
    q2, _ = np.linalg.qr(gen.standard_normal((k, k)))
    return q1 @ np.diag(gen.uniform(0.5, 2, k)) @ q2


def naive_normalise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.sqrt(np.sum(x * x))


def naive_cca(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SPEC §9.5 literally on normalised inputs: eigen-decompose the covariances, clip negative eigenvalues,
    invert square roots, SVD of T; returns ρ [min(a, b)] and the explicit canonical variates [n, a], [n, b]."""

    def inv_sqrt(cov: np.ndarray) -> np.ndarray:
        values, vectors = np.linalg.eigh(cov)
        values = np.maximum(values, 0)
        inv = np.array([1 / np.sqrt(v) if v > 0 else 0.0 for v in values])
        return vectors @ np.diag(inv) @ vectors.T

    ia, ib = inv_sqrt(x @ x.T), inv_sqrt(y @ y.T)
    u, rho, vh = np.linalg.svd(ia @ (x @ y.T) @ ib)
    return rho, (u.T @ ia @ x).T, (vh @ ib @ y).T


def naive_pwcca(x: np.ndarray, rho: np.ndarray, variates: np.ndarray) -> float:
    weights = np.abs(variates.T @ x.T).sum(axis=1)
    weights = weights / weights.sum()
    dim = min(len(weights), len(rho))
    return 1 - weights[:dim] @ rho[:dim]


def test_normalise_centres_rows_and_scales_to_unit_frobenius(gen: np.random.Generator) -> None:
    x = gen.normal(3, 2, (5, 40)).astype(np.float32)
    got = normalise(x)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got.mean(axis=1), 0, atol=1e-15)
    assert np.linalg.norm(got) == pytest.approx(1, abs=1e-14)
    np.testing.assert_allclose(got, naive_normalise(x.astype(np.float64)), atol=1e-15)
    np.testing.assert_allclose(normalise(got), got, atol=1e-15)


@pytest.mark.parametrize(("a", "b"), [(6, 6), (7, 4)])
def test_procrustes_is_the_minimal_residual_of_scipy_orthogonal_procrustes(
    gen: np.random.Generator, a: int, b: int
) -> None:
    x, y = related(gen, a, b, 60)
    xn, yn = naive_normalise(x), naive_normalise(y)
    # Procrustes over different widths: pad the narrower with zero features (orthogonal maps need one width).
    yn = np.vstack([yn, np.zeros((a - b, yn.shape[1]))])
    rotation, _ = scipy.linalg.orthogonal_procrustes(xn.T, yn.T)
    residual = np.sum((xn.T @ rotation - yn.T) ** 2)
    assert procrustes(x, y) == pytest.approx(residual, abs=1e-12)
    assert procrustes(y, x) == pytest.approx(residual, abs=1e-12)


def test_linear_cka_matches_hsic_with_an_explicit_centering_matrix(gen: np.random.Generator) -> None:
    x, y = related(gen, 5, 8, 50)
    n = x.shape[1]
    h = np.eye(n) - np.ones((n, n)) / n

    def hsic(k: np.ndarray, m: np.ndarray) -> float:
        return np.trace(k @ h @ m @ h) / (n - 1) ** 2

    k, m = x.T @ x, y.T @ y
    want = 1 - hsic(k, m) / np.sqrt(hsic(k, k) * hsic(m, m))
    assert linear_cka(x, y) == pytest.approx(want, abs=1e-12)
    assert linear_cka(y, x) == pytest.approx(want, abs=1e-12)


def test_canonical_correlations_are_the_cosines_of_scipy_principal_angles(gen: np.random.Generator) -> None:
    x, y = related(gen, 6, 4, 80)
    want = np.sort(np.cos(scipy.linalg.subspace_angles(naive_normalise(x).T, naive_normalise(y).T)))[::-1]
    np.testing.assert_allclose(cca(x, y).rho, want, atol=1e-10)
    np.testing.assert_allclose(cca(y, x).rho, want, atol=1e-10)


def test_canonical_correlations_stay_accurate_for_features_of_very_different_scales(gen: np.random.Generator) -> None:
    # Feature scales over 9 decades (a covariance condition number of 1e18): CCA does not see scales.
    x, y = related(gen, 12, 6, 300)
    x = np.logspace(0, -9, 12)[:, None] * x
    want = np.sort(np.cos(scipy.linalg.subspace_angles(naive_normalise(x).T, naive_normalise(y).T)))[::-1]
    np.testing.assert_allclose(cca(x, y).rho, want, atol=1e-10)


def test_canonical_correlations_match_sklearn_cca(gen: np.random.Generator) -> None:
    n = 500
    z = gen.standard_normal((4, n))
    x = np.vstack([z[0], z[1], z[2], gen.standard_normal(n)]) + gen.normal(0, 3, (4, 1))
    y = np.vstack([z[0] + 0.2 * z[3], z[1] + gen.standard_normal(n), gen.standard_normal(n)])
    model = CCA(n_components=2, max_iter=5000, tol=1e-12).fit(x.T, y.T)
    scores_x, scores_y = model.transform(x.T, y.T)
    want = [np.corrcoef(scores_x[:, i], scores_y[:, i])[0, 1] for i in range(2)]
    np.testing.assert_allclose(cca(x, y).rho[:2], want, atol=1e-6)


def test_canonical_correlations_of_a_known_construction(gen: np.random.Generator) -> None:
    # Rows of A span {u0, u1}; rows of B span {cos t0 u0 + sin t0 u2, cos t1 u1 + sin t1 u3}: ρ = cos t.
    u = centred_orthonormal(gen, 4, 90)
    t = np.array([0.3, 1.1])
    x = invertible(gen, 2) @ u[:2]
    y = invertible(gen, 2) @ (np.cos(t)[:, None] * u[:2] + np.sin(t)[:, None] * u[2:])
    result = cca(x, y)
    np.testing.assert_allclose(result.rho, np.cos(t), atol=1e-10)
    assert mean_cca_corr(x, y) == pytest.approx(np.cos(t).mean(), abs=1e-10)
    assert mean_sq_cca_corr(x, y) == pytest.approx(np.mean(np.cos(t) ** 2), abs=1e-10)
    # An invertible linear map of A: every correlation is 1.
    np.testing.assert_allclose(cca(x, invertible(gen, 2) @ x + 4).rho, 1, atol=1e-10)


def test_independent_features_have_small_canonical_correlations(gen: np.random.Generator) -> None:
    x, y = gen.standard_normal((3, 3000)), gen.standard_normal((3, 3000))
    assert mean_cca_corr(x, y) < 0.2
    assert pwcca(x, y) > 0.8


@pytest.mark.parametrize(("a", "b"), [(5, 5), (4, 7)])
def test_pwcca_and_mean_correlations_match_spec_formulation_with_explicit_variates(
    gen: np.random.Generator, a: int, b: int
) -> None:
    # SPEC's weights are defined up to the SVD's basis for the variates of the wider side that have no
    # correlation; compare where there are none (the weighting side is not the wider one).
    x, y = related(gen, a, b, 70)
    xn, yn = naive_normalise(x), naive_normalise(y)
    rho, variates_x, variates_y = naive_cca(xn, yn)
    assert pwcca(x, y) == pytest.approx(naive_pwcca(xn, rho, variates_x), abs=1e-10)
    if a == b:
        assert pwcca_reverse(x, y) == pytest.approx(naive_pwcca(yn, rho, variates_y), abs=1e-10)
    assert pwcca(y, x) == pytest.approx(pwcca_reverse(x, y), abs=1e-12)
    assert mean_cca_corr(x, y) == pytest.approx(rho.mean(), abs=1e-10)
    assert mean_sq_cca_corr(x, y) == pytest.approx(np.mean(rho**2), abs=1e-10)


def test_pwcca_weights_the_uncorrelated_variates_independently_of_the_svd_basis(gen: np.random.Generator) -> None:
    # With a > b, A has a − b variates of correlation 0 whose basis the SVD picks arbitrarily; an invertible
    # map of B leaves CCA unchanged but perturbs that choice, so the distance must not move.
    x, y = related(gen, 8, 4, 200)
    want = pwcca(x, y)
    for _ in range(3):
        assert pwcca(x, invertible(gen, 4) @ y) == pytest.approx(want, abs=1e-10)


def test_pwcca_is_asymmetric_on_a_constructed_example(gen: np.random.Generator) -> None:
    # A = [3 u0, u1], B = [u0]: ρ = [1]; A's variates are u0 (weight 3/4, ρ 1) and u1 (weight 1/4, beyond min(a, b)),
    # so PWCCA(A, B) = 1/4 while B is fully explained by A: PWCCA(B, A) = 0.
    u = centred_orthonormal(gen, 2, 50)
    x, y = np.vstack([3 * u[0], u[1]]), u[:1]
    np.testing.assert_allclose(cca(x, y).rho, [1], atol=1e-12)
    assert pwcca(x, y) == pytest.approx(0.25, abs=1e-12)
    assert pwcca(y, x) == pytest.approx(0, abs=1e-12)
    assert pwcca_reverse(x, y) == pytest.approx(0, abs=1e-12)
    assert FEATURE_METRICS["PWCCA_reverse"](y, x) == pytest.approx(0.25, abs=1e-12)


def test_svcca_keeps_the_directions_explaining_the_requested_variance(gen: np.random.Generator) -> None:
    # A = [10 u0, u1, 0.01 u2] (variance shares 0.9901, 0.0099, 1e-6), B = [u0, u2].
    u = centred_orthonormal(gen, 3, 60)
    x, y = np.vstack([10 * u[0], u[1], 0.01 * u[2]]), np.vstack([u[0], u[2]])
    assert svcca(x, y, keep=0.99) == pytest.approx(0, abs=1e-12)  # A keeps u0; B keeps both: ρ = [1]
    assert svcca(x, y, keep=0.9999) == pytest.approx(0.5, abs=1e-12)  # A keeps u0, u1: ρ = [1, 0]
    assert mean_cca_corr(x, y) == pytest.approx(1, abs=1e-10)  # all of A: ρ = [1, 1]


def test_svcca_matches_truncated_svd_then_spec_cca(gen: np.random.Generator) -> None:
    x, y = related(gen, 6, 5, 80)

    def reduce(m: np.ndarray) -> np.ndarray:
        u, s, _ = np.linalg.svd(naive_normalise(m), full_matrices=False)
        k = next(i + 1 for i in range(len(s)) if np.sum(s[: i + 1] ** 2) >= 0.9 * np.sum(s**2))
        return u[:, :k].T @ naive_normalise(m)

    rho, _, _ = naive_cca(reduce(x), reduce(y))
    assert svcca(x, y, keep=0.9) == pytest.approx(1 - rho.mean(), abs=1e-10)
    assert svcca(y, x, keep=0.9) == pytest.approx(1 - rho.mean(), abs=1e-10)


def test_rank_deficient_features_give_the_row_space_correlations(gen: np.random.Generator) -> None:
    x, y = related(gen, 2, 3, 70)
    x = np.vstack([x, x[0] + x[1], 2 * x[0]])  # 4 features of rank 2
    angles = scipy.linalg.subspace_angles(naive_normalise(x[:2]).T, naive_normalise(y).T)
    np.testing.assert_allclose(cca(x, y).rho, np.append(np.sort(np.cos(angles))[::-1], 0), atol=1e-8)


def test_identical_inputs(gen: np.random.Generator) -> None:
    x, _ = related(gen, 12, 3, 60)
    want = {"Procrustes": 0, "CKA": 0, "PWCCA": 0, "PWCCA_reverse": 0, "mean_cca_corr": 1, "mean_sq_cca_corr": 1}
    want["SVCCA"] = 0
    for y in (x, 2.5 * x - 7):
        got = compare_features(x, y)
        assert got == pytest.approx(want, abs=1e-10)
        assert {name: metric(x, y) for name, metric in FEATURE_METRICS.items()} == pytest.approx(want, abs=1e-10)


def test_features_with_orthogonal_row_spaces_are_maximally_dissimilar(gen: np.random.Generator) -> None:
    u = centred_orthonormal(gen, 5, 40)
    x, y = invertible(gen, 2) @ u[:2], invertible(gen, 3) @ u[2:]
    got = compare_features(x, y)
    want = {"Procrustes": 2, "CKA": 1, "PWCCA": 1, "PWCCA_reverse": 1, "mean_cca_corr": 0, "mean_sq_cca_corr": 0}
    want["SVCCA"] = 1
    assert got == pytest.approx(want, abs=1e-10)


@pytest.mark.parametrize(("a", "b", "n"), [(3, 3, 10), (8, 2, 30), (5, 20, 64)])
def test_ranges(gen: np.random.Generator, a: int, b: int, n: int) -> None:
    x, y = related(gen, a, b, n)
    got = compare_features(x, y)
    assert 0 <= got["Procrustes"] <= 2
    for name in ("CKA", "PWCCA", "PWCCA_reverse", "mean_cca_corr", "mean_sq_cca_corr", "SVCCA"):
        assert 0 <= got[name] <= 1, name
    rho = cca(x, y).rho
    assert rho.shape == (min(a, b),) and np.all(np.diff(rho) <= 1e-12)


def test_compare_features_equals_each_metric(gen: np.random.Generator) -> None:
    x, y = related(gen, 7, 5, 40)
    got = compare_features(x, y)
    assert list(got) == list(FEATURE_METRICS)
    assert got == pytest.approx({name: metric(x, y) for name, metric in FEATURE_METRICS.items()}, abs=1e-12)


def test_invariances(gen: np.random.Generator) -> None:
    x, y = related(gen, 6, 5, 50)
    q, _ = np.linalg.qr(gen.standard_normal((6, 6)))
    signed_permutation = np.eye(6)[gen.permutation(6)] * gen.choice([-1, 1], 6)
    linear_map = invertible(gen, 6)
    offsets = gen.normal(0, 10, (6, 1))
    for name in ("Procrustes", "CKA", "SVCCA"):  # rotations, isotropic scale, offsets
        metric = FEATURE_METRICS[name]
        assert metric(0.3 * q @ x + offsets, y) == pytest.approx(metric(x, y), abs=1e-10), name
    for name in ("PWCCA", "PWCCA_reverse"):  # the weights see individual features: signed permutations only
        metric = FEATURE_METRICS[name]
        assert metric(0.3 * signed_permutation @ x + offsets, y) == pytest.approx(metric(x, y), abs=1e-10), name
    for name in ("mean_cca_corr", "mean_sq_cca_corr"):  # any invertible linear map
        metric = FEATURE_METRICS[name]
        assert metric(linear_map @ x + offsets, y) == pytest.approx(metric(x, y), abs=1e-10), name


def test_invalid_inputs_raise_clear_errors(gen: np.random.Generator) -> None:
    x = gen.standard_normal((8, 8))
    with pytest.raises(ValueError, match="extract at least 9 images"):
        procrustes(x, gen.standard_normal((4, 8)))
    with pytest.raises(ValueError, match="same images"):
        linear_cka(gen.standard_normal((4, 20)), gen.standard_normal((4, 21)))
    with pytest.raises(ValueError, match="constant"):
        cca(np.ones((3, 10)), gen.standard_normal((3, 10)))
    with pytest.raises(ValueError, match="NaN"):
        pwcca(np.full((3, 10), np.nan), gen.standard_normal((3, 10)))
    with pytest.raises(ValueError, match="2-D"):
        normalise(np.arange(5.0))
    with pytest.raises(ValueError, match="keep"):
        svcca(gen.standard_normal((3, 10)), gen.standard_normal((3, 10)), keep=0)
