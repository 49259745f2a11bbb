"""Top-K: keep the spatial tokens the class token attends to most (SPEC §3.2)."""

from torch import Tensor

from tokred.attention import AttentionExtras
from tokred.reducers.base import Details, MethodInfo, Reducer, class_attention
from tokred.state import TokenState


class TopK(Reducer):
    """In-block: keep the ``target`` spatial tokens with the highest head-averaged class attention, in
    descending score order. A stage that would keep every token leaves the tokens as they are. Without a class
    token: the attention each token receives, averaged over queries and heads."""

    info = MethodInfo("Top-K", "pruning", keeps_patches=True, fixed_count=True)

    hook = "in"
    needs = frozenset({"cls_attn"})

    def forward(self, x: Tensor, state: TokenState, extras: AttentionExtras) -> tuple[Tensor, TokenState, Details]:
        if self.target >= x.shape[1] - state.num_prefix:
            return x, state, {}
        keep = class_attention(extras, state.num_prefix).topk(self.target, dim=-1).indices
        x, state = state.select(x, keep)
        return x, state, {}
