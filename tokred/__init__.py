"""tokred: token reduction in Vision Transformers."""

from tokred import ops
from tokred.export import export_onnx, export_program
from tokred.models import create_backbone, create_model
from tokred.patch import ReducingVisionTransformer, patch
from tokred.reducers import METHODS, DynamicViTLoss, MethodInfo, method_info
from tokred.trace import StageTrace, Trace

__all__ = [
    "METHODS",
    "DynamicViTLoss",
    "MethodInfo",
    "ReducingVisionTransformer",
    "StageTrace",
    "Trace",
    "create_backbone",
    "create_model",
    "export_onnx",
    "export_program",
    "method_info",
    "ops",
    "patch",
]
__version__ = "0.1.0"
