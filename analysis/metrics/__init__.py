"""Pure metric functions on extracted reduction patterns and features, one signature per family.

:data:`METRIC_FAMILIES` maps each family to its name → function table:

- ``pruning``: f(kept_a [N, M_a], kept_b [N, M_b]) -> [N] per image (IoA, IoU; kept_b = the lower-r model).
- ``merging``: f(labels_true [N, P], labels_pred [N, P]) -> ([N], [N], [N]), keyed by the tuple of the three
  names (Homogeneity, Completeness, NMI).
- ``heatmap``: f(x [H, W], y [H, W]) -> float (KL, JSD, JSD_study, PCC, SCC, SIM, EMD).
- ``features``: f(a [a, n], b [b, n]) -> float (CLS-feature similarities).
- ``correlation``: f(x [n], y [n]) -> (statistic, p-value) (Spearman, Kendall).
"""

from analysis.metrics.correlation import CORRELATIONS
from analysis.metrics.features import FEATURE_METRICS
from analysis.metrics.heatmaps import HEATMAP_METRICS, emd, jsd, jsd_study, kl, pcc, scc, sim
from analysis.metrics.patterns import (
    MERGING_METRICS,
    PRUNING_METRICS,
    homogeneity_completeness_v,
    ioa,
    iou,
    keep_rates,
    mean_depth_map,
    pruning_lower_bounds,
    token_depth,
    token_depth_from_kept,
)

METRIC_FAMILIES: dict[str, dict] = {
    "pruning": PRUNING_METRICS,
    "merging": MERGING_METRICS,
    "heatmap": HEATMAP_METRICS,
    "features": FEATURE_METRICS,
    "correlation": CORRELATIONS,
}

__all__ = [
    "CORRELATIONS",
    "FEATURE_METRICS",
    "HEATMAP_METRICS",
    "MERGING_METRICS",
    "METRIC_FAMILIES",
    "PRUNING_METRICS",
    "emd",
    "homogeneity_completeness_v",
    "ioa",
    "iou",
    "jsd",
    "jsd_study",
    "keep_rates",
    "kl",
    "mean_depth_map",
    "pcc",
    "pruning_lower_bounds",
    "scc",
    "sim",
    "token_depth",
    "token_depth_from_kept",
]
