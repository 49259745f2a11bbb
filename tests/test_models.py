"""Reducing ViTs: token counts (SPEC §0.1), parity with timm, method properties (SPEC §13), training, errors."""

import copy
import time

import numpy as np
import pytest
import timm
import torch
from timm.utils import ModelEmaV3

import tokred
from tokred.patch import ReducingVisionTransformer
from tokred.reducers.dynamicvit import Predictor
from tokred.reducers.radial import L1Pattern, L2Pattern, LinfPattern
from tokred.schedule import stage_targets

RATES = [0.25, 0.5, 0.7, 0.9]
K = {0.25: [49, 12, 3], 0.5: [98, 49, 24], 0.7: [137, 96, 67], 0.9: [176, 158, 142]}  # SPEC §0.1
RADIAL = {  # SPEC §3.1: the study's float32 shells
    "l1": {0.25: [40, 12, 4], 0.5: [92, 40, 24], 0.7: [136, 92, 68], 0.9: [172, 156, 136]},
    "l2": {0.25: [52, 12, 4], 0.5: [96, 52, 24], 0.7: [140, 96, 68], 0.9: [176, 156, 140]},
    "linf": {0.25: [36, 16, 4], 0.5: [100, 36, 16], 0.7: [144, 100, 64], 0.9: [196, 144, 144]},
}
EXACT_L1 = {0.25: [40, 12, 4], 0.5: [84, 40, 24], 0.7: [136, 84, 60], 0.9: [172, 156, 136]}  # integer shells
TOME = {0.25: [98, 61, 52], 0.5: [98, 49, 25], 0.7: [137, 96, 67], 0.9: [176, 158, 142]}
EXACT_K = ["topk", "dynamicvit", "kmedoids", "dpc_knn", "sit", "patchmerger", "sinkhorn"]
LEARNED = {"dynamicvit": "predictor", "dpc_knn": "score", "sit": "mlp", "patchmerger": "queries", "sinkhorn": "centres"}


def tiny(method: str, keep_rate: float = 0.5, loc=(3, 6, 9), **options) -> ReducingVisionTransformer:
    """A small DeiT-shaped ViT (224², 16² patches, 196 tokens) that runs fast on a CPU."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", depth=10, embed_dim=48, num_heads=3, num_classes=10)
    return tokred.patch(model, method, keep_rate, loc, **options)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def expected_counts(method: str, r: float) -> list[int]:
    if method in RADIAL:
        return RADIAL[method][r]
    if method == "tome":
        return TOME[r]
    if method == "evit":
        return [k + 1 for k in K[r]]
    return K[r]


@pytest.mark.parametrize("r", RATES)
@pytest.mark.parametrize("method", [*EXACT_K, "evit", "tome", "l1", "l2", "linf"])
def test_token_counts(images, method, r):
    model = tiny(method, r).eval()
    with torch.no_grad():
        _, trace = model(images, trace=True)
    assert [s.block for s in trace.stages] == [3, 6, 9]
    for stage, count in zip(trace.stages, expected_counts(method, r), strict=True):
        assert stage.token_counts.tolist() == [count] * len(images)
        assert stage.assignment.shape == (4, 196) and stage.assignment.max() < count


@pytest.mark.parametrize("r", RATES)
def test_ats_counts_are_bounded(images, r):
    model = tiny("ats", r).eval()
    with torch.no_grad():
        _, trace = model(images, trace=True)
    for stage, bound in zip(trace.stages, K[r], strict=True):
        assert (stage.token_counts <= bound).all() and (stage.token_counts >= 1).all()
        assert stage.kept.shape[1] == int(stage.token_counts.max())  # padded to the batch maximum


@pytest.mark.parametrize("method", sorted(tokred.METHODS))
def test_empty_schedule_is_the_plain_model(images, method):
    torch.manual_seed(0)
    plain = timm.create_model("vit_tiny_patch16_224", depth=10, embed_dim=48, num_heads=3, num_classes=10).eval()
    reduced = tiny(method, 0.5, loc=()).eval()
    with torch.no_grad():
        torch.testing.assert_close(reduced(images), plain(images), rtol=1e-5, atol=1e-5)


def test_patching_keeps_backbone_keys():
    torch.manual_seed(0)
    plain = timm.create_model("vit_tiny_patch16_224", depth=10, embed_dim=48, num_heads=3, num_classes=10)
    keys = set(plain.state_dict())
    reduced = tokred.patch(plain, "dpc_knn", 0.5)
    new = set(reduced.state_dict()) - keys
    assert keys <= set(reduced.state_dict()) and new and all(k.startswith("reducers.") for k in new)


def test_topk_keeps_the_most_attended_tokens(images):
    """Top-K's kept patches are those with the highest class attention of their block (SPEC §13)."""
    model = tiny("topk", 0.5, loc=(3,)).eval()
    captured = {}
    reducer = model.reducers["3"]
    original = reducer.forward

    def spy(x, state, extras):
        captured["attention"] = extras.cls_attn.mean(1)[:, 1:]
        return original(x, state, extras)

    reducer.forward = spy
    with torch.no_grad():
        _, trace = model(images, trace=True)
    expected = captured["attention"].topk(98, dim=-1).indices
    assert torch.equal(trace.stages[0].kept, expected)


def test_tome_conserves_patch_count(images):
    model = tiny("tome", 0.7).eval()
    sizes = []
    for block in (3, 6, 9):
        reducer = model.reducers[str(block)]
        forward = reducer.forward

        def spy(x, state, extras, forward=forward):
            out = forward(x, state, extras)
            sizes.append(out[1].size[:, 1:].sum(-1))
            return out

        reducer.forward = spy
    with torch.no_grad():
        _, trace = model(images, trace=True)
    for size, stage in zip(sizes, trace.stages, strict=True):
        torch.testing.assert_close(size, torch.full((4,), 196.0))
        held = torch.stack(
            [torch.bincount(a, minlength=int(c)) for a, c in zip(stage.assignment, stage.token_counts, strict=True)]
        )
        assert (held.sum(-1) == 196).all()


def test_merges_are_what_they_claim(images):
    """K-Medoids passes centre rows on; DPC-KNN tokens are ω-weighted member means; soft merge weights sum
    to one over tokens (SiT, PatchMerger); Sinkhorn plans are column-stochastic with unit centres."""
    outputs = {}
    for method in ("kmedoids", "sit", "patchmerger", "sinkhorn"):
        model = tiny(method, 0.5, loc=(4,)).eval()
        with torch.no_grad():
            _, trace = model(images, trace=True)
        outputs[method] = trace.stages[0]
    assert outputs["kmedoids"].centres.shape == (4, 98, 48)
    torch.testing.assert_close(outputs["sit"].soft_assignment.sum(-1), torch.ones(4, 98))
    torch.testing.assert_close(outputs["patchmerger"].soft_assignment.sum(-1), torch.ones(4, 98))
    torch.testing.assert_close(outputs["sinkhorn"].soft_assignment.sum(1), torch.ones(4, 196))
    torch.testing.assert_close(outputs["sinkhorn"].centres[0].norm(dim=-1), torch.ones(98))


def test_dpc_knn_merges_weighted_means():
    model = tiny("dpc_knn", 0.5, loc=(2,)).eval()
    reducer = model.reducers["2"]
    x = torch.randn(2, 197, 48)
    state = tokred.state.TokenState.start(x, 1, tracing=True)
    with torch.no_grad():
        out, new_state, _ = reducer(x, state, None)
        weight = reducer.score(x[:, 1:]).exp()[..., 0]
    assignment = new_state.patch_token
    for b in range(2):
        for k in (0, 17, 97):
            members = assignment[b] == k
            expected = (weight[b, members, None] * x[b, 1:][members]).sum(0) / (weight[b, members].sum() + 1e-6)
            torch.testing.assert_close(out[b, 1 + k], expected)


def test_kmedoids_tokens_are_input_rows():
    model = tiny("kmedoids", 0.5, loc=(2,)).eval()
    x = torch.randn(2, 197, 48)
    received = torch.rand(2, 197)
    state = tokred.state.TokenState.start(x, 1, tracing=False)
    out, _, details = model.reducers["2"](x, state, tokred.attention.AttentionExtras(received=received))
    is_row = (out[:, 1:, None, :] == x[:, None, 1:, :]).all(-1)  # [B, K, N]: output k equals input row n
    assert is_row.any(-1).all()


@pytest.mark.parametrize("method", sorted(tokred.METHODS))
def test_images_do_not_affect_each_other(images, method):
    model = tiny(method, 0.5).eval()
    with torch.no_grad():
        whole = model(images)
        parts = torch.cat([model(images[:1]), model(images[1:])])
        permuted = model(images[[2, 0, 3, 1]])
    torch.testing.assert_close(parts, whole, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(permuted, whole[[2, 0, 3, 1]], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", sorted(tokred.METHODS))
def test_training_step(images, method):
    model = tiny(method, 0.5).train()
    logits = model(images[:2])
    logits.logsumexp(-1).mean().backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None
    if method in LEARNED:
        grads = [p.grad for n, p in model.reducers.named_parameters() if LEARNED[method] in n]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reaches the reducer"


BAD = [
    (dict(method="topk", keep_rate=0.0), ValueError, r"keep_rate must be a number in \(0, 1\]"),
    (dict(method="topk", keep_rate=1.5), ValueError, "keep_rate"),
    (dict(method="topk", reduction_loc=(3, 12)), ValueError, r"must lie in \[0, 9\]"),
    (dict(method="topk", reduction_loc=(6, 3)), ValueError, "strictly increasing"),
    (dict(method="kmedoids", reduction_loc=(0, 3)), ValueError, r"must lie in \[1, 9\]"),
    (dict(method="kmeans"), ValueError, "unknown method 'kmeans'"),
    (dict(method="dpc_knn", options=dict(tie_break="coin")), ValueError, "tie_break"),
    (
        dict(method="ats", options=dict(shape="round")),
        TypeError,
        "method 'ats' has no option 'shape'; 'ats' takes rule",
    ),
    (dict(method="sinkhorn", options=dict(iters=0)), ValueError, "Sinkhorn needs iters >= 1"),
    (dict(method="tome", options=dict(rounds="False")), TypeError, "option 'rounds' of method 'tome' takes a bool"),
    (dict(method="sinkhorn", options=dict(unit_tokens="False")), TypeError, "option 'unit_tokens' .* takes a bool"),
    (dict(method="l1", options=dict(coordinates="float64")), ValueError, "coordinates must be one of"),
    (dict(method="topk", keep_rate="0.5"), ValueError, "keep_rate must be a number"),
    (dict(method="topk", reduction_loc=3), TypeError, r"sequence of block indices, e.g. \(3, 6, 9\), or \(3,\)"),
    (dict(method="topk", reduction_loc="369"), TypeError, "sequence of block indices"),
    (dict(method="topk", reduction_loc=(3.0, 6.0)), TypeError, "must hold block indices"),
    (
        dict(method="topk", keep_rate=0.05),
        ValueError,
        r"keep_rate 0.05 keeps 9/0/0 of 196 patches at blocks \[3, 6, 9\].*smallest keep_rate that does is 0.173",
    ),
    (dict(method="l1", keep_rate=0.05, reduction_loc=(3, 6)), ValueError, "9/0 .*with 2 stages .* is 0.072"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD)
def test_bad_configuration(kwargs, error, message):
    model = timm.create_model("vit_tiny_patch16_224", depth=10, embed_dim=48, num_heads=3)
    with pytest.raises(error, match=message):
        tokred.patch(
            model,
            kwargs["method"],
            kwargs.get("keep_rate", 0.5),
            kwargs.get("reduction_loc", (3, 6, 9)),
            **kwargs.get("options", {}),
        )


def test_smallest_keep_rates_in_the_errors_are_right():
    """The keep rates the schedule errors above name are the smallest, to three decimals, that keep a token."""
    for stages, rate in ((3, 0.173), (2, 0.072)):
        assert int(196 * rate**stages) >= 1 and int(196 * (rate - 0.001) ** stages) == 0


def test_numpy_numbers_are_accepted(images):
    model = tiny("topk", np.float32(0.5), loc=np.array([3, 6, 9])).eval()
    assert model.keep_rate == 0.5 and type(model.keep_rate) is float
    with torch.no_grad():
        _, trace = model(images, trace=True)
    assert [s.block for s in trace.stages] == [3, 6, 9]
    assert [int(s.token_counts[0]) for s in trace.stages] == K[0.5]


def test_wrong_image_size():
    model = tiny("topk")
    with pytest.raises(ValueError, match=r"built for \(224, 224\) images, got \(192, 192\)"):
        model(torch.randn(1, 3, 192, 192))
    with pytest.raises(ValueError, match=r"got shape \(3, 224, 224\): for one image \[3, H, W\] pass x\[None\]"):
        model(torch.randn(3, 224, 224))


def test_keep_rate_is_read_only(images):
    """Assigning keep_rate raises (the stages are sized by it); copies, EMA and state dicts carry the model."""
    model = tiny("dynamicvit", 0.5).eval()
    with pytest.raises(AttributeError, match=r"keep_rate is fixed when the model is built \(here 0.5\).*keep_rate=0.1"):
        model.keep_rate = 0.1
    assert model.keep_rate == 0.5 and model.keep_ratios == [0.5, 0.25, 0.125]
    twin = copy.deepcopy(model)
    ema = ModelEmaV3(model, decay=0.5)
    ema.update(model)
    fresh = tiny("dynamicvit", 0.5).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        want = model(images[:2])
        for other in (twin, ema.module, fresh):
            assert other.keep_rate == 0.5
            torch.testing.assert_close(other(images[:2]), want)


def test_unsupported_models():
    with pytest.raises(TypeError, match="timm VisionTransformer"):
        tokred.patch(torch.nn.Linear(2, 2), "topk")


def test_registers_and_layerscale_are_kept(images):
    """Register tokens are prefix tokens: never reduced; LayerScale runs as in timm."""
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", depth=6, embed_dim=48, num_heads=3, reg_tokens=2, init_values=0.1, qk_norm=True
    ).eval()
    with torch.no_grad():
        plain = model(images[:2])
        reduced = tokred.patch(model, "topk", 0.5, (2, 4))
        _, trace = reduced(images[:2], trace=True)
        torch.testing.assert_close(tokred.patch(model, "topk", 0.5, ())(images[:2]), plain)
    assert [s.token_counts.tolist() for s in trace.stages] == [[98, 98], [49, 49]]


def test_pretrained_offline_error(monkeypatch):
    """Without a network and without a file: one clear error, at once (no retries)."""
    monkeypatch.setattr(tokred.models.hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(tokred.models, "hub_reachable", lambda timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="pretrained_path"):
        tokred.create_model("deit_tiny_patch16_224", "topk", pretrained=True)
    assert time.perf_counter() - start < 10
    assert tokred.models.hub.HF_HUB_OFFLINE is False  # restored


def test_pretrained_from_a_local_file(tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("deit_tiny_patch16_224")
    path = tmp_path / "deit_tiny.pth"
    torch.save({"model": source.state_dict()}, path)
    model = tokred.create_model("deit_tiny_patch16_224", "evit", pretrained_path=path, num_classes=5)
    torch.testing.assert_close(model.blocks[5].mlp.fc1.weight, source.blocks[5].mlp.fc1.weight)
    assert model.head.out_features == 5


def test_pretrained_file_keeps_its_classifier_where_it_fits(tmp_path):
    """A fine-tuned checkpoint (10 classes, where timm's DeiT has 1000) keeps its classifier when asked for 10
    classes or for none; asked for another size, the classifier is new."""
    torch.manual_seed(4)
    source = timm.create_model("deit_tiny_patch16_224", num_classes=10)
    path = tmp_path / "fine_tuned.pth"
    torch.save({"model": source.state_dict()}, path)
    for num_classes in (10, None):
        model = tokred.create_model("deit_tiny_patch16_224", "tome", pretrained_path=path, num_classes=num_classes)
        torch.testing.assert_close(model.head.weight, source.head.weight)
    model = tokred.create_model("deit_tiny_patch16_224", "tome", pretrained_path=path, num_classes=3)
    assert model.head.out_features == 3
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_dynamicvit_training(images):
    """Decisions never revive a dropped token; the loss has its four terms and reaches the predictors."""
    model = tiny("dynamicvit", 0.5).train()
    logits, aux = model(images, aux=True)
    decisions = aux["decisions"]
    assert len(decisions) == 3 and aux["tokens"].shape == (4, 196, 48)
    for earlier, later in zip(decisions, decisions[1:], strict=False):
        assert (later <= earlier).all()
    teacher_logits, teacher_tokens = torch.randn_like(logits), torch.randn_like(aux["tokens"])
    criterion = tokred.DynamicViTLoss(torch.nn.CrossEntropyLoss(), model.keep_ratios)
    target = torch.tensor([0, 1, 2, 3])
    full = criterion(logits, aux, target, (teacher_logits, teacher_tokens))
    base = criterion(logits, aux, target)
    ratio = sum(((d.mean(1) - r) ** 2).mean() for d, r in zip(decisions, [0.5, 0.25, 0.125], strict=True)) / 3
    torch.testing.assert_close(base, torch.nn.functional.cross_entropy(logits, target) + 2.0 * ratio)
    assert full > base
    full.backward()
    assert all(p.grad is not None for p in model.reducers.parameters())


def test_policy_softmax():
    """Rows sum to one; a token attends to dropped tokens only to eps level, except to itself (SPEC §13)."""
    logits = torch.randn(2, 3, 6, 6)
    policy = torch.tensor([[1.0, 1, 0, 1, 0, 1], [1.0, 0, 0, 0, 0, 0]])
    probs = tokred.attention.policy_softmax(logits, policy)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, 6))
    dropped = (policy == 0)[:, None, None, :] & ~torch.eye(6, dtype=torch.bool)
    assert probs[dropped.expand_as(probs)].max() < 1e-5
    torch.testing.assert_close(tokred.attention.policy_softmax(logits, torch.ones(2, 6)), logits.softmax(-1))


@pytest.mark.parametrize("method", sorted(tokred.METHODS))
def test_prefix_tokens_pass_untouched(images, method):
    """No reducer changes the class token or the registers; they stay in front."""
    torch.manual_seed(0)
    base = timm.create_model("vit_tiny_patch16_224", depth=8, embed_dim=48, num_heads=3, reg_tokens=2)
    model = tokred.patch(base, method, 0.5, (2, 5)).eval()
    pairs = []
    for reducer in model.reducers.values():
        forward = reducer.forward

        def spy(x, state, extras, forward=forward):
            out = forward(x, state, extras)
            pairs.append((x[:, : state.num_prefix], out[0][:, : state.num_prefix]))
            return out

        reducer.forward = spy
    with torch.no_grad():
        model(images[:2])
    assert len(pairs) == 2
    for before, after in pairs:
        assert torch.equal(before, after)


def test_tome_rounds_reach_the_schedule(images):
    """With rounds=True, ToMe keeps exactly K_s tokens even where one matching round cannot (r = 0.25, 0.5)."""
    for r in (0.25, 0.5):
        model = tiny("tome", r, rounds=True).eval()
        with torch.no_grad():
            _, trace = model(images, trace=True)
        assert [s.token_counts.tolist() for s in trace.stages] == [[k] * 4 for k in K[r]]


def test_sinkhorn_fixed_mode(images):
    """Balanced marginals with mean merges of the raw tokens: merged tokens are convex combinations."""
    model = tiny("sinkhorn", 0.5, loc=(4,), marginals="balanced", merge="mean", unit_tokens=False).eval()
    reducer = model.reducers["4"]
    x = torch.randn(2, 197, 48)
    out, _, details = reducer(x, tokred.state.TokenState.start(x, 1, tracing=False), None)
    plan = details["soft_assignment"]
    expected = plan @ x[:, 1:] / plan.sum(-1, keepdim=True)
    torch.testing.assert_close(out[:, 1:], expected)
    with torch.no_grad():
        assert model(images[:2]).isfinite().all()


@pytest.mark.parametrize("coordinates", ["float32", "exact"])
@pytest.mark.parametrize("pattern", [L1Pattern, L2Pattern, LinfPattern])
def test_radial_shells(pattern, coordinates):
    """SPEC §3.1's table: the study's float32 shells by default, the integer shells as the "exact" variant (they
    differ for ℓ1 only)."""
    table = EXACT_L1 if (pattern.norm, coordinates) == ("l1", "exact") else RADIAL[pattern.norm]
    for r in RATES:
        stages = pattern.stages(48, stage_targets(r, 3, 196), 196, coordinates=coordinates)
        assert [s.target for s in stages] == table[r]
        kept = torch.arange(196)
        for stage in stages:
            kept = kept[stage.keep]
            assert len(kept) == stage.target
        if pattern.norm != "l1":
            others = pattern.stages(48, stage_targets(r, 3, 196), 196, coordinates="exact")
            assert all(torch.equal(a.keep, b.keep) for a, b in zip(stages, others, strict=True))


def test_l1_float32_shells_add_the_studys_patches():
    """r = 0.5, stage 1: the 84-cell diamond plus the eight cells SPEC §3.1 lists."""
    targets = stage_targets(0.5, 3, 196)
    study = set(L1Pattern.stages(48, targets, 196)[0].keep.tolist())
    exact = set(L1Pattern.stages(48, targets, 196, coordinates="exact")[0].keep.tolist())
    extra = {(1, 5), (1, 8), (5, 1), (5, 12), (8, 1), (8, 12), (12, 5), (12, 8)}
    assert exact < study and study - exact == {14 * row + col for row, col in extra}
    rows, cols = np.divmod(sorted(exact), 14)
    assert ((np.abs(rows - 6.5) + np.abs(cols - 6.5)) <= 6).all()  # the exact set is the ℓ1 diamond of radius 6


def test_parse_options_types_values():
    assert tokred.reducers.parse_options("tome", ["rounds=false"]) == {"rounds": False}
    parsed = tokred.reducers.parse_options("sinkhorn", ["eps=0.5", "iters=5", "unit_tokens=no", "merge=mean"])
    assert parsed == {"eps": 0.5, "iters": 5, "unit_tokens": False, "merge": "mean"}
    assert [type(v) for v in parsed.values()] == [float, int, bool, str]
    assert tokred.reducers.parse_options("l1", ["coordinates=exact"]) == {"coordinates": "exact"}
    with pytest.raises(ValueError, match="option iters='many' of method 'sinkhorn' is not a int"):
        tokred.reducers.parse_options("sinkhorn", ["iters=many"])
    with pytest.raises(ValueError, match="'topk' takes none"):
        tokred.reducers.parse_options("topk", ["rounds=true"])


def test_dynamicvit_predictor_with_every_token_dropped():
    """An image with no kept token gets the global mean 0 + eps (the study's is 0/0 = NaN); any other image
    gets exactly the study's value (SPEC §3.4)."""
    torch.manual_seed(0)
    predictor = Predictor(48)
    x = torch.randn(3, 20, 48)
    policy = (torch.rand(3, 20) < 0.5).float()
    policy[0, 0], policy[2] = 1.0, 0.0  # image 2: every token dropped
    with torch.no_grad():
        out = predictor(x, policy)
        h = predictor.inner(x)
        weight = policy[..., None]
        shared = (h[..., 24:] * weight).sum(1, keepdim=True) / weight.sum(1, keepdim=True) + 1e-6
        study = predictor.outer(torch.cat([h[..., :24], shared.expand(-1, 20, -1)], -1)).log_softmax(-1)
        empty = torch.full((1, 20, 24), 1e-6)
        eps_only = predictor.outer(torch.cat([h[2:, :, :24], empty], -1)).log_softmax(-1)
    assert study[2].isnan().all() and out.isfinite().all()
    assert torch.equal(out[:2], study[:2]) and torch.equal(out[2:], eps_only)


def test_dynamicvit_training_when_a_stage_drops_everything(images):
    """A first stage that drops every token (as at low keep rates): the loss and all gradients stay finite."""
    model = tiny("dynamicvit", 0.25).train()
    last = model.reducers["3"].predictor.outer[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([-50.0, 50.0]))  # channel 0 (keep) far below drop
    logits, aux = model(images[:2], aux=True)
    assert all((d == 0).all() for d in aux["decisions"])
    criterion = tokred.DynamicViTLoss(torch.nn.CrossEntropyLoss(), model.keep_ratios)
    loss = criterion(logits, aux, torch.tensor([0, 1]), (torch.randn_like(logits), torch.randn_like(aux["tokens"])))
    loss.backward()
    assert loss.isfinite() and all(p.grad.isfinite().all() for p in model.parameters() if p.grad is not None)
