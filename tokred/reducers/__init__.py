"""The study's reduction methods, one per module, and the registry that builds their stages."""

from collections.abc import Sequence

from torch import nn

from tokred.reducers.ats import ATS
from tokred.reducers.base import Reducer
from tokred.reducers.dpc_knn import DPCKNN
from tokred.reducers.dynamicvit import DynamicViT, DynamicViTLoss
from tokred.reducers.evit import EViT
from tokred.reducers.kmedoids import KMedoids
from tokred.reducers.patch_merger import PatchMerger
from tokred.reducers.radial import Radial
from tokred.reducers.sinkhorn import Sinkhorn
from tokred.reducers.sit import SiT
from tokred.reducers.tome import ToMe
from tokred.reducers.topk import TopK
from tokred.schedule import check_reduction_loc, stage_targets

METHODS: dict[str, type[Reducer]] = {
    "l1": Radial,
    "l2": Radial,
    "linf": Radial,
    "topk": TopK,
    "evit": EViT,
    "dynamicvit": DynamicViT,
    "ats": ATS,
    "tome": ToMe,
    "kmedoids": KMedoids,
    "dpc_knn": DPCKNN,
    "sit": SiT,
    "patchmerger": PatchMerger,
    "sinkhorn": Sinkhorn,
}


def build_reducers(
    method: str,
    dim: int,
    num_patches: int,
    depth: int,
    keep_rate: float,
    reduction_loc: Sequence[int],
    options: dict[str, object],
) -> nn.ModuleDict:
    """The stages of ``method`` as a ModuleDict keyed by block index."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    kind = METHODS[method]
    loc = check_reduction_loc(reduction_loc, depth, first=kind.first_block)
    targets = stage_targets(keep_rate, len(loc), num_patches)
    if kind is Radial:
        options = {**options, "norm": method}
    try:
        stages = kind.stages(dim, targets, num_patches, **options)
    except TypeError as error:
        raise TypeError(f"bad option for method {method!r}: {error}") from error
    return nn.ModuleDict({str(block): stage for block, stage in zip(loc, stages, strict=True)})


__all__ = ["METHODS", "DynamicViTLoss", "Reducer", "build_reducers"]
