"""Reduction-pattern metrics (SPEC §9.1–9.3): overlap of pruning patterns (IoU, IoA and their lower bounds),
agreement of merging patterns (homogeneity, completeness, V-measure), token depth and actual keep rates.

Inputs follow the extraction format, per model and stage: ``kept`` [N, M] int, the original patch indices
(0..P-1) of the stage's tokens per image, padded with -1 (ragged counts: ATS); ``assignment`` [N, P] int, for
every original patch the token that holds it after the stage (composed through earlier stages), -1 once
dropped. Stages come in block order with their block indices (e.g. 3, 6, 9).
"""

import operator
from collections.abc import Callable, Sequence

import numpy as np

from tokred.schedule import check_reduction_loc, stage_targets


def _as_labels(array: np.ndarray, name: str, ndim: int = 2) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != ndim or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be a {ndim}-D int array, got {array.dtype} of shape {array.shape}")
    if array.size and array.min() < -1:
        raise ValueError(f"{name} holds {array.min()}: entries must be indices >= 0 or the marker -1")
    return array


def _membership(kept: np.ndarray, patches: int) -> np.ndarray:
    """[N, P] bool, True where patch p is in image n's kept set. kept: [N, M] int, -1 entries ignored."""
    if kept.size and kept.max() >= patches:
        raise ValueError(f"kept holds patch {kept.max()}, outside a grid of {patches} patches")
    member = np.zeros((kept.shape[0], patches + 1), dtype=bool)
    member[np.arange(kept.shape[0])[:, None], np.where(kept < 0, patches, kept)] = True
    return member[:, :patches]


def _overlap(kept_a: np.ndarray, kept_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|A ∩ B|, |A|, |B| per image, each [N]."""
    a, b = _as_labels(kept_a, "kept_a"), _as_labels(kept_b, "kept_b")
    if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise ValueError(
            f"kept_a and kept_b must cover the same images (or one of them a single row shared by every image), "
            f"got {a.shape[0]} and {b.shape[0]} rows"
        )
    patches = int(max(a.max(initial=-1), b.max(initial=-1))) + 1
    member_a, member_b = _membership(a, patches), _membership(b, patches)
    return (member_a & member_b).sum(1), member_a.sum(1), member_b.sum(1)


def iou(kept_a: np.ndarray, kept_b: np.ndarray) -> np.ndarray:
    """Intersection over union of two kept sets per image, -1 entries ignored; 0 where the intersection is empty.

    Args:
        kept_a, kept_b: [N, M_a], [N, M_b] int original patch indices (-1 = padding). A single row [1, M]
            (a pattern shared by every image, e.g. ℓp) broadcasts over the images of the other.

    Returns:
        [N] float64, |A ∩ B| / |A ∪ B|. Symmetric in its arguments.
    """
    inter, size_a, size_b = _overlap(kept_a, kept_b)
    return np.divide(inter, size_a + size_b - inter, out=np.zeros(inter.shape), where=inter > 0)


def ioa(kept_a: np.ndarray, kept_b: np.ndarray) -> np.ndarray:
    """Intersection over area per image (supplementary Eq. 1, SPEC §9.1), -1 entries ignored.

    The order matters: ``kept_b`` is the model with the LOWER keep rate (or the smaller capacity), so
    IoA = |A ∩ B| / |B| is 1 exactly when B ⊆ A. 0 where the intersection is empty (also when B is empty).

    Args:
        kept_a: [N, M_a] int, the higher-r (or larger) model's kept patches (-1 = padding).
        kept_b: [N, M_b] int, the lower-r (or smaller) model's kept patches. Either may be a single row
            [1, M] shared by every image.

    Returns:
        [N] float64.
    """
    inter, _, size_b = _overlap(kept_a, kept_b)
    return np.divide(inter, size_b, out=np.zeros(inter.shape), where=inter > 0)


def pruning_lower_bounds(r1: float, r2: float, stages: int = 3, patches: int = 196) -> tuple[np.ndarray, np.ndarray]:
    """The smallest IoA and IoU two fixed-count pruning patterns can have (supplementary Algorithms 1–2).

    Per stage s: P_i = floor(P r_i^s) kept patches, and at least I_min = max(0, P_1 + P_2 - P) of them are
    shared; then LB_IoA = I_min / P_2 and LB_IoU = I_min / P (the union is all P patches whenever I_min > 0).
    Valid for fixed per-stage counts only: ATS (fewer tokens) and the ℓp shells (other counts) can fall below.

    Args:
        r1, r2: keep rates with r1 >= r2 (the order of :func:`ioa`).
        stages: reduction stages; patches: P.

    Returns:
        (lb_ioa [stages], lb_iou [stages]) float64.
    """
    p1 = np.array(stage_targets(r1, stages, patches))
    p2 = np.array(stage_targets(r2, stages, patches))
    if r1 < r2:
        raise ValueError(f"pass the higher keep rate first: r1={r1} < r2={r2}")
    shared = np.maximum(0, p1 + p2 - patches)
    return np.divide(shared, p2, out=np.zeros(stages), where=p2 > 0), shared / patches


def homogeneity_completeness_v(
    labels_true: np.ndarray, labels_pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Homogeneity, completeness and V-measure (= NMI, arithmetic normalisation) of two partitions of the
    patches, per image (SPEC §9.2): scikit-learn's ``homogeneity_completeness_v_measure`` computed for all images
    at once from their contingency tables (the per-image call costs ~0.7 ms: minutes per pair on ImageNet).

    The order matters: homogeneity is 1 when every ``labels_pred`` cluster lies inside one ``labels_true``
    class, completeness is homogeneity with the arguments swapped, V is symmetric. The study's rates setting
    passes the LOWER-r model (fewer clusters) as ``labels_true``, so homogeneity measures how well the
    higher-r clusters nest in the lower-r ones; capacity and model comparisons pass model A as ``labels_true``.

    Args:
        labels_true, labels_pred: [N, P] int composed assignment maps of the two models. Merging methods keep
            every patch; a -1 (dropped patch) raises.

    Returns:
        (homogeneity [N], completeness [N], v_measure [N]) float64.
    """
    true, pred = _as_labels(labels_true, "labels_true"), _as_labels(labels_pred, "labels_pred")
    if true.shape != pred.shape:
        raise ValueError(f"labels_true and labels_pred must have the same shape, got {true.shape} and {pred.shape}")
    if true.size and min(true.min(), pred.min()) < 0:
        raise ValueError(
            "the assignments hold -1 (dropped patches): homogeneity compares partitions of all patches, so use "
            "it on merging methods' assignments and compare pruning patterns with iou/ioa"
        )
    chunks = [_information(true[i : i + 256], pred[i : i + 256]) for i in range(0, len(true), 256)]
    h_c, h_k, mutual = (np.concatenate(parts) if parts else np.zeros(0) for parts in zip(*chunks, strict=True))
    homogeneity = np.where(h_c > 0, mutual / np.where(h_c > 0, h_c, 1), 1.0)
    completeness = np.where(h_k > 0, mutual / np.where(h_k > 0, h_k, 1), 1.0)
    total = homogeneity + completeness
    v = np.where(total > 0, 2 * homogeneity * completeness / np.where(total > 0, total, 1), 0.0)
    return homogeneity, completeness, v


def _information(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """H(C), H(K) and the mutual information I(C; K) in nats per image ([N] each), from the contingency tables
    of labels [N, P] (integer counts, so a certain outcome gives exactly 0)."""
    n, patches = true.shape
    classes, clusters = int(true.max(initial=0)) + 1, int(pred.max(initial=0)) + 1
    cells = (np.arange(n)[:, None] * classes + true) * clusters + pred
    joint = np.bincount(cells.ravel(), minlength=n * classes * clusters).reshape(n, classes, clusters)
    per_class, per_cluster = joint.sum(2), joint.sum(1)

    def entropy(counts: np.ndarray) -> np.ndarray:
        p = counts / patches
        return -(p * np.log(np.where(p > 0, p, 1))).sum(1)

    ratio = joint * patches / np.maximum(per_class[:, :, None] * per_cluster[:, None, :], 1)
    mutual = (joint / patches * np.log(np.where(joint > 0, ratio, 1))).sum((1, 2))
    return entropy(per_class), entropy(per_cluster), np.maximum(mutual, 0.0)


def _first_absence(
    alive: list[np.ndarray], blocks: Sequence[int], patches: int, depth: int, num_images: int | None
) -> np.ndarray:
    """[N, P] the block of the first stage where each patch is not alive, ``depth`` if it always is."""
    blocks = check_reduction_loc([operator.index(b) for b in blocks], depth)  # numpy ints welcome
    if len(alive) != len(blocks):
        raise ValueError(f"got {len(alive)} stages but {len(blocks)} block indices")
    if not alive:
        if num_images is None:
            raise ValueError("a model without reduction stages needs num_images to know the output shape")
        return np.full((num_images, patches), depth)
    shapes = sorted({a.shape for a in alive})
    if len(shapes) != 1:
        raise ValueError(f"every stage must cover the same images and patches, got shapes {shapes}")
    if num_images is not None and num_images != shapes[0][0]:
        raise ValueError(f"num_images={num_images} but the stages cover {shapes[0][0]} images")
    gone = ~np.stack(alive)
    return np.where(gone.any(0), np.asarray(blocks)[gone.argmax(0)], depth)


def token_depth(
    assignments: Sequence[np.ndarray],
    blocks: Sequence[int],
    patches: int = 196,
    depth: int = 12,
    *,
    num_images: int | None = None,
) -> np.ndarray:
    """Token depth from assignment maps (SPEC §9.3): the block index of the stage where a patch is first
    dropped (assignment -1); patches that survive every stage get ``depth``.

    Only for methods that drop patches without a trace (Top-K, DynamicViT, ATS, ℓp); EViT fuses its dropped
    patches into a token and K-Medoids/DPC-KNN merge them, so use :func:`token_depth_from_kept` there.

    Args:
        assignments: per stage [N, P] int composed assignment maps, in block order.
        blocks: the stages' block indices (0-based, strictly increasing, < depth).
        patches: P; depth: the number of blocks.
        num_images: N, needed only for a model without reduction stages (DeiT: ``depth`` everywhere).

    Returns:
        [N, P] int depth per image and patch.
    """
    alive = []
    for a in assignments:
        a = _as_labels(a, "assignment")
        if a.shape[1] != patches:
            raise ValueError(f"assignment maps must be [N, {patches}], got {a.shape}")
        alive.append(a >= 0)
    return _first_absence(alive, blocks, patches, depth, num_images)


def token_depth_from_kept(
    kept: Sequence[np.ndarray],
    blocks: Sequence[int],
    patches: int = 196,
    depth: int = 12,
    *,
    num_images: int | None = None,
) -> np.ndarray:
    """Token depth from kept sets (SPEC §9.3): a patch survives a stage iff it is in that stage's kept set;
    its depth is the block index of the first stage without it, ``depth`` if it is always there. Covers the
    pruning methods (EViT's fused token is -1 in ``kept``) and the K-Medoids / DPC-KNN centres.

    Args:
        kept: per stage [N, M_s] int original patch indices, -1 = padding, in block order.
        blocks, patches, depth, num_images: as in :func:`token_depth`.

    Returns:
        [N, P] int depth per image and patch.
    """
    alive = [_membership(_as_labels(k, "kept"), patches) for k in kept]
    return _first_absence(alive, blocks, patches, depth, num_images)


def mean_depth_map(depth: np.ndarray, grid: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """The dataset-averaged reduction pattern: mean and std (ddof 0) over images of the token depth.

    Args:
        depth: [N, grid²] token depth per image and patch (row-major patches).

    Returns:
        (mean [grid, grid], std [grid, grid]) float64.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2 or depth.shape[0] == 0 or depth.shape[1] != grid * grid:
        raise ValueError(f"depth must be [N >= 1, {grid * grid}] for a {grid}x{grid} grid, got {depth.shape}")
    return depth.mean(0).reshape(grid, grid), depth.std(0).reshape(grid, grid)


def keep_rates(token_counts: np.ndarray, patches: int = 196) -> tuple[np.ndarray, np.ndarray]:
    """Actual keep rate per stage (supplementary Figure 1: ATS keeps fewer than r^s): mean and std (ddof 0)
    over images of count / P.

    Args:
        token_counts: [N, S] spatial tokens per image after each stage.

    Returns:
        (mean [S], std [S]) float64.
    """
    counts = np.asarray(token_counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] == 0:
        raise ValueError(f"token_counts must be [N >= 1, stages], got {counts.shape}")
    rates = counts / patches
    return rates.mean(0), rates.std(0)


PRUNING_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {"IoA": ioa, "IoU": iou}
"""Pruning patterns: name → f(kept_a, kept_b) -> [N] per image; kept_b = the lower-r or smaller model."""

MERGING_METRICS: dict[tuple[str, ...], Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, ...]]] = {
    ("Homogeneity", "Completeness", "NMI"): homogeneity_completeness_v
}
"""Merging patterns: the names of the returned arrays → f(labels_true, labels_pred) -> one [N] array per name."""
