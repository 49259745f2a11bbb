"""Deployment: every method as ONNX (checked in onnxruntime), as a saved and loaded torch.export program, and
compiled with torch.compile in one graph; `python -m tokred.export` end to end."""

import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import timm
import torch

import tokred
from tokred.export import Deployed, default_example, export_onnx, export_program, grouping
from tokred.reducers import METHODS

KERNEL_OPS = {"ats": "ats_sample", "dpc_knn": "dpc_knn", "kmedoids": "kmedoids", "sinkhorn": "sinkhorn"}
# With random weights DynamicViT's keep scores are near ties, which any change of summation order reorders, and
# SiT's near-uniform weights make its merged tokens near copies of each other: sharpened, as training would.
SHARPEN = {"dynamicvit": ("predictor.outer.4.weight", 300.0), "sit": ("scale", 30.0)}
OPTIONS = {"sinkhorn": {"eps": 0.05}}  # likewise: at ε = 1 its plans are near uniform over random centres
SOFT = ("sit", "patchmerger", "sinkhorn")  # their trace assigns a patch to its heaviest merged token
MARGIN = 1e-6  # far above float32 rounding of weights ~1/36


def small(method: str, dtype: torch.dtype = torch.float32) -> tokred.ReducingVisionTransformer:
    """DeiT-T with 4 blocks at 96² (36 patches; stages at blocks 1, 2, 3 keep 18, 9, 4), random weights."""
    torch.manual_seed(0)
    model = tokred.create_model("deit_tiny_patch16_224", method, 0.5, (1, 2, 3), depth=4, img_size=96)
    if method in SHARPEN:
        name, factor = SHARPEN[method]
        with torch.no_grad():
            for stage in model.reducers.values():
                stage.get_parameter(name).mul_(factor)
    return model.to(dtype).eval()


def images(batch: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(batch, 3, 96, 96, generator=torch.Generator().manual_seed(batch), dtype=dtype)


def eager(model: tokred.ReducingVisionTransformer, x: torch.Tensor) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """PyTorch's logits and stage assignments for images x, and per stage [B, P] how decisive each patch's
    assignment is: inf for selections and hard merges; for soft merges the gap between the two heaviest weights
    of the token the patch came from (a near tie may go either way in another runtime)."""
    with torch.no_grad():
        outputs = [t.numpy() for t in Deployed(model, assignments=True)(x)]
        _, trace = model(x, trace=True)
    margins, previous = [], torch.arange(trace.stages[0].assignment.shape[1]).expand(len(x), -1)
    for stage in trace.stages:
        margin = torch.full(previous.shape, torch.inf)
        if model.method in SOFT:
            top = stage.soft_assignment.topk(2, dim=1).values  # [B, 2, N]
            margin = (top[:, 0] - top[:, 1]).gather(1, previous)
        margins.append(margin.numpy())
        previous = stage.assignment
    return outputs, margins


def assert_matches(got: list, want: tuple[list[np.ndarray], list[np.ndarray]], atol: float = 1e-4) -> None:
    """Logits within atol; every stage's assignment identical wherever it is decisive (and came from matching
    assignments before): selections and hard merges as groupings (tokens tied in a ranking may swap places)."""
    (want, margins), got = want, [np.asarray(g) for g in got]
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=atol)
    agreed, compared = np.ones(want[1].shape, dtype=bool), []
    for stage, (g, w, margin) in enumerate(zip(got[1:], want[1:], margins, strict=True)):
        g, w = (g, w) if np.isfinite(margin).any() else (grouping(g), grouping(w))
        decisive = agreed & (margin > MARGIN)
        assert np.array_equal(g[decisive], w[decisive]), f"stage {stage}: {(g != w)[decisive].sum()} patches differ"
        agreed &= g == w
        compared.append(decisive.mean())
    assert np.mean(compared) > 0.5, f"too few decisive assignments to compare: {compared}"


@pytest.mark.parametrize("method", list(METHODS))
def test_onnx_matches_pytorch_in_onnxruntime(method, tmp_path):
    model = small(method)
    path = export_onnx(model, tmp_path / f"{method}.onnx", default_example(model, 2), assignments=True)
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    assert {(o.domain or "ai.onnx") for o in graph.opset_import} == {"ai.onnx"}
    assert next(o.version for o in graph.opset_import) >= 18
    reductions = [n.op_type for n in graph.graph.node for a in n.attribute if a.name == "reduction" and a.s != b"none"]
    assert not reductions, f"scatters with a reduction: {reductions}"
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (3, 1):
        x = images(batch)
        assert_matches(session.run(None, {"images": x.numpy()}), eager(model, x))
    assert model.training is False and [o.name for o in session.get_outputs()][:2] == ["logits", "assignment_1"]


@pytest.mark.parametrize(("pool", "method"), [("avg", "ats"), ("map", "tome")])
def test_onnx_without_class_token_with_registers(pool, method, tmp_path):
    """Pooling by the token state (ATS's padding left out, ToMe's sizes in SigLIP-style attention pooling)."""
    torch.manual_seed(0)
    base = timm.create_model(
        "vit_tiny_patch16_224", class_token=False, global_pool=pool, reg_tokens=2, depth=4, img_size=96
    )
    model = tokred.patch(base, method, 0.5, (1, 2, 3)).eval()
    path = export_onnx(model, tmp_path / f"{method}.onnx", default_example(model), assignments=True)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = images(3)
    assert_matches(session.run(None, {"images": x.numpy()}), eager(model, x))


def test_grouping_ignores_the_order_of_tokens_only():
    rng = np.random.default_rng(0)
    assignment = rng.integers(-1, 9, size=(4, 36))
    relabelled = np.where(assignment < 0, -1, rng.permutation(9)[assignment])
    np.testing.assert_array_equal(grouping(relabelled), grouping(assignment))
    group = grouping(assignment)
    assert ((group < 0) == (assignment < 0)).all()
    for row in group:  # tokens numbered by their first patch
        kept = row[row >= 0]
        np.testing.assert_array_equal(
            np.unique(kept, return_index=True)[1], np.sort(np.unique(kept, return_index=True)[1])
        )
        np.testing.assert_array_equal(np.unique(kept), np.arange(len(np.unique(kept))))
    moved = assignment.copy()
    moved[2, 5] = moved[2, 0]  # patch 5 joins patch 0's token
    assert assignment[2, 5] != assignment[2, 0]
    assert (grouping(moved) != group).any(1).tolist() == [False, False, True, False]


def test_the_command_line_check_fails_on_other_tokens(tmp_path):
    """verify() compares the file with the model given: a model of other weights groups the patches otherwise, and
    float32 rounding alone is above a tolerance of 0."""
    from tokred.export.__main__ import verify

    path = export_onnx(small("topk"), tmp_path / "topk.onnx", assignments=True)
    torch.manual_seed(1)
    other = tokred.create_model("deit_tiny_patch16_224", "topk", 0.5, (1, 2, 3), depth=4, img_size=96).eval()
    with pytest.raises(RuntimeError, match="into other tokens"):
        verify(other, path, 3, assignments=True, atol=1e-4)
    assert 0 < verify(small("topk"), path, 3, assignments=True, atol=1e-4) < 1e-4
    with pytest.raises(RuntimeError, match="above --atol"):
        verify(small("topk"), path, 3, assignments=True, atol=0.0)


def test_exports_run_in_eval_mode_and_restore_the_models_mode(tmp_path):
    model = small("dynamicvit").train()  # in training DynamicViT keeps every token: eval must be what is exported
    path = export_onnx(model, tmp_path / "dynamicvit.onnx", default_example(model, 2), assignments=True)
    program = export_program(model, assignments=True)
    assert model.training
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = images(3)
    want = eager(model.eval(), x)
    assert_matches(session.run(None, {"images": x.numpy()}), want)
    with torch.no_grad():
        assert_matches([t.numpy() for t in program.module()(x)], want, atol=1e-5)


def test_exported_program_in_float64():
    """(onnxruntime's CPU provider has no float64 convolution, so float64 ONNX files do not run there.)"""
    model = small("dpc_knn", torch.float64)
    x = images(3, torch.float64)
    with torch.no_grad():
        got = [t.numpy() for t in export_program(model, assignments=True).module()(x)]
    assert_matches(got, eager(model, x), atol=1e-12)


@pytest.mark.parametrize("method", list(METHODS))
def test_exported_program_saves_and_loads(method, tmp_path):
    model = small(method)
    program = export_program(model, assignments=True)
    torch.export.save(program, tmp_path / "model.pt2")
    loaded = torch.export.load(tmp_path / "model.pt2")
    targets = {str(node.target) for node in loaded.graph.nodes if node.op == "call_function"}
    if method in KERNEL_OPS:  # the compiled kernels run inside the program
        assert f"tokred.{KERNEL_OPS[method]}.default" in targets
    assert not any("scatter_add" in t or "scatter_reduce" in t for t in targets)
    for batch in (3, 1):
        x = images(batch)
        with torch.no_grad():
            got = [t.numpy() for t in loaded.module()(x)]
        assert_matches(got, eager(model, x), atol=1e-5)


@pytest.mark.parametrize("method", list(METHODS))
def test_compiles_in_one_graph(method):
    """fullgraph=True: a graph break is an error. aot_eager traces what inductor would compile, quickly."""
    model = small(method)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        for batch in (2, 3):
            x = images(batch)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m != "dpc_knn" else m for m in METHODS])
def test_compiles_with_inductor(method):
    model = small(method)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        x = images(2)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_export_errors(tmp_path):
    model = small("topk")
    with pytest.raises(ValueError, match="B >= 2"):
        export_onnx(model, tmp_path / "m.onnx", images(1))
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", opset=17)
    with pytest.raises(TypeError, match="tokred model"):
        export_program(torch.nn.Linear(2, 2), torch.randn(2, 3, 4, 4))


def test_the_command_line(tmp_path):
    """`python -m tokred.export` on DeiT-T with the weights of a trained model file (reducers.* included)."""
    torch.manual_seed(1)
    trained = tokred.create_model("deit_tiny_patch16_224", "dpc_knn", 0.5, num_classes=10)
    torch.save({"model": trained.state_dict()}, tmp_path / "best_checkpoint.pth")
    out = tmp_path / "deit_tiny_dpc_knn.onnx"
    command = [sys.executable, "-m", "tokred.export", "--model", "deit_tiny_patch16_224", "--method", "dpc_knn",
               "--r", "0.5", "--pretrained-path", str(tmp_path / "best_checkpoint.pth"), "--out", str(out),
               "--assignments"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "every stage's tokens the same" in done.stderr
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    x = torch.randn(4, 3, 224, 224)
    assert_matches(session.run(None, {"images": x.numpy()}), eager(trained.eval(), x))
    wrong = subprocess.run([*command, "--method", "sinkhorn", "--no-verify"], capture_output=True, text=True)
    assert wrong.returncode != 0 and "does not fit" in wrong.stderr


def test_the_command_line_writes_a_torch_export_program(tmp_path):
    from tokred.export.__main__ import main

    torch.manual_seed(2)
    trained = tokred.create_model("deit_tiny_patch16_224", "ats", 0.5, num_classes=10)
    torch.save(trained.state_dict(), tmp_path / "ats.pth")
    arguments = ["--model", "deit_tiny_patch16_224", "--method", "ats", "--pretrained-path", str(tmp_path / "ats.pth")]
    path = main([*arguments, "--out", str(tmp_path / "ats.pt2"), "--assignments"])  # checked inside
    program = torch.export.load(path)
    assert any(node.target == torch.ops.tokred.ats_sample.default for node in program.graph.nodes)
    x = images(3)
    with torch.no_grad():
        got = [t.numpy() for t in program.module()(torch.nn.functional.interpolate(x, 224))]
    assert_matches(got, eager(trained.eval(), torch.nn.functional.interpolate(x, 224)), atol=1e-5)
    with pytest.raises(SystemExit, match=r"\.onnx or \.pt2"):
        main([*arguments, "--out", str(tmp_path / "ats.trt")])
