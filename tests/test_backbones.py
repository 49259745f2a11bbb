"""Backbones beyond DeiT: register tokens, models without a class token (average and attention pooling), the
refused model classes, and the README's support table, generated here from timm model names."""

import copy
import os
import re
from pathlib import Path

import pytest
import timm
import torch

import tokred
from tokred.patch import ReducingVisionTransformer
from tokred.reducers import METHODS
from tokred.state import TokenState

README = Path(__file__).resolve().parents[1] / "README.md"
FAMILIES = [  # (family, timm name): random weights, each at a small image size (an 8 × 8 patch grid)
    ("DeiT", "deit_tiny_patch16_224"),
    ("DeiT-III", "deit3_small_patch16_224"),
    ("AugReg ViT", "vit_tiny_patch16_224"),
    ("CLIP ViT", "vit_base_patch16_clip_224"),
    ("DINOv2", "vit_small_patch14_dinov2"),
    ("DINOv2 + registers", "vit_small_patch14_reg4_dinov2"),
    ("ViT, average pooling", "vit_medium_patch16_gap_256"),
    ("ViT + registers, average pooling", "vit_little_patch16_reg4_gap_256"),
    ("SigLIP (attention pooling)", "vit_base_patch16_siglip_224"),
    ("EVA-02", "eva02_tiny_patch14_224"),
    ("Swin", "swin_tiny_patch4_window7_224"),
]
RANKED_BY_ATTENTION = ("topk", "evit", "ats")  # the methods that read the class token's attention row
GRID = 8


def without_class_token(method: str, pool: str, **options: object) -> ReducingVisionTransformer:
    """A small ViT (196 patches) without a class token, pooled by ``pool``."""
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", class_token=False, global_pool=pool, depth=8, embed_dim=48, num_heads=3, num_classes=7
    )
    return tokred.patch(model, method, 0.5, (2, 5), **options)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("pool", ["avg", "map"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_without_class_token(images, method, pool):
    """Every method runs; an image's logits do not depend on the rest of the batch (ATS's padding stays out
    of the pooling); the stages reach their counts."""
    model = without_class_token(method, pool).eval()
    assert model.num_prefix_tokens == 0
    with torch.no_grad():
        whole, trace = model(images, trace=True)
        parts = torch.cat([model(images[:1]), model(images[1:])])
    assert whole.shape == (3, 7) and whole.isfinite().all()
    torch.testing.assert_close(parts, whole, rtol=1e-4, atol=1e-5)
    assert len(trace.stages) == 2 and all(len(f) == 3 for f in trace.cls_features)
    if method in ("topk", "dpc_knn", "kmedoids", "sinkhorn"):
        assert [s.token_counts.tolist() for s in trace.stages] == [[98] * 3, [49] * 3]


@pytest.mark.parametrize("pool", ["avg", "map"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_without_class_token_trains_under_autocast(images, method, pool):
    """A bfloat16 training step: finite loss, gradients reach the backbone and the learned reducers."""
    model = without_class_token(method, pool).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images[:2])
    loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor([1, 4]))
    loss.backward()
    assert loss.isfinite()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("pool", ["avg", "max", "avgmax", "map"])
def test_an_empty_schedule_pools_as_timm(images, pool):
    torch.manual_seed(0)
    plain = timm.create_model(
        "vit_tiny_patch16_224", class_token=False, global_pool=pool, depth=3, embed_dim=48, num_heads=3
    ).eval()
    with torch.no_grad():
        want = plain(images)
        torch.testing.assert_close(tokred.patch(plain, "topk", 0.5, ())(images), want)


def test_topk_without_class_token_keeps_the_tokens_receiving_most_attention(images):
    """The attention each token receives, averaged over queries and heads, from the block's own q and k."""
    model = without_class_token("topk", "avg").eval()
    block, captured = model.blocks[2], {}
    block.register_forward_pre_hook(lambda module, args: captured.update(x=args[0]))
    with torch.no_grad():
        _, trace = model(images, trace=True)
        x, attn = block.norm1(captured["x"]), block.attn
        q, k, _ = attn.qkv(x).reshape(3, 196, 3, 3, 16).permute(2, 0, 3, 1, 4)
        probs = (q @ k.transpose(-2, -1) / 4).softmax(-1)  # [B, H, N, N], scale 1/sqrt(16)
    received = probs.mean(2).mean(1)
    assert torch.equal(trace.stages[0].kept, received.topk(98, dim=-1).indices)


def test_pooling_weights_tokens_by_the_patches_they_hold():
    """A merged token of size s counts as s copies of itself in every pooling (in 'map' through the log-size
    key bias); padding slots count in none."""
    x = torch.randn(2, 5, 48)
    size = torch.tensor([[1.0, 3, 2, 1, 1], [2.0, 1, 1, 1, 1]])
    mask = torch.tensor([[True, True, True, False, True], [True] * 5])
    state = TokenState(0, False, size=size, mask=mask, proportional=True)
    copies = [
        torch.cat([t.expand(int(s), -1) for t, s, m in zip(xb, sb, mb, strict=True) if m])
        for xb, sb, mb in zip(x, size, mask, strict=True)
    ]
    averaging, attending = without_class_token("tome", "avg").eval(), without_class_token("tome", "map").eval()
    with torch.no_grad():
        torch.testing.assert_close(averaging.pool(x, "avg", state), torch.stack([c.mean(0) for c in copies]))
        torch.testing.assert_close(averaging.pool(x, "max", state), torch.stack([c.amax(0) for c in copies]))
        pooled = attending.pool(x, state=state)
        torch.testing.assert_close(pooled, torch.cat([attending.attn_pool(c[None]) for c in copies]))


@pytest.mark.parametrize("pool", ["avg", "max", "avgmax", "map"])
def test_pooling_follows_dynamicvits_training_policy_even_when_it_drops_every_token(pool):
    """Tokens dropped in training count in no pooling; an image with none left pools all of them, finitely."""
    x = torch.randn(2, 5, 48, requires_grad=True)
    policy = torch.tensor([[1.0, 0, 1, 0, 1], [0.0] * 5])
    model = without_class_token("dynamicvit", pool).train()
    pooled = model.pool(x, state=TokenState(0, False, policy=policy))
    pooled.sum().backward()
    assert torch.isfinite(x.grad).all()
    with torch.no_grad():
        torch.testing.assert_close(pooled[0], model.pool(x[:1, [0, 2, 4]])[0])
        torch.testing.assert_close(pooled[1], model.pool(x[1:])[0])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_registers_stay_in_front_of_every_method(images, method):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", depth=6, embed_dim=48, num_heads=3, reg_tokens=4)
    model = tokred.patch(model, method, 0.5, (2, 4)).eval()
    with torch.no_grad():
        _, trace = model(images[:2], trace=True)
    assert model.num_prefix_tokens == 5
    counts = [s.token_counts.tolist() for s in trace.stages]
    if method in ("topk", "tome", "dpc_knn"):
        assert counts == [[98, 98], [49, 49]]


@pytest.mark.parametrize(("method", "options"), [("topk", {}), ("tome", {"rounds": True}), ("dpc_knn", {})])
def test_counts_follow_the_models_own_grid(method, options):
    """DINOv2 with registers at 518²: 37 × 37 patches, stage s keeps floor(1369 r^s) (4 of its 12 blocks)."""
    torch.manual_seed(0)
    model = tokred.create_model(
        "vit_small_patch14_reg4_dinov2", method, 0.5, (1, 2, 3), depth=4, method_options=options
    ).eval()
    with torch.no_grad():
        _, trace = model(torch.randn(1, 3, 518, 518), trace=True)
    assert model.patch_embed.num_patches == 1369 and model.num_prefix_tokens == 5
    assert [int(s.token_counts) for s in trace.stages] == [684, 342, 171]


def test_refused_model_classes():
    for name, why in [("eva02_tiny_patch14_224", "rotary"), ("swin_tiny_patch4_window7_224", "windows")]:
        with pytest.raises(TypeError, match=f"timm VisionTransformer .* got .*{why}"):
            tokred.create_model(name, "topk")
    for pool in ("", "prr"):
        model = timm.create_model("vit_tiny_patch16_224", global_pool=pool, depth=1, class_token=pool != "")
        with pytest.raises(ValueError, match="global_pool"):
            tokred.patch(model, "topk")


def support(name: str) -> tuple[dict[str, str], str]:
    """For timm model ``name`` with random weights: each method's result ("works" or the error) and the row's
    description of the model (prefix tokens, pooling)."""
    try:
        base = timm.create_model(name)
        patch = base.patch_embed.patch_size[0] if hasattr(base, "patch_embed") else 16
        if isinstance(base, timm.models.VisionTransformer):
            base = timm.create_model(name, img_size=GRID * patch)
    except Exception as error:  # noqa: BLE001 (the table reports it)
        return dict.fromkeys(METHODS, f"timm: {error}"), "?"
    images = torch.randn(2, 3, *getattr(getattr(base, "patch_embed", None), "img_size", (224, 224)))
    results = {}
    for method in METHODS:
        try:
            model = tokred.patch(copy.deepcopy(base), method, 0.5).eval()
            with torch.no_grad():
                logits = model(images)
            assert logits.isfinite().all()
            results[method] = "works"
        except (TypeError, ValueError) as error:
            results[method] = str(error).split(": ", 1)[-1]
    if not isinstance(base, timm.models.VisionTransformer):
        return results, "–"
    prefix = ["class token"] * base.has_class_token + [f"{base.num_reg_tokens} registers"] * bool(base.num_reg_tokens)
    return results, f"{' + '.join(prefix) or 'none'}; {base.global_pool}"


def support_table() -> str:
    methods = list(METHODS)
    lines = [
        f"| family (timm model) | prefix tokens; pooling | {' | '.join(f'`{m}`' for m in methods)} |",
        "|---|---|" + "---|" * len(methods),
    ]
    notes: list[str] = []
    for family, name in FAMILIES:
        results, described = support(name)
        cells = []
        for method in methods:
            if results[method] == "works":
                ranked = method in RANKED_BY_ATTENTION and "class token" not in described
                cells.append("✓ (received)" if ranked else "✓")
                continue
            if results[method] not in notes:
                notes.append(results[method])
            cells.append(f"✗ {notes.index(results[method]) + 1}")
        lines.append(f"| {family} (`{name}`) | {described} | {' | '.join(cells)} |")
    lines.append("")
    lines += [f"✗ {i}: {note}." for i, note in enumerate(notes, 1)]
    return "\n".join(lines)


def test_readme_support_table_is_this_tests_output():
    """The README's support table is what this test produces (TOKRED_UPDATE_README=1 writes it there)."""
    text = README.read_text()
    start, end = "<!-- support table: tests/test_backbones.py -->\n", "<!-- end of support table -->"
    match = re.search(re.escape(start) + "(.*?)" + re.escape(end), text, flags=re.S)
    assert match, f"the README lacks the support table's markers {start.strip()} ... {end}"
    table = support_table() + "\n"
    if os.environ.get("TOKRED_UPDATE_README") == "1":
        README.write_text(text[: match.start(1)] + table + text[match.end(1) :])
    assert match.group(1) == table, (
        "the README's support table is out of date: TOKRED_UPDATE_README=1 pytest "
        "tests/test_backbones.py -k support rewrites it"
    )
