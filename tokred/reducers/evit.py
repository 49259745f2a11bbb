"""EViT: Top-K plus one token that fuses the rest (SPEC §3.3)."""

import torch
from torch import Tensor

from tokred.attention import AttentionExtras
from tokred.reducers.base import Details, MethodInfo, Reducer, class_attention
from tokred.state import TokenState


class EViT(Reducer):
    """In-block: keep the ``target`` most attended spatial tokens (descending score) and append one fused
    token Σ a_j x_j over the others, weighted by their raw class attention a_j (not renormalised). Without a
    class token, a_j is the attention token j receives, averaged over queries and heads."""

    info = MethodInfo("EViT", "pruning + fusion", keeps_patches=True, fixed_count=True)

    hook = "in"
    needs = frozenset({"cls_attn"})

    def forward(self, x: Tensor, state: TokenState, extras: AttentionExtras) -> tuple[Tensor, TokenState, Details]:
        p, n = state.num_prefix, x.shape[1] - state.num_prefix
        if self.target >= n:
            return x, state, {}
        score = class_attention(extras, p)  # [B, N]
        keep = score.topk(self.target, dim=-1).indices  # [B, K]
        assignment = torch.full_like(score, self.target, dtype=torch.long)  # the rest → the fused slot K
        assignment.scatter_(1, keep, torch.arange(self.target, device=x.device).expand_as(keep))
        tokens = x[:, p:]
        fused_weight = torch.where(assignment == self.target, score, 0.0).to(x.dtype)
        fused = (fused_weight[..., None] * tokens).sum(1, keepdim=True)  # [B, 1, C]
        kept = tokens.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))
        stands_for = torch.cat([keep, keep.new_full((x.shape[0], 1), -1)], dim=1)  # the fused token: none
        x, state = state.merge(x, torch.cat([kept, fused], dim=1), assignment, stands_for)
        return x, state, {}
