"""Leaf nodes made from user data: the layer below Tensor, beside the graph.

`array_node` turns an array, nested list, scalar (or anything with `__array__`, a Tensor too)
into a leaf node holding a copy; creation functions and Tensor(...) build on it.
"""
import numpy as np

from . import dtypes
from .graph import leaf_node
from .kernels import backend
from .ops import Spec


def infer_dtype(arr):
    if arr.dtype.kind == "f":
        return dtypes.float64 if arr.dtype == np.float64 else dtypes.float32
    if arr.dtype.kind in "iu":
        return dtypes.int64 if arr.dtype.itemsize > 4 or arr.dtype.kind == "u" else dtypes.as_dtype(arr.dtype)
    if arr.dtype.kind == "b":
        return dtypes.bool_
    raise TypeError(f"tensor: cannot make a tensor from data of dtype {arr.dtype}")


def _python_data(data):
    return isinstance(data, (list, tuple, float, int, bool)) and not isinstance(data, np.generic)


def array_node(data, dtype, op, copy=True):
    """A leaf node holding `data` as `dtype`.

    User data is copied: the graph computes later, so a later write to the caller's array must
    not reach it.  Arrays made here for the purpose (random, full) are handed over with copy=False.
    """
    if isinstance(data, (list, tuple)):
        data = [np.asarray(d) if hasattr(d, "__array__") and not isinstance(d, np.ndarray) else d for d in data]
    arr = np.asarray(data)
    if dtype is not None:
        dt = dtypes.as_dtype(dtype, op)
    elif _python_data(data) and arr.dtype == np.float64:
        dt = dtypes.float32             # Python floats default to float32, as in PyTorch
    else:
        dt = infer_dtype(arr)
    arr = np.array(arr, dtype=dt, order="C", copy=True) if copy else np.asarray(arr, dtype=dt, order="C")
    return leaf_node(backend.to_backend(arr), Spec(arr.shape, dt))
