"""Make a timm VisionTransformer reduce tokens: a class swap on the model and its blocks, new modules added."""

from collections.abc import Sequence

import torch
from timm.layers import Attention
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tokred.attention import AttentionExtras, attend
from tokred.reducers import METHODS, build_reducers
from tokred.reducers.base import Reducer
from tokred.schedule import check_keep_rate
from tokred.state import TokenState
from tokred.trace import Trace


class ReducingBlock(Block):
    """timm ``Block``.

    Modifications: attention runs through :func:`tokred.attention.attend` with the token state's key bias
    (padding masks, proportional attention) and computes the extras a reducer needs; an in-block reducer
    runs between the attention and MLP halves.
    """

    def forward(  # type: ignore[override]
        self, x: Tensor, state: TokenState, wants: frozenset[str], reducer: Reducer | None = None
    ) -> tuple[Tensor, TokenState, AttentionExtras, dict]:
        out, extras = attend(self.attn, self.norm1(x), state, wants)
        x = x + self.drop_path1(self.ls1(out))
        details: dict = {}
        if reducer is not None:
            x, state, details = reducer(x, state, extras)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, state, extras, details


class ReducingVisionTransformer(VisionTransformer):
    """timm ``VisionTransformer``.

    Modifications: ``self.reducers`` (a ModuleDict keyed by block index) reduce tokens at their blocks;
    ``forward(x, trace=True)`` returns ``(logits, Trace)``; ``set_grad_checkpointing()`` checkpoints every block
    (pre-block reducers run outside); ``forward_intermediates`` returns the reduced token sets; pooling without a
    class token leaves padding out (:meth:`pool`). ``keep_rate`` is read-only. Backbone parameters and their
    names are unchanged.
    """

    reducers: nn.ModuleDict
    method: str
    _keep_rate: float

    @property
    def keep_rate(self) -> float:
        """r, fixed when the model is built."""
        return self._keep_rate

    @keep_rate.setter
    def keep_rate(self, value: float) -> None:
        raise AttributeError(
            f"keep_rate is fixed when the model is built (here {self._keep_rate}): it sets each stage's token count "
            f"K_s, which sizes the stages' learned modules. For keep rate {value!r}, build another model: "
            f"tokred.create_model(name, {self.method!r}, keep_rate={value!r}) or tokred.patch on a fresh timm model"
        )

    def forward_features(  # type: ignore[override]
        self, x: Tensor, trace: Trace | None = None, decisions: list[Tensor] | None = None
    ) -> Tensor:
        """Tokens [B, N', C] after the final norm; fills ``trace`` and DynamicViT's training ``decisions``."""
        x, _, _ = self._run_blocks(x, trace, decisions)
        return self.norm(x)

    def _run_blocks(
        self,
        x: Tensor,
        trace: Trace | None = None,
        decisions: list[Tensor] | None = None,
        take: Sequence[int] = (),
        last: int | None = None,
    ) -> tuple[Tensor, TokenState, list[Tensor]]:
        """Images x [B, 3, H, W] → the tokens [B, N', C] after block ``last`` (default: the last block), their
        state, and the tokens after each block in ``take``, in block order (before the final norm)."""
        self._check_images(x)
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        state = TokenState.start(x, self.num_prefix_tokens, trace is not None, self.has_class_token)
        for reducer in self.reducers.values():
            state = reducer.prepare(x, state)
        extras = AttentionExtras()
        checkpointing = self.grad_checkpointing and torch.is_grad_enabled()
        taken: list[Tensor] = []
        for index, block in enumerate(self.blocks):
            reducer = self.reducer_at(index)
            details: dict = {}
            if reducer is not None and reducer.hook == "pre":
                x, state, details = reducer(x, state, extras)
            in_block = reducer if reducer is not None and reducer.hook == "in" else None
            args = (x, state, self._wants(index), in_block)
            x, state, extras, in_details = (
                checkpoint(block, *args, use_reentrant=False) if checkpointing else block(*args)
            )
            details |= in_details
            if decisions is not None and "decision" in details:
                decisions.append(details["decision"])
            if trace is not None:
                if reducer is not None:
                    trace.stages.append(
                        state.stage_trace(x, index, **{k: v for k, v in details.items() if k != "decision"})
                    )
                trace.cls_features.append(x[:, 0] if self.has_class_token else self.pool(x, "avg", state))
            if index in take:
                taken.append(x)
            if index == last:
                break
        return x, state, taken

    def _check_images(self, x: Tensor) -> None:
        if x.ndim != 4:
            hint = ": for one image [3, H, W] pass x[None]" if x.ndim == 3 else ""
            raise ValueError(f"expected a batch of images [B, 3, H, W], got shape {tuple(x.shape)}{hint}")
        if tuple(x.shape[-2:]) != tuple(self.patch_embed.img_size):
            raise ValueError(
                f"this model was built for {tuple(self.patch_embed.img_size)} images, got {tuple(x.shape[-2:])}: "
                "resize the input or create the model with img_size=..."
            )

    def reducer_at(self, index: int) -> Reducer | None:
        key = str(index)
        return self.reducers[key] if key in self.reducers else None  # noqa: SIM401 (ModuleDict has no .get)

    def _wants(self, index: int) -> frozenset[str]:
        """Extras block ``index`` computes: for its own in-block reducer or the next block's pre-block reducer."""
        wants: frozenset[str] = frozenset()
        own, following = self.reducer_at(index), self.reducer_at(index + 1)
        if own is not None and own.hook == "in":
            wants |= own.needs
        if following is not None and following.hook == "pre":
            wants |= following.needs
        return wants

    def forward(  # type: ignore[override]
        self, x: Tensor, trace: bool = False, aux: bool = False
    ) -> Tensor | tuple[Tensor, Trace] | tuple[Tensor, dict[str, object]]:
        """Logits [B, classes]; with ``trace``, also the :class:`Trace`; with ``aux`` (DynamicViT training),
        also {"decisions": per-stage keep decisions [B, P], "tokens": final normed spatial tokens [B, P, C]}."""
        record = Trace(self.method) if trace else None
        decisions: list[Tensor] | None = [] if aux else None
        x, state, _ = self._run_blocks(x, record, decisions)
        features = self.norm(x)
        logits = self.forward_head(features, state=state)
        if record is not None:
            return logits, record
        if decisions is not None:
            return logits, {"decisions": decisions, "tokens": features[:, self.num_prefix_tokens :]}
        return logits

    def pool(self, x: Tensor, pool_type: str | None = None, state: TokenState | None = None) -> Tensor:
        """timm's pooling of tokens x [B, N, C] → [B, C].

        Modifications: given the token state, pooling over tokens follows it: "avg", "max" and "avgmax" leave
        ATS's padding slots and tokens dropped in DynamicViT training out, and "avg" weights each token by the
        patches it holds where sizes are tracked (ToMe, as its proportional attention does); "map" attention
        pooling gets the blocks' key bias (padding masked, ToMe's log sizes). "token" reads the class token. An image
        whose tokens DynamicViT training all dropped pools them all, unweighted (there is nothing to leave out).
        """
        weight = None if state is None else state.token_weight(x)
        pool_type = self.global_pool if pool_type is None else pool_type
        if weight is None or (pool_type == "token" and self.attn_pool is None):
            return super().pool(x, pool_type)
        start = 0 if self.pool_include_prefix else self.num_prefix_tokens
        counted = (weight[:, start:] > 0).any(1, keepdim=True)  # [B, 1]: False where training dropped every token
        if self.attn_pool is not None:
            bias = state.attn_bias(x.dtype)
            if state.policy is not None:
                dropped = (state.policy == 0) & counted
                masked = torch.zeros_like(state.policy, dtype=x.dtype).masked_fill(dropped, torch.finfo(x.dtype).min)
                bias = masked[:, None, None, :] if bias is None else bias + masked[:, None, None, :]
            return self.attn_pool(x[:, start:], attn_mask=None if bias is None else bias[..., start:])
        tokens, weight = x[:, start:], torch.where(counted, weight[:, start:], 1.0)[..., None]
        mean = (tokens * weight).sum(1) / weight.sum(1)
        if pool_type == "avg":
            return mean
        top = tokens.masked_fill(weight == 0, -torch.inf).amax(1)
        return top if pool_type == "max" else 0.5 * (top + mean)

    def forward_head(self, x: Tensor, pre_logits: bool = False, state: TokenState | None = None) -> Tensor:
        """timm's head on the final normed tokens x [B, N, C]; pass the token state to pool by it (:meth:`pool`)."""
        x = self.head_drop(self.fc_norm(self.pool(x, state=state)))
        return x if pre_logits else self.head(x)

    def forward_intermediates(  # type: ignore[override]
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> list | tuple[Tensor, list] | dict[str, object]:
        """timm's ``forward_intermediates`` (same arguments and outputs) on the reducing forward.

        Modifications: the intermediate of block i is the token set that block outputs, so from the first
        reduction block on it holds that stage's reduced spatial tokens [B, N_i, C] in the method's order (kept
        tokens, merged tokens, EViT's fused token last, ATS's masked padding slots), not the patch grid: those
        blocks need ``output_fmt="NLC"``. DynamicViT in training keeps all tokens (masked). ``attn_mask`` and
        ``is_causal`` are refused (the reducers set the attention bias).
        """
        if attn_mask is not None or is_causal:
            raise ValueError(
                "tokred's reducing forward sets its own attention bias: attn_mask and is_causal are refused"
            )
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        first = min(map(int, self.reducers), default=len(self.blocks))
        reduced = sorted(i for i in take if i >= first)
        if output_fmt == "NCHW" and reduced:
            raise ValueError(
                f"tokred ({self.method}): blocks {reduced} output reduced token sets, not the patch grid (the first "
                f"reduction is at block {first}): pass output_fmt='NLC', or indices before block {first}; "
                "model(x, trace=True) tells where each patch went"
            )
        height, width = x.shape[-2:]
        x, _, intermediates = self._run_blocks(x, take=take, last=max_index if stop_early else None)
        p = self.num_prefix_tokens
        intermediates = [self.norm(y) if norm else y for y in intermediates]
        prefix_tokens = [y[:, :p] for y in intermediates]
        intermediates = [y[:, p:] for y in intermediates]
        if output_fmt == "NCHW":
            grid_h, grid_w = self.patch_embed.dynamic_feat_size((height, width))
            intermediates = [
                y.reshape(len(y), grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates
            ]
        if output_dict:
            result: dict[str, object] = {"image_intermediates": intermediates}
            if return_prefix_tokens and p:
                result["image_intermediates_prefix"] = prefix_tokens
            if not intermediates_only:
                result["image_features"] = self.norm(x)
            return result
        if return_prefix_tokens and p:
            intermediates = list(zip(intermediates, prefix_tokens, strict=True))
        return intermediates if intermediates_only else (self.norm(x), intermediates)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """timm's, plus: the stages at pruned blocks go too."""
        take = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        for key in [k for k in self.reducers if int(k) >= len(self.blocks)]:
            del self.reducers[key]
        return take

    @property
    def keep_ratios(self) -> list[float]:
        """r^s for every stage: DynamicViT's ratio-loss targets."""
        return [self.keep_rate ** (s + 1) for s in range(len(self.reducers))]


POOLS = ("token", "avg", "max", "avgmax", "map")
"""The heads' pooling a reducing ViT supports (timm's ``global_pool``)."""

OTHER_CLASSES = {
    "Eva": "EVA's blocks (rotary position embeddings, SwiGLU MLPs) are its own classes, not timm's Block",
    "Beit": "BEiT's blocks add a relative position bias tied to the full patch grid",
    "SwinTransformer": "Swin attends within shifted windows of a fixed patch grid and merges patches hierarchically",
}
"""Why models timm builds from other classes than VisionTransformer are refused, for the common ones."""


def check_supported(model: nn.Module) -> None:
    """Refuse, with the reason, what the reducing forward does not reproduce."""
    if not isinstance(model, VisionTransformer):
        name = type(model).__name__
        why = OTHER_CLASSES.get(name, "its blocks are not timm's VisionTransformer blocks")
        raise TypeError(
            f"tokred.patch needs a timm VisionTransformer (DeiT, DeiT-III, AugReg, CLIP, DINOv2, SigLIP, ...), "
            f"got {name}: {why}"
        )
    if model.global_pool not in POOLS:
        raise ValueError(
            f"global_pool={model.global_pool!r} is not supported: tokred pools the reduced tokens by {POOLS} "
            "(for the tokens themselves use forward_features or forward_intermediates)"
        )
    if getattr(model, "dynamic_img_size", False):
        raise ValueError("dynamic_img_size=True is not supported: reduction schedules assume a fixed patch grid")
    for index, block in enumerate(model.blocks):
        if type(block) not in (Block, ReducingBlock) or type(block.attn) is not Attention:
            raise ValueError(
                f"block {index} is a {type(block).__name__} with {type(block.attn).__name__}; tokred supports timm's "
                "standard Block and Attention (LayerScale, qk-norm and register tokens included)"
            )


def init_new_modules(module: nn.Module) -> None:
    """timm's ViT initialisation for new modules (SPEC §1): Linear trunc-normal(0.02) with zero bias,
    LayerNorm ones and zeros; bare parameters keep their own initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def patch(
    model: VisionTransformer,
    method: str,
    keep_rate: float = 0.5,
    reduction_loc: Sequence[int] = (3, 6, 9),
    **options: object,
) -> ReducingVisionTransformer:
    """Make ``model`` (its weights already loaded) reduce tokens with ``method``, in place.

    Args:
        model: a timm VisionTransformer with a class token.
        method: one of :data:`tokred.reducers.METHODS`.
        keep_rate: r in (0, 1]; stage s keeps floor(P r^s) spatial tokens (per-method details in SPEC §0.1).
        reduction_loc: the blocks where the stages sit, strictly increasing.
        **options: the method's own options (see its reducer), e.g. ``tie_break="noise"`` for DPC-KNN.

    Returns:
        The same object, now a :class:`ReducingVisionTransformer`; new modules live under ``reducers.*``.
    """
    check_supported(model)
    reducers = build_reducers(
        method, model.embed_dim, model.patch_embed.num_patches, len(model.blocks), keep_rate, reduction_loc, options
    )
    init_new_modules(reducers)
    param = next(model.parameters())
    reducers.to(device=param.device, dtype=param.dtype)
    for block in model.blocks:
        block.__class__ = ReducingBlock
    model.__class__ = ReducingVisionTransformer
    model.reducers = reducers
    model.method = method
    model._keep_rate = check_keep_rate(keep_rate)
    return model


__all__ = ["METHODS", "ReducingBlock", "ReducingVisionTransformer", "patch"]
