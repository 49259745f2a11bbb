"""tokred: token reduction in Vision Transformers."""

from tokred import ops
from tokred.models import create_backbone, create_model
from tokred.patch import ReducingVisionTransformer, patch
from tokred.reducers import METHODS, DynamicViTLoss
from tokred.trace import StageTrace, Trace

__all__ = [
    "METHODS",
    "DynamicViTLoss",
    "ReducingVisionTransformer",
    "StageTrace",
    "Trace",
    "create_backbone",
    "create_model",
    "ops",
    "patch",
]
__version__ = "0.1.0"
