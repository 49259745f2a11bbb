"""A small picture of what a trained model keeps: the test images with each stage's reduction drawn on them."""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from tokred import ReducingVisionTransformer  # noqa: E402
from train.data import DemoDigits  # noqa: E402


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
def kept_tokens_figure(model: ReducingVisionTransformer, data: DemoDigits, path: Path, count: int = 4) -> None:
    """Write a PNG: one row per test image, its digit box outlined, then one panel per reduction stage."""
    model.eval()
    device = next(model.parameters()).device
    items = [data.item(i) for i in range(count)]
    batch = torch.stack([data[i][0] for i in range(count)]).to(device)
    _, trace = model(batch, trace=True)
    patch = model.patch_embed.patch_size[0]
    columns = 1 + len(trace.stages)
    fig, axes = plt.subplots(count, columns, figsize=(2.2 * columns, 2.2 * count), squeeze=False)
    for row, (image, label, (top, left, side)) in enumerate(items):
        panels = [image] + [stage_overlay(image, s.assignment[row].cpu(), patch) for s in trace.stages]
        titles = [f"label {label}"] + [f"block {s.block}: {int(s.token_counts[row])} tokens" for s in trace.stages]
        for ax, panel, title in zip(axes[row], panels, titles, strict=True):
            ax.imshow(panel.permute(1, 2, 0).clamp(0, 1).numpy())
            ax.add_patch(plt.Rectangle((left, top), side, side, fill=False, edgecolor="white", linewidth=0.8))
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{model.method}: tokens kept at each stage (digit box in white)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
