"""Comparisons between extracted models (SPEC §9): across keep rates, backbone capacities, methods and datasets.

``python -m analysis.compare EXTRACTIONS OUT_DIR`` reads every extraction file (``*.npz`` written by
``analysis.extract``) under EXTRACTIONS and writes to OUT_DIR:

- ``comparisons.csv``, tidy: one row per (setting, model pair, block, metric) with the mean and std over images
  (features and heatmaps are one number per pair: std empty), both models' scores and A − B;
- ``correlations.csv``: per setting, group of pairs, metric and block, Spearman and Kendall (with p-values)
  between the metric and the score difference (SPEC §9.6);
- ``models.csv``: per model, its score and per stage the actual keep rate (mean, std over images);
- ``depth_maps.npz``: per model the dataset-averaged token depth map [grid, grid] (SPEC §9.3), key ``dataset|model``.

Pairs, as the study formed them: **rates** same method and backbone, r_A > r_B; **capacity** same method and r,
A the larger backbone; **models** same backbone, different methods at the same r (ℓp, ATS and the DeiT baseline
against every r), both orders; **datasets** same model on two datasets (dataset-averaged patterns only).
"""

import argparse
import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

import tokred
from analysis.extraction import Extraction
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
from analysis.metrics.correlation import correlate
from analysis.metrics.features import compare_features

log = logging.getLogger(__name__)

SETTINGS = ("rates", "capacity", "models", "datasets")
BASELINE = tokred.MethodInfo("DeiT", "no reduction", any_rate=True, input_dependent=False)
"""The unreduced baseline ("deit"): compared with models at every r."""
FEATURE_BLOCKS = (3, 6, 9, 11)
CAPACITIES = ("tiny", "small", "base", "large", "huge")
PAIR = ["setting", "dataset_a", "dataset_b", "model_a", "model_b", "method_a", "method_b", "backbone_a", "backbone_b"]
COLUMNS = [*PAIR, "r_a", "r_b", "score_a", "score_b", "score_diff", "family", "block", "metric", "mean", "std"]


@dataclass(frozen=True, order=True)
class Model:
    """One extraction file's model: what it is and on which data."""

    dataset: str
    backbone: str
    method: str  # "deit" for the unreduced baseline
    keep_rate: float
    blocks: tuple[int, ...]
    path: Path

    @property
    def name(self) -> str:
        return self.backbone if self.method == "deit" else f"{self.backbone}/{self.method}/r{self.keep_rate:g}"

    @property
    def capacity(self) -> int | None:
        """Rank of the backbone's size word (tiny < small < base < ...), None when the name has none."""
        words = self.backbone.replace("-", "_").split("_")
        return next((CAPACITIES.index(w) for w in words if w in CAPACITIES), None)


def find_models(root: Path) -> list[Model]:
    """Every extraction file under ``root``, as models (meta read without loading the arrays)."""
    models = []
    for path in sorted(Path(root).rglob("*.npz")):
        with np.load(path, allow_pickle=False) as archive:
            if "meta" not in archive.files:
                continue
            meta = json.loads(str(archive["meta"]))
        method = meta["method"] if meta["blocks"] else "deit"
        keep_rate = meta["keep_rate"] if meta["blocks"] else 1.0
        models.append(Model(meta["dataset"], meta["model"], method, keep_rate, tuple(meta["blocks"]), path))
    if not models:
        raise FileNotFoundError(f"no extraction files under {root}: write them with python -m analysis.extract")
    return models


def traits(method: str) -> tokred.MethodInfo:
    """What the comparisons need to know of ``method`` (see :class:`tokred.MethodInfo`)."""
    return BASELINE if method == "deit" else tokred.method_info(method)


@cache
def load(path: Path) -> Extraction:
    return Extraction.load(path)


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
    """Per stage: IoU / IoA of the kept patches, homogeneity / completeness / NMI of the partitions."""
    ea, eb = load(a.path), load(b.path)
    if ea.num_images != eb.num_images or not np.array_equal(ea.targets, eb.targets):
        raise ValueError(f"{a.path} and {b.path} cover different images: extract both from the same split")
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


def compare(models: list[Model], settings: tuple[str, ...] = SETTINGS) -> pd.DataFrame:
    """The tidy comparison table of every pair of every setting."""
    work = [(setting, a, b) for setting in settings for a, b in pairs(models, setting)]
    rows = []
    for setting, a, b in tqdm(work, desc="comparing", unit="pair"):
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
    return pd.DataFrame(rows, columns=COLUMNS)


def correlations(table: pd.DataFrame) -> pd.DataFrame:
    """Spearman and Kendall between each metric and the score difference, per group of pairs (SPEC §9.6):
    rates per model family (dataset, backbone, method), capacity per (dataset, method), models per anchor model A
    and partner r. The datasets setting has no score difference to correlate with."""
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
            result = correlate(frame["mean"].to_numpy(), frame["score_diff"].to_numpy())
            group_name = "|".join(str(v) for v in values)
            rows.append({"setting": setting, "group": group_name, "metric": metric, "block": block, **result})
    return pd.DataFrame(rows)


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
        models = find_models(args.extractions)
    except FileNotFoundError as error:
        parser.error(str(error))
    args.out.mkdir(parents=True, exist_ok=True)
    table = compare(models, tuple(args.settings))
    table.to_csv(args.out / "comparisons.csv", index=False)
    correlations(table).to_csv(args.out / "correlations.csv", index=False)
    model_table(models).to_csv(args.out / "models.csv", index=False)
    depth_maps = {
        f"{m.dataset}|{m.name}": depth_map(m) for m in models if traits(m.method).keeps_patches or m.method == "deit"
    }
    np.savez_compressed(args.out / "depth_maps.npz", **depth_maps)
    log.info("%d models, %d comparison rows → %s", len(models), len(table), args.out)


if __name__ == "__main__":
    main()
