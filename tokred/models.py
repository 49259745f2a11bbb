"""Create a token-reducing ViT from a timm model name."""

import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from huggingface_hub import constants as hub
from torch import Tensor

from tokred.patch import ReducingVisionTransformer, patch


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the weights hub answers a TCP connection within ``timeout`` seconds."""
    try:
        with socket.create_connection((urlparse(hub.ENDPOINT).hostname or "", 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def offline_hub() -> Iterator[None]:
    """Hub downloads fail at once (cached files still load) instead of retrying for ~50 s."""
    previous, hub.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = previous


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The weights in ``path``: a ``.safetensors`` file, or a ``.pth`` holding a state dict, ``{"model": ...}``
    (train/main.py's checkpoints) or ``{"state_dict": ...}``; tensors only (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load fails in many ways on a damaged file
        raise ValueError(f"{path} is not a readable weights file ({type(error).__name__}: {error})") from error
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict (tensors by name)")
    return state


def classifier_name(name: str) -> str:
    """The module name of the classifier of timm model ``name`` ("head" for ViTs)."""
    cfg = timm.get_pretrained_cfg(name.split(".")[0])
    classifier = getattr(cfg, "classifier", None) or "head"
    return classifier if isinstance(classifier, str) else classifier[0]  # distilled models: (head, head_dist)


def create_backbone(
    name: str,
    pretrained: bool = False,
    pretrained_path: str | Path | None = None,
    num_classes: int | None = None,
    **timm_kwargs: object,
) -> timm.models.VisionTransformer:
    """The plain timm model ``name`` with its weights: timm's pretrained ones (needs the network), or a local
    checkpoint ``pretrained_path`` (``.pth``, a state dict or ``{"model": state_dict}``, or ``.safetensors``;
    implies ``pretrained``). ``num_classes`` gives a classifier of that size: the checkpoint's own where it has
    that size (a fine-tuned model), else a new one; None keeps the checkpoint's classifier, or timm's size without
    a file. Offline without a file the download fails at once with an error that says what to do."""
    kwargs = dict(timm_kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if pretrained_path is not None:
        path = Path(pretrained_path)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights not found: {path}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        head = read_state_dict(path).get(f"{classifier_name(name)}.weight")
        if head is not None:  # timm keeps a file's classifier only when its size is the configuration's
            kwargs["pretrained_cfg_overlay"]["num_classes"] = head.shape[0]
        pretrained = True
    download = pretrained and pretrained_path is None
    try:
        with offline_hub() if download and not hub.HF_HUB_OFFLINE and not hub_reachable() else nullcontext():
            return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError) as error:
        if not download:
            raise
        raise RuntimeError(
            f"could not download the pretrained weights of {name} ({error.__class__.__name__}: {error}). "
            "Offline, pass a local checkpoint with pretrained_path=... (.pth or .safetensors)."
        ) from error


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
    """:func:`create_backbone`, then :func:`tokred.patch`.

    Args:
        name: a timm ViT name (e.g. "deit_small_patch16_224").
        method, keep_rate, reduction_loc: the reduction (see :func:`tokred.patch`).
        pretrained, pretrained_path, num_classes, **timm_kwargs: the backbone (see :func:`create_backbone`;
            timm_kwargs go to ``timm.create_model``: drop_path_rate, img_size, ...).
        method_options: options of the method's reducer.
    """
    model = create_backbone(name, pretrained, pretrained_path, num_classes, **timm_kwargs)
    return patch(model, method, keep_rate, reduction_loc, **(method_options or {}))
