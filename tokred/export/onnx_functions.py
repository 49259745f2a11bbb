"""ONNX forms of the two aten operators the references use that the ONNX exporter does not translate."""

from onnxscript import opset18 as op


def sort_stable(self, stable: bool | None = None, dim: int = -1, descending: bool = False):  # noqa: ANN001, ANN201
    """``aten::sort.stable`` as ONNX TopK over the whole axis: TopK breaks ties by the lower index, which is
    what a stable sort does (in both directions)."""
    count = op.Unsqueeze(op.Gather(op.Shape(self), dim), [0])
    return op.TopK(self, count, axis=dim, largest=1 if descending else 0, sorted=1)


def cdist(x1, x2, p: float = 2.0, compute_mode: int | None = None):  # noqa: ANN001, ANN201
    """``aten::_cdist_forward`` for p = 2 and [B, N, C] inputs: Euclidean distances from the Gram matrix of the
    inputs centred on x1's mean (distances do not move; the squares lose less to cancellation), clamped at 0."""
    assert p == 2.0, "the references only ask for Euclidean distances"
    centre = op.ReduceMean(x1, [-2], keepdims=1)
    a, b = op.Sub(x1, centre), op.Sub(x2, centre)
    square_a = op.ReduceSum(op.Mul(a, a), [-1], keepdims=1)  # [B, N, 1]
    square_b = op.Transpose(op.ReduceSum(op.Mul(b, b), [-1], keepdims=1), perm=[0, 2, 1])  # [B, 1, M]
    gram = op.MatMul(a, op.Transpose(b, perm=[0, 2, 1]))
    squared = op.Sub(op.Add(square_a, square_b), op.Add(gram, gram))
    return op.Sqrt(op.Max(squared, op.CastLike(0.0, squared)))
