"""A small picture of what a trained model keeps: the test images with each stage's reduction drawn on them."""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402

from tokred import ReducingVisionTransformer  # noqa: E402

IMAGENET_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None]
IMAGENET_STD = torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None]


def stage_overlay(image: torch.Tensor, assignment: torch.Tensor, patch: int) -> torch.Tensor:
    """image [3, S, S] in [0, 1] with one stage drawn on it: dropped patches darkened (pruning), or every patch
    tinted by the token that holds it (merging). assignment [P] from tokred's trace."""
    grid = math.isqrt(assignment.numel())
    cells = assignment.reshape(grid, grid).repeat_interleave(patch, 0).repeat_interleave(patch, 1)
    if (assignment < 0).any():
        return image * torch.where(cells < 0, 0.2, 1.0)
    palette = torch.rand(int(assignment.max()) + 1, 3, generator=torch.Generator().manual_seed(0))
    return 0.5 * image + 0.5 * palette[cells].permute(2, 0, 1)


@torch.no_grad()
def kept_tokens_figure(
    model: ReducingVisionTransformer,
    images: torch.Tensor,
    titles: list[str],
    path: Path,
    boxes: list[tuple[int, int, int]] | None = None,
) -> None:
    """Write a PNG: one row per image (images [n, 3, S, S], ImageNet-normalised), then one panel per reduction
    stage; boxes (top, left, side) of the object, when known, are outlined in white."""
    model.eval()
    _, trace = model(images.to(next(model.parameters()).device), trace=True)
    shown = (images.cpu() * IMAGENET_STD + IMAGENET_MEAN).clamp(0, 1)
    patch = model.patch_embed.patch_size[0]
    count, columns = len(images), 1 + len(trace.stages)
    fig, axes = plt.subplots(count, columns, figsize=(2.2 * columns, 2.2 * count), squeeze=False)
    for row, image in enumerate(shown):
        panels = [image] + [stage_overlay(image, s.assignment[row].cpu(), patch) for s in trace.stages]
        names = [titles[row]] + [f"block {s.block}: {int(s.token_counts[row])} tokens" for s in trace.stages]
        for ax, panel, name in zip(axes[row], panels, names, strict=True):
            ax.imshow(panel.permute(1, 2, 0).numpy())
            if boxes is not None:
                top, left, side = boxes[row]
                ax.add_patch(plt.Rectangle((left, top), side, side, fill=False, edgecolor="white", linewidth=0.8))
            ax.set_title(name, fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{model.method}: tokens kept at each stage", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
