"""Deploy a reducing ViT: torch.export's ExportedProgram and ONNX, in eval mode with a dynamic batch.

``python -m tokred.export`` is the command-line form (tokred/export/__main__.py).
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram

from tokred import ops
from tokred.patch import ReducingVisionTransformer

log = logging.getLogger(__name__)

MIN_OPSET = 18


class Deployed(nn.Module):
    """images [B, 3, H, W] → logits [B, classes]; with ``assignments``, also each stage's assignment [B, P] int64
    (the token holding each original patch after the stage, -1 once dropped: what the trace calls assignment)."""

    def __init__(self, model: ReducingVisionTransformer, assignments: bool = False) -> None:
        super().__init__()
        self.model, self.assignments = model, assignments

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, ...]:
        if not self.assignments:
            return self.model(images)
        logits, trace = self.model(images, trace=True)
        return (logits, *(stage.assignment for stage in trace.stages))


def output_names(model: ReducingVisionTransformer, assignments: bool) -> list[str]:
    """ "logits", then "assignment_<block>" per stage with ``assignments``."""
    return ["logits", *(f"assignment_{block}" for block in model.reducers if assignments)]


def default_example(model: ReducingVisionTransformer, batch: int = 2, seed: int | None = None) -> Tensor:
    """Random images [batch, 3, H, W] at the model's size, on its device and in its dtype (from ``seed`` when
    given, else from torch's global generator)."""
    param = next(model.parameters())
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, *model.patch_embed.img_size, generator=generator, dtype=param.dtype)
    return images.to(param.device)


def grouping(assignment: np.ndarray) -> np.ndarray:
    """A stage's assignment [B, P] (token of each patch, -1 dropped) with each image's tokens renumbered in the
    order of their first patch, -1 kept: two assignments group the patches into the same tokens exactly when their
    groupings are equal, whatever order the tokens stand in (a near tie in a ranking may order two kept tokens
    either way, with the same logits)."""
    batch, patches = assignment.shape
    shifted = assignment + 1  # -1 → 0
    first = np.full((batch, shifted.max(initial=0) + 1), patches)
    np.minimum.at(first, (np.arange(batch)[:, None], shifted), np.arange(patches))
    first[:, 0] = -1  # "dropped" ranks first and stays -1
    rank = np.argsort(np.argsort(first, axis=1, kind="stable"), axis=1)
    return np.take_along_axis(rank, shifted, 1) - 1


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """The model in eval mode inside, in its own mode again after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check(model: nn.Module, example: Tensor) -> None:
    if not isinstance(model, ReducingVisionTransformer):
        raise TypeError(f"expected a tokred model (tokred.create_model or tokred.patch), got {type(model).__name__}")
    if not isinstance(example, Tensor) or example.ndim != 4 or example.shape[0] < 2:
        shape = tuple(example.shape) if isinstance(example, Tensor) else type(example).__name__
        raise ValueError(
            f"example must be images [B, 3, H, W] with B >= 2 (a batch of 1 would fix the batch size), got {shape}"
        )


def export_program(
    model: ReducingVisionTransformer, example: Tensor | None = None, assignments: bool = False
) -> ExportedProgram:
    """``torch.export`` of the model in eval mode, the batch dimension dynamic.

    The custom operators stay in the graph (``torch.ops.tokred.*``, run by their kernels): a program loaded with
    ``torch.export.load`` needs ``import tokred`` first. ATS keeps its padded width (no trim in a graph).

    Args:
        model: a reducing ViT.
        example: images [B ≥ 2, 3, H, W] (default: random ones at the model's size).
        assignments: also output each stage's assignment (see :class:`Deployed`).
    """
    example = default_example(model) if example is None else example
    _check(model, example)
    with evaluating(model), torch.no_grad():
        return torch.export.export(
            Deployed(model, assignments).eval(), (example,), dynamic_shapes=({0: Dim("batch", min=1)},), strict=False
        )


def export_onnx(
    model: ReducingVisionTransformer,
    path: str | Path,
    example: Tensor | None = None,
    opset: int = MIN_OPSET,
    assignments: bool = False,
) -> Path:
    """Write the model in eval mode as an ONNX file (a dynamic batch dimension named "batch").

    The custom operators become their pure-PyTorch references (:func:`tokred.ops.references_only`) in standard
    ONNX operators: no custom domain, and no scatter with a reduction (merges are one-hot products while
    exporting), so runtimes without them (TensorRT) take the graph. Input "images", outputs :func:`output_names`.

    Args:
        model, example, assignments: as :func:`export_program`.
        path: the .onnx file to write.
        opset: ONNX opset, at least 18.

    Returns:
        The path written.
    """
    from tokred.export.onnx_functions import cdist, sort_stable  # onnxscript only when exporting to ONNX

    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    example = default_example(model) if example is None else example
    _check(model, example)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    translations = {torch.ops.aten.sort.stable: sort_stable, torch.ops.aten._cdist_forward.default: cdist}
    with evaluating(model), torch.no_grad(), ops.references_only():
        program = torch.onnx.export(
            Deployed(model, assignments).eval(),
            (example,),
            dynamo=True,
            opset_version=opset,
            dynamic_shapes=({0: Dim("batch", min=1)},),
            input_names=["images"],
            output_names=output_names(model, assignments),
            custom_translation_table=translations,
            verbose=False,
        )
    program.save(str(path))
    log.info("wrote %s (opset %d)", path, opset)
    return path


__all__ = ["Deployed", "export_onnx", "export_program", "grouping", "output_names"]
