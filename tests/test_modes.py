"""Every method in every mode: autocast training and eval, float64, torch.jit.trace, torch.compile, gradient
checkpointing and timm's forward_intermediates, on a small DeiT-shaped ViT."""

import copy

import pytest
import timm
import torch
from torch import Tensor

import tokred
from tokred.patch import ReducingVisionTransformer

METHODS = list(tokred.METHODS)
COMPILED = ["topk", "l1", "dpc_knn"]  # in-block (class attention), pre-block (gather), a tokred op; rest: slow
LOW = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]
LOC = (1, 2, 3)


def small(method: str, **options: object) -> ReducingVisionTransformer:
    """4 blocks of a DeiT-shaped ViT on 112² images (7×7 patches), reducing at blocks 1, 2, 3 with r = 0.5."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=112, depth=4, embed_dim=48, num_heads=3, num_classes=10)
    return tokred.patch(model, method, 0.5, LOC, **options)


@pytest.fixture(scope="module")
def images() -> Tensor:
    return torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))


def gradients(model: torch.nn.Module) -> dict[str, Tensor]:
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def assert_near(got: Tensor, want: Tensor, fraction: float) -> None:
    """got is want up to ``fraction`` of want's largest magnitude."""
    scale = want.abs().max().item()
    torch.testing.assert_close(got.to(want.dtype), want, rtol=0, atol=fraction * scale)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("method", METHODS)
def test_autocast_training(images, method, dtype):
    model = small(method).train()
    with torch.autocast("cpu", dtype=dtype):
        logits = model(images)
    assert logits.dtype == dtype
    logits.float().logsumexp(-1).mean().backward()
    grads = gradients(model)
    assert "blocks.0.attn.qkv.weight" in grads
    assert any(n.startswith("reducers.") for n in grads) == any(True for _ in model.reducers.parameters())
    assert all(g.isfinite().all() for g in grads.values())


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("method", METHODS)
def test_autocast_eval(images, method, dtype):
    """Finite, and near the float32 logits (low precision may flip near-tie selections)."""
    model = small(method).eval()
    with torch.no_grad():
        full = model(images)
        with torch.autocast("cpu", dtype=dtype):
            low = model(images)
    assert low.dtype == dtype and low.isfinite().all()
    assert_near(low, full, 0.3)


@pytest.mark.parametrize("method", METHODS)
def test_float64(images, method):
    model = small(method)
    with torch.no_grad():
        single = model.eval()(images)
    model.double()
    with torch.no_grad():
        double = model(images.double())
    assert double.dtype == torch.float64
    assert_near(double, single.double(), 1e-4)
    model.train()(images.double()).logsumexp(-1).mean().backward()
    assert all(g.dtype == torch.float64 and g.isfinite().all() for g in gradients(model).values())


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("method", METHODS)
def test_traced_eval(images, method):
    """torch.jit.trace of the eval model gives the eager logits on other images."""
    model = small(method).eval()
    other = torch.randn(images.shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        traced = torch.jit.trace(model, images, check_trace=False)
        torch.testing.assert_close(traced(other), model(other))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_traced_ats_does_not_freeze_the_batch_width():
    """ATS keeps a data-dependent number of tokens: a traced ATS must not keep the traced batch's width."""
    model = small("ats").eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(15)  # peaked attention: the kept counts vary from batch to batch
    generator = torch.Generator().manual_seed(3)
    batches = [torch.randn(2, 3, 112, 112, generator=generator) for _ in range(3)]
    with torch.no_grad():
        widths = {tuple(s.kept.shape[1] for s in model(x, trace=True)[1].stages) for x in batches}
        assert len(widths) > 1, "the batches should keep different token counts"
        traced = torch.jit.trace(model, batches[0], check_trace=False)
        for x in batches[1:]:
            torch.testing.assert_close(traced(x), model(x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", [m if m in COMPILED else pytest.param(m, marks=pytest.mark.slow) for m in METHODS])
def test_compiled_eval(images, method):
    """torch.compile of the eval model matches eager, in one graph except ATS (its trim syncs with the host)."""
    model = small(method).eval()
    compiled = torch.compile(model, fullgraph=method != "ats")
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), model(images), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_ats_without_trim_is_one_graph(images):
    model = small("ats", trim=False).eval()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), model(images), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_gradient_checkpointing(images, method):
    """set_grad_checkpointing(True) saves far fewer tensors for backward and gives the same gradients."""
    plain = small(method).train()
    checked = copy.deepcopy(plain)
    checked.set_grad_checkpointing(True)
    saved = {}
    for name, model in (("plain", plain), ("checked", checked)):
        count = []
        torch.manual_seed(5)  # the same DynamicViT Gumbel samples in both
        with torch.autograd.graph.saved_tensors_hooks(lambda t, count=count: count.append(t.numel()) or t, lambda t: t):
            loss = model(images).logsumexp(-1).mean()
        loss.backward()
        saved[name] = sum(count)
    assert saved["checked"] < 0.6 * saved["plain"], saved
    want, got = gradients(plain), gradients(checked)
    assert got.keys() == want.keys()
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, msg=name)


@pytest.mark.parametrize("method", METHODS)
def test_forward_intermediates(images, method):
    """NLC intermediates are each block's reduced token set; the final features give the model's logits."""
    model = small(method).eval()
    with torch.no_grad():
        logits, trace = model(images, trace=True)
        final, intermediates = model.forward_intermediates(images, output_fmt="NLC", return_prefix_tokens=True)
    torch.testing.assert_close(model.forward_head(final), logits)
    widths, stages = [], {s.block: s for s in trace.stages}
    for block in range(len(model.blocks)):
        widths.append(stages[block].kept.shape[1] if block in stages else (widths or [49])[-1])
    assert [spatial.shape for spatial, _ in intermediates] == [(2, w, 48) for w in widths]
    for (_, prefix), cls in zip(intermediates, trace.cls_features, strict=True):
        torch.testing.assert_close(prefix[:, 0], cls)


def test_forward_intermediates_grid_and_errors(images):
    """NCHW works for blocks before the first reduction and is refused, naming tokred, for reduced ones."""
    model = small("topk").eval()
    with torch.no_grad():
        (grid,) = model.forward_intermediates(images, indices=[0], intermediates_only=True)
        plain = model.forward_intermediates(images, indices=[0], output_fmt="NLC", intermediates_only=True)[0]
        early = model.forward_intermediates(images, indices=[1], output_fmt="NLC", stop_early=True)
    assert grid.shape == (2, 48, 7, 7)
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), plain)
    assert early[1][0].shape == (2, 24, 48)
    with pytest.raises(ValueError, match=r"tokred \(topk\): blocks \[1, 2, 3\] output reduced token sets.*'NLC'"):
        model.forward_intermediates(images)
    with pytest.raises(ValueError, match="attn_mask"):
        model.forward_intermediates(images, output_fmt="NLC", attn_mask=torch.zeros(197, 197))
    assert model.prune_intermediate_layers([1]) == [1]
    assert list(model.reducers) == ["1"] and model.keep_ratios == [0.5]
