"""What a traced forward returns besides the logits: per reduction stage, where every patch went."""

from dataclasses import dataclass, field

from torch import Tensor

TRACE_VERSION = 2  # 2: StageTrace.representatives


@dataclass
class StageTrace:
    """One reduction stage of a batch of B images, P = original patches (196 for 224² / 16).

    Attributes:
        block: index of the block where the stage sits.
        assignment: [B, P] int64, for every original patch the spatial token that holds it after this stage
            (composed through all earlier stages), -1 once dropped. Pruning keeps a patch in its own token;
            merges send several patches to one token.
        kept: [B, M] int64, the original patch of each spatial token after the stage, in token order; -1 for
            a token that holds no patch (padding) or more than one (merged or fused tokens).
        representatives: [B, M] int64, the original patch that stands for each spatial token after the stage, in
            token order: the kept patch for pruning (equal to ``kept``), the centre's patch for K-Medoids and
            DPC-KNN, chained through the stages (a centre chosen among the previous stage's tokens brings that
            token's representative); -1 where there is none (ToMe, SiT, PatchMerger and Sinkhorn merges, EViT's
            fused token, ATS padding). The centre lies in its own cluster: assignment[b, representatives[b, t]]
            == t wherever representatives[b, t] >= 0.
        token_counts: [B] int64, real spatial tokens per image (ATS: data dependent; padding excluded).
        centres: [B, K, C] cluster centre features (K-Medoids, DPC-KNN: the centre tokens before merging;
            PatchMerger: queries; Sinkhorn: centres), or None.
        soft_assignment: [B, K, N] soft merge weights over the stage's input tokens (SiT, PatchMerger,
            Sinkhorn), or None.
    """

    block: int
    assignment: Tensor
    kept: Tensor
    representatives: Tensor
    token_counts: Tensor
    centres: Tensor | None = None
    soft_assignment: Tensor | None = None


@dataclass
class Trace:
    """A traced forward: ``stages`` in block order and the class-token feature [B, C] after every block."""

    method: str
    stages: list[StageTrace] = field(default_factory=list)
    cls_features: list[Tensor] = field(default_factory=list)
    version: int = TRACE_VERSION
