"""Comparisons between extracted models (SPEC §9): across keep rates, backbone capacities, methods and datasets.

``python -m analysis.compare EXTRACTIONS OUT_DIR`` reads every extraction file (``*.npz`` written by
``analysis.extract``) under EXTRACTIONS and writes to OUT_DIR:

- ``comparisons.csv``, tidy: one row per (setting, model pair, block, metric) with the mean and std over images
  (features and heatmaps are one number per pair: std empty), both models' scores and A − B;
- ``correlations.csv``: per setting, group of pairs, metric and block, Spearman and Kendall (with p-values)
  between the metric and the score difference (SPEC §9.6);
- ``models.csv``: per model, its score and per stage the actual keep rate (mean, std over images);
- ``depth_maps.npz``: per model the dataset-averaged token depth map [grid, grid] (SPEC §9.3), key ``dataset|model``.

A file that cannot be read (truncated, not an archive) is named in a warning, skipped and counted; an unfinished
extraction (its ``OUT.npz.parts/`` folder) is not an input. A setting without pairs is reported with what would
give it one, and two models on one dataset that cover different images (another split or ``--limit``) are not
compared.

Pairs, as the study formed them: **rates** same method and backbone, r_A > r_B; **capacity** same method and r,
A the larger backbone; **models** same backbone, different methods at the same r (ℓp, ATS and the DeiT baseline
against every r), both orders; **datasets** same model on two datasets (dataset-averaged patterns only).
"""

import argparse
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

import tokred
from analysis.metrics import (
    HEATMAP_METRICS,
    homogeneity_completeness_v,
    ioa,
    iou,
    keep_rates,
    mean_depth_map,
    pruning_lower_bounds,
    token_depth_from_kept,
)
from analysis.metrics.correlation import correlate, undefined
from analysis.metrics.features import compare_features
from analysis.models import Model, find_models, load, same_images

log = logging.getLogger(__name__)

SETTINGS = ("rates", "capacity", "models", "datasets")
BASELINE = tokred.MethodInfo("DeiT", "no reduction", any_rate=True, input_dependent=False)
"""The unreduced baseline ("deit"): compared with models at every r."""
FEATURE_BLOCKS = (3, 6, 9, 11)
PAIR = ["setting", "dataset_a", "dataset_b", "model_a", "model_b", "method_a", "method_b", "backbone_a", "backbone_b"]
COLUMNS = [*PAIR, "r_a", "r_b", "score_a", "score_b", "score_diff", "family", "block", "metric", "mean", "std"]
CORRELATION_COLUMNS = ["setting", "group", "metric", "block", "spearman", "spearman_p", "kendall", "kendall_p", "n"]


def traits(method: str) -> tokred.MethodInfo:
    """What the comparisons need to know of ``method`` (see :class:`tokred.MethodInfo`)."""
    return BASELINE if method == "deit" else tokred.method_info(method)


def comparable(a: Model, b: Model, setting: str) -> bool:
    """Whether the study compares A with B (in this order) in ``setting`` (see the module docstring)."""
    if setting == "datasets":
        same = (a.backbone, a.method, a.keep_rate, a.blocks) == (b.backbone, b.method, b.keep_rate, b.blocks)
        return same and a.dataset < b.dataset and has_depth_map(a.method)
    if a.dataset != b.dataset:
        return False
    if setting == "rates":
        return (a.backbone, a.method, a.blocks) == (b.backbone, b.method, b.blocks) and a.keep_rate > b.keep_rate
    if setting == "capacity":
        larger = a.capacity is not None and b.capacity is not None and a.capacity > b.capacity
        return (a.method, a.keep_rate, a.blocks) == (b.method, b.keep_rate, b.blocks) and larger
    any_rate = traits(a.method).any_rate or traits(b.method).any_rate
    return a.backbone == b.backbone and a.method != b.method and (any_rate or a.keep_rate == b.keep_rate)


def has_depth_map(method: str) -> bool:
    """Whether the dataset-averaged patterns of ``method`` are compared across datasets (SPEC §9.4): methods
    that keep patches, chosen per image."""
    info = traits(method)
    return info.keeps_patches and info.input_dependent


def pairs(models: list[Model], setting: str) -> list[tuple[Model, Model]]:
    """The ordered pairs (A, B) of ``setting``."""
    return [(a, b) for a, b in itertools.permutations(models, 2) if comparable(a, b, setting)]


@cache
def depth_map(model: Model) -> np.ndarray:
    """[grid, grid] mean token depth over the images, for pruning methods (and the K-Medoids / DPC-KNN centres);
    the baseline has the full depth everywhere."""
    extraction = load(model.path)
    tokens = token_depth_from_kept(
        extraction.representatives,
        extraction.blocks,
        extraction.grid**2,
        extraction.cls.shape[1],  # the number of blocks
        num_images=extraction.num_images,
    )
    return mean_depth_map(tokens, extraction.grid)[0]


def pattern_rows(a: Model, b: Model, setting: str) -> Iterator[dict]:
    """Per stage: IoU / IoA of the kept patches, homogeneity / completeness / NMI of the partitions (A and B cover
    the same images)."""
    ea, eb = load(a.path), load(b.path)
    if len(a.blocks) != len(b.blocks):
        return
    bounds = None
    if setting == "rates" and traits(a.method).fixed_count:
        bounds = pruning_lower_bounds(a.keep_rate, b.keep_rate, len(a.blocks), ea.grid**2)
    for stage, block in enumerate(a.blocks):
        values: dict[str, np.ndarray] = {}
        if traits(a.method).keeps_patches and traits(b.method).keeps_patches:
            values["IoU"] = iou(ea.representatives[stage], eb.representatives[stage])
            if setting != "models":
                values["IoA"] = ioa(ea.representatives[stage], eb.representatives[stage])
        if traits(a.method).partitions and traits(b.method).partitions:
            # rates: labels_true = the lower-r model B (SPEC §9.2); capacity and models: model A
            true, pred = (eb, ea) if setting == "rates" else (ea, eb)
            h, c, v = homogeneity_completeness_v(true.assignment[stage], pred.assignment[stage])
            values |= {"Homogeneity": h, "Completeness": c, "NMI": v}
        for metric, per_image in values.items():
            yield {
                "family": "pattern",
                "block": block,
                "metric": metric,
                "mean": per_image.mean(),
                "std": per_image.std(),
            }
        if bounds is not None:
            for metric, bound in zip(("IoA_lower_bound", "IoU_lower_bound"), bounds, strict=True):
                yield {"family": "pattern", "block": block, "metric": metric, "mean": bound[stage], "std": 0.0}


def feature_rows(a: Model, b: Model) -> Iterator[dict]:
    """Per block of FEATURE_BLOCKS: the CLS-feature similarities (features × images matrices)."""
    ea, eb = load(a.path), load(b.path)
    width = max(ea.cls.shape[-1], eb.cls.shape[-1])
    if ea.num_images <= width:
        log.warning(
            "CLS features of %s and %s not compared: %d images for %d features (extract more images)",
            a.name,
            b.name,
            ea.num_images,
            width,
        )
        return
    for block in FEATURE_BLOCKS:
        if block < min(ea.cls.shape[1], eb.cls.shape[1]):
            values = compare_features(ea.cls[:, block].T.astype(np.float64), eb.cls[:, block].T.astype(np.float64))
            for metric, value in values.items():
                yield {"family": "features", "block": block, "metric": metric, "mean": value, "std": np.nan}


def heatmap_rows(a: Model, b: Model) -> Iterator[dict]:
    """The saliency suite on the two dataset-averaged token-depth maps."""
    x, y = depth_map(a), depth_map(b)
    for metric, function in HEATMAP_METRICS.items():
        yield {"family": "heatmap", "block": -1, "metric": metric, "mean": function(x, y), "std": np.nan}


NEEDS = {
    "rates": "two keep rates of one method on one backbone and dataset",
    "capacity": "one method at one keep rate on two backbones",
    "models": "two methods at one keep rate on one backbone and dataset (the DeiT baseline and ℓp: at any keep rate)",
    "datasets": "one model on two datasets, of a method that keeps patches chosen per image",
}
"""Per setting, what forms a pair (said when a setting has none)."""


def needs(models: list[Model], setting: str) -> str:
    """What would give ``setting`` its first pair: :data:`NEEDS`, with an example from ``models``."""
    fits = has_depth_map if setting == "datasets" else lambda method: method != "deit"
    m = next((m for m in models if fits(m.method)), None)
    if m is None:
        return NEEDS[setting]
    example = {
        "rates": f"{m.method} on {m.backbone}, {m.dataset} at a keep rate other than {m.keep_rate:g}",
        "capacity": f"{m.method} r={m.keep_rate:g} on {m.dataset} with a backbone other than {m.backbone}",
        "models": f"another method at r={m.keep_rate:g}, or the DeiT baseline, on {m.backbone}, {m.dataset}",
        "datasets": f"{m.name} on a dataset other than {m.dataset}",
    }[setting]
    return f"{NEEDS[setting]}; e.g. {example}"


def compare(
    models: list[Model], settings: tuple[str, ...] = SETTINGS
) -> tuple[pd.DataFrame, dict[tuple[Path, Path], str]]:
    """The tidy comparison table of every pair of every setting, and the pairs left out with the reason (two
    models on one dataset that cover different images; named in a warning once)."""
    work = [(setting, a, b) for setting in settings for a, b in pairs(models, setting)]
    rows, skipped = [], {}
    for setting, a, b in tqdm(work, desc="comparing", unit="pair"):
        key = (min(a.path, b.path), max(a.path, b.path))
        reason = "" if setting == "datasets" else skipped.get(key) or same_images(load(a.path), load(b.path))
        if reason:
            if key not in skipped:
                log.warning(
                    "not comparing %s with %s: they cover %s; extract both from the same split with the same --limit",
                    *key,
                    reason,
                )
                skipped[key] = reason
            continue
        found = (
            heatmap_rows(a, b)
            if setting == "datasets"
            else itertools.chain(pattern_rows(a, b, setting), feature_rows(a, b))
        )
        ea, eb = load(a.path), load(b.path)
        pair = {
            "setting": setting,
            "dataset_a": a.dataset,
            "dataset_b": b.dataset,
            "model_a": a.name,
            "model_b": b.name,
            "method_a": a.method,
            "method_b": b.method,
            "backbone_a": a.backbone,
            "backbone_b": b.backbone,
            "r_a": a.keep_rate,
            "r_b": b.keep_rate,
            "score_a": ea.score,
            "score_b": eb.score,
            "score_diff": ea.score - eb.score,
        }
        rows += [pair | row for row in found]
    return pd.DataFrame(rows, columns=COLUMNS), skipped


def correlations(table: pd.DataFrame) -> pd.DataFrame:
    """Spearman and Kendall between each metric and the score difference, per group of pairs (SPEC §9.6):
    rates per model family (dataset, backbone, method), capacity per (dataset, method), models per anchor model A
    and partner r. The datasets setting has no score difference to correlate with. Columns ``CORRELATION_COLUMNS``
    and ``undefined``: why a group has no correlation (e.g. "2 pairs, needs 3"), empty where it has one."""
    groups = {
        "rates": ["dataset_a", "backbone_a", "method_a"],
        "capacity": ["dataset_a", "method_a"],
        "models": ["dataset_a", "model_a", "r_b"],
    }
    rows = []
    for setting, keys in groups.items():
        subset = table[table.setting == setting] if len(table) else table
        for group, frame in subset.groupby([*keys, "metric", "block"], sort=True):
            *values, metric, block = group
            x, y = frame["mean"].to_numpy(), frame["score_diff"].to_numpy()
            group_name = "|".join(str(v) for v in values)
            rows.append(
                {"setting": setting, "group": group_name, "metric": metric, "block": block, **correlate(x, y)}
                | {"undefined": undefined(x, y)}
            )
    return pd.DataFrame(rows, columns=[*CORRELATION_COLUMNS, "undefined"])


def model_table(models: list[Model]) -> pd.DataFrame:
    """Per model and stage: the score and the actual keep rate (mean, std over images)."""
    rows = []
    for model in models:
        extraction = load(model.path)
        base = {"dataset": model.dataset, "model": model.name, "method": model.method, "backbone": model.backbone}
        base |= {"r": model.keep_rate, "metric": extraction.metric, "score": extraction.score}
        if not model.blocks:
            rows.append(base | {"block": -1, "keep_rate_mean": 1.0, "keep_rate_std": 0.0})
            continue
        mean, std = keep_rates(np.stack(extraction.token_counts, 1), extraction.grid**2)
        rows += [
            base | {"block": block, "keep_rate_mean": m, "keep_rate_std": s}
            for block, m, s in zip(model.blocks, mean, std, strict=True)
        ]
    return pd.DataFrame(rows)


@dataclass
class Summary:
    """What :func:`run` compared and what it left out."""

    models: list[Model]
    rows: int
    skipped_files: dict[Path, str] = field(default_factory=dict)
    """Unreadable extraction files → why."""
    skipped_pairs: dict[tuple[Path, Path], str] = field(default_factory=dict)
    """Pairs of files on one dataset that cover different images → how."""
    missing: dict[str, str] = field(default_factory=dict)
    """Settings without a pair → what would give them one."""


def run(extractions: Path, out: Path, settings: tuple[str, ...] = SETTINGS) -> Summary:
    """Compare the extraction files under ``extractions`` and write the tables (see the module docstring) to ``out``.

    Raises:
        FileNotFoundError: no readable extraction file under ``extractions``.
    """
    models, skipped_files = find_models(extractions)
    out.mkdir(parents=True, exist_ok=True)
    table, skipped_pairs = compare(models, settings)
    table.to_csv(out / "comparisons.csv", index=False)
    correlations(table).to_csv(out / "correlations.csv", index=False)
    model_table(models).to_csv(out / "models.csv", index=False)
    depth_maps = {
        f"{m.dataset}|{m.name}": depth_map(m) for m in models if traits(m.method).keeps_patches or m.method == "deit"
    }
    np.savez_compressed(out / "depth_maps.npz", **depth_maps)
    missing = {setting: needs(models, setting) for setting in settings if not pairs(models, setting)}
    for setting, what in missing.items():
        log.info("%s: nothing to compare yet (needs %s)", setting, what)
    return Summary(models, len(table), skipped_files, skipped_pairs, missing)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.compare",
        description="Compare extracted models across keep rates, capacities, methods and datasets (SPEC §9).",
    )
    parser.add_argument("extractions", type=Path, help="folder with extraction files (searched recursively)")
    parser.add_argument("out", type=Path, help="folder for comparisons.csv, correlations.csv, models.csv, depth maps")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS), help="which comparisons")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = run(args.extractions, args.out, tuple(args.settings))
    except FileNotFoundError as error:
        parser.error(str(error))
    notes = ""
    if summary.skipped_files:
        notes += f", {len(summary.skipped_files)} unreadable files skipped"
    if summary.skipped_pairs:
        notes += f", {len(summary.skipped_pairs)} pairs of files on other images left out"
    log.info("%d models, %d comparison rows%s → %s", len(summary.models), summary.rows, notes, args.out)


if __name__ == "__main__":
    main()
