"""The op table.  Importing this package registers every row."""
from . import elementwise, fill, fused, index, linalg, reduce, shape, updates  # noqa: F401  (registration)
from .registry import OPS, OpDef, Spec

__all__ = ["OPS", "OpDef", "Spec"]
