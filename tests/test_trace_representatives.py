"""Trace v2: StageTrace.representatives, the original patch standing for each token after a stage."""

import pytest
import timm
import torch

import tokred
from tokred.patch import ReducingVisionTransformer

PRUNING = ["topk", "evit", "dynamicvit", "ats", "l1", "l2", "linf"]
CENTRED = ["kmedoids", "dpc_knn"]
MERGING = ["tome", "sit", "patchmerger", "sinkhorn"]


def build(method: str, keep_rate: float = 0.5) -> ReducingVisionTransformer:
    """A small DeiT-shaped ViT (224², 16² patches, 196 tokens) reducing at blocks 3, 6, 9, in eval mode."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", depth=10, embed_dim=48, num_heads=3, num_classes=10)
    return tokred.patch(model, method, keep_rate, (3, 6, 9)).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(2))


def trace_of(model: ReducingVisionTransformer, images: torch.Tensor) -> tokred.Trace:
    with torch.no_grad():
        _, trace = model(images, trace=True)
    return trace


def row_index(rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """[B, K] index of each row of rows [B, K, C] in table [B, N, C]; every row must occur exactly once."""
    equal = (rows[:, :, None, :] == table[:, None, :, :]).all(-1)  # [B, K, N]
    assert (equal.sum(-1) == 1).all(), "a centre is not exactly one of the stage's input tokens"
    return equal.int().argmax(-1)


def test_trace_version():
    assert tokred.Trace("topk").version == 2


@pytest.mark.parametrize("method", PRUNING)
def test_pruning_representatives_are_the_kept_patches(images, method):
    trace = trace_of(build(method), images)
    for stage in trace.stages:
        assert stage.representatives.dtype == torch.long
        assert torch.equal(stage.representatives, stage.kept)
    if method == "evit":
        assert (trace.stages[0].representatives[:, -1] == -1).all()  # the fused token stands for no patch
        assert (trace.stages[0].representatives[:, :-1] >= 0).all()


@pytest.mark.parametrize("method", CENTRED)
def test_centres_stand_for_their_clusters(images, method):
    """Stage 1: the centre tokens are input rows, and their row is their patch. Stage s > 1: the centre is one
    of the previous stage's tokens and brings its representative. Every centre's patch is in its own cluster."""
    model = build(method)
    inputs = []
    for reducer in model.reducers.values():
        forward = reducer.forward

        def spy(x, state, extras, forward=forward):
            inputs.append(x[:, state.num_prefix :].clone())
            return forward(x, state, extras)

        reducer.forward = spy
    stages = trace_of(model, images).stages
    first = stages[0]
    assert torch.equal(first.representatives, row_index(first.centres, inputs[0]))
    for earlier, stage, tokens in zip(stages, stages[1:], inputs[1:], strict=False):
        chosen = row_index(stage.centres, tokens)  # [B, K] among the previous stage's tokens
        assert torch.equal(stage.representatives, earlier.representatives.gather(1, chosen))
    for stage in stages:
        count = stage.representatives.shape[1]
        assert count == int(stage.token_counts.max()) and (stage.representatives >= 0).all()
        in_own_cluster = stage.assignment.gather(1, stage.representatives)
        assert torch.equal(in_own_cluster, torch.arange(count).expand_as(in_own_cluster))
    assert set(stages[1].representatives[0].tolist()) <= set(first.representatives[0].tolist())


@pytest.mark.parametrize("method", MERGING)
def test_merged_tokens_have_no_representative(images, method):
    for stage in trace_of(build(method), images).stages:
        assert stage.representatives.shape == stage.kept.shape
        assert (stage.representatives == -1).all()


def test_untraced_forward_tracks_nothing():
    x = torch.randn(2, 197, 48)
    state = tokred.state.TokenState.start(x, 1, tracing=False)
    _, state = state.select(x, torch.tensor([[3, 1], [0, 2]]))
    assert state.representative is None and state.patch_token is None
