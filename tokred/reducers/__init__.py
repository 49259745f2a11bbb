"""The study's reduction methods, one per module, and the registry that builds their stages."""

from collections.abc import Sequence

from torch import nn

from tokred.reducers.ats import ATS
from tokred.reducers.base import MethodInfo, Reducer
from tokred.reducers.dpc_knn import DPCKNN
from tokred.reducers.dynamicvit import DynamicViT, DynamicViTLoss
from tokred.reducers.evit import EViT
from tokred.reducers.kmedoids import KMedoids
from tokred.reducers.options import Option, check_options, method_options, parse_method_options
from tokred.reducers.patch_merger import PatchMerger
from tokred.reducers.radial import L1Pattern, L2Pattern, LinfPattern
from tokred.reducers.sinkhorn import Sinkhorn
from tokred.reducers.sit import SiT
from tokred.reducers.tome import ToMe
from tokred.reducers.topk import TopK
from tokred.schedule import check_reduction_loc, check_schedule

METHODS: dict[str, type[Reducer]] = {
    "l1": L1Pattern,
    "l2": L2Pattern,
    "linf": LinfPattern,
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
"""Method name → reducer class, in the study's order."""


def method_info(method: str) -> MethodInfo:
    """The :class:`MethodInfo` of ``method``; "deit" (the unreduced baseline) has none."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    return METHODS[method].info


def options_of(method: str) -> dict[str, Option]:
    """The options ``method`` takes (name → type and default), from its reducer's signature."""
    method_info(method)  # names the choices for an unknown method
    return method_options(METHODS[method])


def parse_options(method: str, items: Sequence[str]) -> dict[str, object]:
    """``["key=value", ...]`` → the typed options of ``method`` (ValueError naming its options)."""
    method_info(method)
    return parse_method_options(method, METHODS[method], items)


def learned(method: str) -> bool:
    """Whether the stages of ``method`` have parameters of their own (they need training), found by building one."""
    return any(True for _ in build_reducers(method, 8, 16, 4, 0.5, (1,), {}).parameters())


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
    targets = check_schedule(keep_rate, loc, num_patches)
    stages = kind.stages(dim, targets, num_patches, **check_options(method, kind, options))
    return nn.ModuleDict({str(block): stage for block, stage in zip(loc, stages, strict=True)})


__all__ = [
    "METHODS",
    "DynamicViTLoss",
    "MethodInfo",
    "Reducer",
    "build_reducers",
    "learned",
    "method_info",
    "options_of",
    "parse_options",
]
