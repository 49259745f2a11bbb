"""tokred: token reduction in Vision Transformers."""

from tokred import ops

__all__ = ["ops"]
__version__ = "0.1.0"
