"""Create a token-reducing ViT from a timm model name."""

from collections.abc import Sequence
from pathlib import Path

import timm

from tokred.patch import ReducingVisionTransformer, patch


def create_model(
    name: str,
    method: str,
    keep_rate: float = 0.5,
    reduction_loc: Sequence[int] = (3, 6, 9),
    pretrained: bool = False,
    pretrained_path: str | Path | None = None,
    num_classes: int | None = None,
    method_options: dict[str, object] | None = None,
    **timm_kwargs: object,
) -> ReducingVisionTransformer:
    """A timm VisionTransformer (e.g. "deit_small_patch16_224") with its weights, then :func:`tokred.patch`.

    Args:
        name: a timm ViT name.
        method, keep_rate, reduction_loc: the reduction (see :func:`tokred.patch`).
        pretrained: load timm's pretrained weights (needs the network, or ``pretrained_path``).
        pretrained_path: a local checkpoint, ``.pth`` (a state dict or ``{"model": state_dict}``) or
            ``.safetensors``; implies ``pretrained``.
        num_classes: a new classifier of this size (timm's default head otherwise).
        method_options: options of the method's reducer.
        **timm_kwargs: passed to ``timm.create_model`` (drop_path_rate, img_size, ...).
    """
    kwargs = dict(timm_kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if pretrained_path is not None:
        path = Path(pretrained_path)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights not found: {path}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        pretrained = True
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError) as error:
        if not pretrained or pretrained_path is not None:
            raise
        raise RuntimeError(
            f"could not download the pretrained weights of {name} ({error.__class__.__name__}: {error}). "
            "Offline, pass a local checkpoint with pretrained_path=... (.pth or .safetensors)."
        ) from error
    return patch(model, method, keep_rate, reduction_loc, **(method_options or {}))
