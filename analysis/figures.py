"""The study's figures from the comparison tables and extraction files, each written as PNG and PDF.

``python -m analysis.figures COMPARISONS_DIR OUT_DIR [--extractions DIR]`` draws what the tables of
``analysis.compare`` hold (and, given the extraction files, the reduction patterns on sample images):

- ``consistency_<setting>_<metric>``: IoA / IoU / Homogeneity / NMI per stage and method (supplementary Figs. 2–5);
- ``ats_keep_rates``: ATS's actual keep rate per stage and r (Fig. 1);
- ``lp_comparison``: IoU of the learned patterns with the ℓp radial ones (Fig. 7);
- ``proxy_<setting>_<metric>``: a similarity against the score difference, with Spearman's ρ (Figs. 8–23; "ρ
  undefined" and why, e.g. "2 pairs, needs 3", where a block has no rank correlation);
- ``dataset_similarity``: KL, JSD, PCC, SCC, SIM, EMD of the averaged patterns across datasets (Fig. 6);
- ``depth_<dataset>``: dataset-averaged token depth maps (Figs. 24–29);
- ``patterns_<dataset>_<image>``: each model's stages drawn on sample images (Figs. 30–37); models whose extractions
  cover other images of the dataset (another split or ``--limit``) get figures of their own,
  ``patterns_<dataset>_<set>_<image>``.
"""

import argparse
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import tokred  # noqa: E402
from analysis.collate import BACKBONES, METHODS  # noqa: E402
from analysis.metrics.correlation import correlate, undefined  # noqa: E402
from analysis.models import Model, find_models, load, same_images  # noqa: E402

log = logging.getLogger(__name__)

CONSISTENCY = {"rates": ("IoA", "Homogeneity"), "capacity": ("IoU", "NMI")}
PROXIES = {"models": ("IoU", "NMI", "Procrustes", "CKA", "PWCCA")}
LP = tuple(key for key, reducer in tokred.METHODS.items() if not reducer.info.input_dependent)
"""The fixed radial patterns (ℓ1, ℓ2, ℓ∞)."""


def label(method: str) -> str:
    return METHODS.get(method, "DeiT" if method == "deit" else method)


def save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    """Write ``name``.png and ``name``.pdf into ``out``; returns the PNG and PDF paths."""
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return paths


def panels(count: int, width: float = 3.6, height: float = 3.0) -> tuple[plt.Figure, list[plt.Axes]]:
    fig, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False, layout="constrained")
    return fig, list(axes[0])


def consistency(table: pd.DataFrame, setting: str, metric: str, out: Path) -> list[Path]:
    """Per dataset, the mean over pairs of ``metric`` at each stage, one line per method (Figs. 2–5)."""
    rows = table[(table.setting == setting) & (table.metric == metric)]
    if rows.empty:
        return []
    datasets = sorted(rows.dataset_a.unique())
    fig, axes = panels(len(datasets))
    for ax, dataset in zip(axes, datasets, strict=True):
        for method, frame in rows[rows.dataset_a == dataset].groupby("method_a"):
            by_stage = frame.groupby("block")["mean"]
            ax.errorbar(
                by_stage.mean().index,
                by_stage.mean(),
                by_stage.std().fillna(0),
                marker="o",
                capsize=3,
                label=label(method),
            )
        bound = table[
            (table.setting == setting) & (table.metric == f"{metric}_lower_bound") & (table.dataset_a == dataset)
        ]
        if not bound.empty:
            lowest = bound.groupby("block")["mean"].min()
            ax.plot(lowest.index, lowest, "k--", linewidth=0.8, label="lower bound (min)")
        ax.set(title=dataset, xlabel="block of the stage", ylabel=metric, ylim=(0, 1.02))
        ax.legend(fontsize=7)
    fig.suptitle(f"{metric} across {'keep rates' if setting == 'rates' else 'backbone capacities'}", fontsize=10)
    return save(fig, out, f"consistency_{setting}_{metric}")


def ats_keep_rates(models: pd.DataFrame, out: Path) -> list[Path]:
    """ATS's actual keep rate per stage for each r against the nominal r^s (Fig. 1)."""
    rows = models[models.method == "ats"]
    if rows.empty:
        return []
    datasets = sorted(rows.dataset.unique())
    fig, axes = panels(len(datasets))
    for ax, dataset in zip(axes, datasets, strict=True):
        for (backbone, r), frame in rows[rows.dataset == dataset].groupby(["backbone", "r"]):
            line = ax.errorbar(
                frame.block,
                frame.keep_rate_mean,
                frame.keep_rate_std,
                marker="o",
                capsize=3,
                label=f"{backbone} r={r:g}",
            )
            stages = np.arange(1, len(frame) + 1)
            ax.plot(frame.block, r**stages, "--", color=line[0].get_color(), linewidth=0.8)
        ax.set(title=dataset, xlabel="block of the stage", ylabel="kept tokens / 196", ylim=(0, 1))
        ax.legend(fontsize=7)
    fig.suptitle("ATS: actual keep rate (dashed: the upper bound r^s)", fontsize=10)
    return save(fig, out, "ats_keep_rates")


def lp_comparison(table: pd.DataFrame, out: Path) -> list[Path]:
    """IoU between each ℓp radial pattern and the learned pruning patterns at the same r, per stage (Fig. 7)."""
    rows = table[(table.setting == "models") & (table.metric == "IoU") & table.method_a.isin(LP)]
    rows = rows[~rows.method_b.isin(LP) & (rows.r_a == rows.r_b)]
    if rows.empty:
        return []
    patterns = [p for p in LP if p in set(rows.method_a)]
    fig, axes = panels(len(patterns))
    for ax, pattern in zip(axes, patterns, strict=True):
        for method, frame in rows[rows.method_a == pattern].groupby("method_b"):
            by_stage = frame.groupby("block")["mean"].mean()
            ax.plot(by_stage.index, by_stage, marker="o", label=label(method))
        ax.set(title=f"against {label(pattern)}", xlabel="block of the stage", ylabel="IoU", ylim=(0, 1))
        ax.legend(fontsize=7)
    return save(fig, out, "lp_comparison")


def proxy(table: pd.DataFrame, setting: str, metric: str, out: Path) -> list[Path]:
    """Per block, ``metric`` of each pair against its score difference, with Spearman's ρ (Figs. 8–23)."""
    rows = table[(table.setting == setting) & (table.metric == metric)]
    if rows.empty:
        return []
    blocks = sorted(rows.block.unique())
    fig, axes = panels(len(blocks))
    for ax, block in zip(axes, blocks, strict=True):
        frame = rows[rows.block == block]
        for anchor, points in frame.groupby("model_a"):
            ax.scatter(points["mean"], points.score_diff, s=14, label=anchor)
        x, y = frame["mean"].to_numpy(), frame.score_diff.to_numpy()
        why = undefined(x, y)
        rho = f"ρ undefined: {why}" if why else f"ρ = {correlate(x, y)['spearman']:.2f} (n = {len(x)})"
        ax.set(title=f"block {block}: {rho}", xlabel=metric, ylabel="score A − B")
        ax.legend(fontsize=6)
    fig.suptitle(f"{metric} as a proxy of the performance difference ({setting})", fontsize=10)
    return save(fig, out, f"proxy_{setting}_{metric}")


def dataset_similarity(table: pd.DataFrame, out: Path) -> list[Path]:
    """The saliency suite between one model's dataset-averaged patterns on two datasets, per method (Fig. 6)."""
    rows = table[table.setting == "datasets"]
    if rows.empty:
        return []
    metrics = list(dict.fromkeys(rows.metric))
    fig, axes = panels(len(metrics), 2.8, 3.0)
    for ax, metric in zip(axes, metrics, strict=True):
        values = rows[rows.metric == metric].groupby("method_a")["mean"]
        ax.bar([label(m) for m in values.mean().index], values.mean(), yerr=values.std().fillna(0), capsize=3)
        ax.set_title(metric)
        ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    fig.suptitle("dataset-averaged patterns compared across datasets (mean over dataset pairs)", fontsize=10)
    return save(fig, out, "dataset_similarity")


def depth_maps(maps: dict[str, np.ndarray], out: Path) -> list[Path]:
    """Per dataset, every model's dataset-averaged token depth map (Figs. 24–29)."""
    paths = []
    for dataset in sorted({key.split("|")[0] for key in maps}):
        names = sorted(key for key in maps if key.startswith(f"{dataset}|"))
        fig, axes = panels(len(names), 2.6, 2.6)
        for ax, key in zip(axes, names, strict=True):
            image = ax.imshow(maps[key], vmin=0, vmax=12, cmap="viridis")
            ax.set_title(key.split("|")[1], fontsize=7)
            ax.axis("off")
        fig.colorbar(image, ax=axes, shrink=0.8, label="mean depth (blocks)")
        fig.suptitle(f"{dataset}: dataset-averaged token depth", fontsize=10)
        paths += save(fig, out, f"depth_{dataset}")
    return paths


def image_sets(models: list[Model]) -> list[list[Model]]:
    """The reduced models grouped by the images their extractions cover (one dataset split, one ``--limit``)."""
    groups: list[list[Model]] = []
    for model in (m for m in models if m.blocks):
        group = next((g for g in groups if not same_images(load(g[0].path), load(model.path))), None)
        if group is None:
            groups.append([model])
        else:
            group.append(model)
    return groups


def patterns(models: list[Model], out: Path, count: int = 3, seed: int = 0) -> list[Path]:
    """Per dataset, ``count`` sample images (seeded): one figure each, a row per model with its stages drawn on
    the image — pruned patches darkened, merged ones tinted per token (Figs. 30–37). Models whose extractions
    cover other images (see :func:`image_sets`) are drawn in figures of their own."""
    paths = []
    groups = image_sets(models)
    for dataset in sorted({group[0].dataset for group in groups}):
        sets = [group for group in groups if group[0].dataset == dataset]
        for k, reduced in enumerate(sets):
            paths += pattern_figures(reduced, out, dataset if len(sets) == 1 else f"{dataset}_{k}", count, seed)
    return paths


def pattern_figures(reduced: list[Model], out: Path, tag: str, count: int, seed: int) -> list[Path]:
    """The figures ``patterns_<tag>_<image>`` of models whose extractions cover the same images."""
    from train.data import build_transform, load_dataset
    from train.figures import IMAGENET_MEAN, IMAGENET_STD, stage_overlay

    first = load(reduced[0].path)
    config = first.config
    try:
        data = load_dataset(
            first.dataset,
            config.get("data") if first.dataset == config.get("dataset") else None,
            first.split,
            build_transform(first.dataset, False, None, 0, 0, 0),
            demo_length=config["demo_train_size" if first.split == "train" else "demo_test_size"],
            seed=config["seed"],
        )
    except (FileNotFoundError, ValueError) as error:
        log.warning("no pattern figures of %s/%s: its images are not here (%s)", first.dataset, first.split, error)
        return []
    stages = max(len(m.blocks) for m in reduced)
    paths = []
    for index in np.random.default_rng(seed).choice(first.num_images, min(count, first.num_images), replace=False):
        image = (data[int(index)][0] * IMAGENET_STD + IMAGENET_MEAN).clamp(0, 1)
        patch = image.shape[-1] // first.grid
        fig, axes = plt.subplots(
            len(reduced),
            1 + stages,
            figsize=(2 * (1 + stages), 2 * len(reduced)),
            squeeze=False,
            layout="constrained",
        )
        for row, model in zip(axes, reduced, strict=True):
            maps = [torch.from_numpy(a[index].astype(np.int64)) for a in load(model.path).assignment]
            drawn = [image] + [stage_overlay(image, m, patch) for m in maps]
            name = f"{BACKBONES.get(model.backbone, model.backbone)} {label(model.method)} r={model.keep_rate:g}"
            titles = [name] + [f"block {b}" for b in model.blocks]
            for ax in row:
                ax.axis("off")
            for ax, panel, title in zip(row[: len(drawn)], drawn, titles, strict=True):
                ax.imshow(panel.permute(1, 2, 0).numpy())
                ax.set_title(title, fontsize=8)
        fig.suptitle(f"{first.dataset} ({first.split} split), image {index}", fontsize=9)
        paths += save(fig, out, f"patterns_{tag}_{index}")
    return paths


COMPARE_OUTPUTS = ("comparisons.csv", "models.csv", "depth_maps.npz")
"""What draw_all reads from the output folder of analysis.compare."""


def draw_all(comparisons: Path, out: Path, extractions: Path | None = None) -> list[Path]:
    """Every figure the tables in ``comparisons`` (and the files under ``extractions``) allow; the PNG and PDF paths.

    Raises:
        FileNotFoundError: ``comparisons`` lacks a file of COMPARE_OUTPUTS, or ``extractions`` holds no extraction.
    """
    missing = [name for name in COMPARE_OUTPUTS if not (comparisons / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{comparisons} has no {', '.join(missing)}: pass the output folder of python -m analysis.compare"
        )
    out.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(comparisons / "comparisons.csv")
    paths = []
    if not table.empty:
        for setting, metrics in CONSISTENCY.items():
            paths += [p for metric in metrics for p in consistency(table, setting, metric, out)]
        paths += lp_comparison(table, out)
        paths += dataset_similarity(table, out)
        for setting, metrics in PROXIES.items():
            paths += [p for metric in metrics for p in proxy(table, setting, metric, out)]
    paths += ats_keep_rates(pd.read_csv(comparisons / "models.csv"), out)
    with np.load(comparisons / "depth_maps.npz") as archive:
        paths += depth_maps({key: archive[key] for key in archive.files}, out)
    if extractions is not None:
        paths += patterns(find_models(extractions)[0], out)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.figures", description=__doc__.split("\n\n")[0])
    parser.add_argument("comparisons", type=Path, help="the output folder of python -m analysis.compare")
    parser.add_argument("out", type=Path, help="folder for the PNG and PDF figures")
    parser.add_argument("--extractions", type=Path, help="extraction files: also draw the patterns on sample images")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        paths = draw_all(args.comparisons, args.out, args.extractions)
    except FileNotFoundError as error:
        parser.error(str(error))
    log.info("%d figures → %s", len(paths) // 2, args.out)


if __name__ == "__main__":
    main()
