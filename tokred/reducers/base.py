"""The contract every reduction method follows."""

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor, nn

from tokred.attention import AttentionExtras
from tokred.state import TokenState

Details = dict[str, Tensor]


@dataclass(frozen=True)
class MethodInfo:
    """What a method is, declared once by its reducer class and read by training, analysis and reports.

    Attributes:
        name: the study's display name ("Top-K", "ℓ∞").
        family: how it reduces, as the README's methods table says ("pruning", "hard merge", ...).
        keeps_patches: its stages keep original patches (K-Medoids, DPC-KNN: the cluster centres), so the
            trace's ``kept`` / ``representatives`` name them: compared with IoU / IoA.
        partitions: its stages partition the patches into tokens (the trace's ``assignment``): compared with
            homogeneity, completeness and NMI.
        fixed_count: it keeps exactly K_s patches per stage, where the IoU / IoA lower bounds hold.
        any_rate: the study compares it with models at every keep rate (fixed patterns, ATS's adaptive count).
        input_dependent: what it keeps depends on the image (False for the fixed radial patterns), so its
            dataset-averaged patterns are worth comparing across datasets.
    """

    name: str
    family: str
    keeps_patches: bool = False
    partitions: bool = False
    fixed_count: bool = False
    any_rate: bool = False
    input_dependent: bool = True


class Reducer(nn.Module):
    """One reduction stage: x [B, N, C] → x [B, N', C] with fewer spatial tokens.

    ``hook`` says where it sits (SPEC §1.1): "pre" runs on the output of the block before, so its block runs
    entirely on the reduced set; "in" runs inside its block between attention and MLP. ``needs`` names the
    attention extras it reads (tokred.attention.AttentionExtras): from its own block for "in", from the
    block before for "pre". ``target`` is the spatial token count the stage aims at, fixed at construction.
    """

    hook: ClassVar[Literal["pre", "in"]] = "pre"
    needs: ClassVar[frozenset[str]] = frozenset()
    first_block: ClassVar[int] = 0  # the earliest block a stage may sit in
    info: ClassVar[MethodInfo]

    @classmethod
    def stages(cls, dim: int, targets: list[int], num_patches: int, **options: object) -> list["Reducer"]:
        """One reducer per stage from the stage targets K_s; methods that plan across stages override this."""
        return [cls(dim, target, **options) for target in targets]

    def __init__(self, dim: int, target: int) -> None:
        super().__init__()
        self.dim = dim
        self.target = target

    def prepare(self, x: Tensor, state: TokenState) -> TokenState:
        """Called once per forward before block 0 (DynamicViT sets its training policy here)."""
        return state

    def forward(self, x: Tensor, state: TokenState, extras: AttentionExtras) -> tuple[Tensor, TokenState, Details]:
        """Returns the reduced tokens, their state, and trace details (``centres``, ``soft_assignment``)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"target={self.target}"


def class_attention(extras: AttentionExtras, num_prefix: int) -> Tensor:
    """[B, N - num_prefix] head-averaged attention of the class token on the spatial tokens."""
    assert extras.cls_attn is not None, "the block must compute cls_attn for this reducer"
    return extras.cls_attn.mean(1)[:, num_prefix:]
