"""timm's multi-head self-attention, fused, plus only the by-products a reducer asks for."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import Tensor

from tokred.state import TokenState

EXTRAS = frozenset({"cls_attn", "value_norm", "keys", "received"})


@dataclass
class AttentionExtras:
    """By-products of one attention call, each computed only on request (None otherwise).

    cls_attn: [B, H, N] attention probabilities of the class token's query (one row, not the full map); in a
        model without a class token, the attention each token receives, averaged over the real queries (from
        the full map): what reducers that rank by the class token's attention rank by there.
    value_norm: [B, H, N] L2 norm of every value vector (ATS).
    keys: [B, N, d] keys averaged over heads (ToMe).
    received: [B, N] attention each token receives, summed over queries and heads (K-Medoids); the only
        extra that materialises the full [B, H, N, N] map.
    """

    cls_attn: Tensor | None = None
    value_norm: Tensor | None = None
    keys: Tensor | None = None
    received: Tensor | None = None


def policy_softmax(logits: Tensor, policy: Tensor, eps: float = 1e-6) -> Tensor:
    """DynamicViT's masked softmax over the last dim of logits [B, H, N, N] for keep decisions policy [B, N]:
    key j counts when kept or when j is the query itself; eps/N and eps keep empty rows finite. float32."""
    n = logits.shape[-1]
    eye = torch.eye(n, device=logits.device)
    mask = policy[:, None, None, :].float() + (1 - policy[:, None, None, :].float()) * eye
    shifted = (logits.float() - logits.float().amax(-1, keepdim=True)).exp() * mask
    return ((shifted + eps / n) / (shifted.sum(-1, keepdim=True) + eps)).to(logits.dtype)


def attend(attn: Attention, x: Tensor, state: TokenState, wants: frozenset[str]) -> tuple[Tensor, AttentionExtras]:
    """timm ``Attention.forward`` on x [B, N, C] with the token state's key bias, plus ``wants`` extras.

    With a DynamicViT ``state.policy`` [B, N] the full map is formed with :func:`policy_softmax` (no dropout)."""
    batch, n, _ = x.shape
    q, k, v = attn.qkv(x).reshape(batch, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    bias = state.attn_bias(x.dtype)
    extras = AttentionExtras()
    received_row = "cls_attn" in wants and not state.class_token
    if state.policy is not None or "received" in wants or received_row:
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        logits = logits if bias is None else logits + bias
        if state.policy is not None:
            probs = policy_softmax(logits, state.policy)
            out = probs @ v
        else:
            probs = logits.softmax(-1)
            out = attn.attn_drop(probs) @ v
        extras.received = probs.sum((1, 2))
        if received_row and state.mask is None:
            extras.cls_attn = probs.mean(2)
        elif received_row:  # padding slots (ATS) are no queries
            real = state.mask[:, None, :, None].to(probs.dtype)
            extras.cls_attn = (probs * real).sum(2) / real.sum(2)
    else:
        dropout = attn.attn_drop.p if attn.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
    if "cls_attn" in wants and state.class_token:
        logits = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)  # [B, H, 1, N]: O(N) not O(N²)
        extras.cls_attn = (logits if bias is None else logits + bias).softmax(-1)[:, :, 0]
    if "value_norm" in wants:
        extras.value_norm = v.norm(dim=-1)
    if "keys" in wants:
        extras.keys = k.mean(1)
    out = attn.norm(out.transpose(1, 2).reshape(batch, n, attn.attn_dim))
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out)), extras
