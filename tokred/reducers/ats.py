"""ATS: adaptive token sampling by inverting the CDF of significance scores (SPEC §3.5)."""

import torch
from torch import Tensor

from tokred import ops
from tokred.attention import AttentionExtras
from tokred.reducers.base import Details, MethodInfo, Reducer
from tokred.state import TokenState


class ATS(Reducer):
    """In-block: significance S_j = Σ_h A[h, cls, j] ‖v_hj‖ over the spatial tokens, K = ``target`` quantiles
    of its CDF (at most K distinct tokens kept, fewer when the mass is concentrated), padding masked. Without a
    class token, A[h, cls, j] is the attention token j receives in head h, averaged over the real queries.

    Options:
        rule: "nearest" (the study) or "inverse" (textbook inverse transform).
        trim: drop padding columns no image uses, as the study did (one host sync per stage); False keeps the
            sequence at the upper bound, free of syncs (for CUDA graphs). Under torch.jit.trace, torch.compile
            and torch.export the stage never trims, so a graph does not freeze one batch's width or break at the
            sync (same logits: the padding is masked).
    """

    info = MethodInfo("ATS", "adaptive pruning", keeps_patches=True, any_rate=True)

    hook = "in"
    needs = frozenset({"cls_attn", "value_norm"})

    def __init__(self, dim: int, target: int, rule: str = "nearest", trim: bool = True) -> None:
        super().__init__(dim, target)
        self.rule, self.trim = rule, trim

    def forward(self, x: Tensor, state: TokenState, extras: AttentionExtras) -> tuple[Tensor, TokenState, Details]:
        assert extras.cls_attn is not None and extras.value_norm is not None
        p = state.num_prefix
        significance = (extras.cls_attn[:, :, p:] * extras.value_norm[:, :, p:]).sum(1)  # [B, N]
        sample = ops.ats_sample(significance.detach().float(), state.spatial_mask(x), self.target, self.rule)
        if self.trim and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            sample = ops.trim_to_batch_max(sample)
        x, state = state.select(x, sample.ids, sample.mask)
        return x, state, {}
