"""Indexing rows: NumPy-style indexing (gather), its scatter-add gradient, and setitem.

An index is kept as a hashable spec: ("int", i), ("slice", start, stop, step), ("none",),
("ellipsis",) or ("array", k) for the k-th integer-array input after the indexed tensor.
"""
import numpy as np

from .. import dtypes
from ..kernels import cpu
from ..kernels import cuda as cuda_kernels
from . import sharding
from .registry import Spec, defop


def _dummy(shape):
    """A zero-memory array of any shape, to let NumPy work out an index's result shape."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape, (0,) * len(shape))


def result_shape(op, shape, spec, array_shapes):
    arrays = [np.zeros(s, np.int64) for s in array_shapes]
    try:
        return _dummy(shape)[cpu._index(spec, arrays)].shape
    except IndexError as e:
        raise IndexError(f"{op}: {e} (tensor shape {tuple(shape)})") from None


def _check_arrays(op, arrays):
    for a in arrays:
        if a.dtype not in (dtypes.int64, dtypes.int32):
            raise IndexError(f"{op}: index tensors must be integer, got {a.dtype} of shape {a.shape}")


def _index_infer(attrs, x, *arrays):
    _check_arrays("index", arrays)
    return Spec(result_shape("index", x.shape, attrs["spec"], [a.shape for a in arrays]), x.dtype)


def _index_grad(c):
    x, arrays = c.x[0], c.x[1:]
    g = c.F.apply("index_backward", c.g, *arrays, spec=c.attrs["spec"], shape=x.shape)
    return (g,) + (None,) * len(arrays)


def _index_reference(x, *arrays, spec):
    return x[cpu._index(spec, arrays)]


def _index_backward_reference(g, *arrays, spec, shape):
    out = np.zeros(shape, g.dtype)
    np.add.at(out, cpu._index(spec, arrays), g)
    return out


def _index_samples(rng):
    x = rng.standard_normal((5, 4, 3))
    return [((x,), {"spec": (("int", 1), ("slice", None, None, -2))}),
            ((x,), {"spec": (("ellipsis",), ("none",), ("slice", 1, None, 1))}),
            ((x, np.array([0, 4, 4, 1])), {"spec": (("array", 0),)}),
            ((x, np.array([[2, 0], [2, 2]])), {"spec": (("slice", None, None, None), ("array", 0))})]


defop("index", _index_infer, _index_reference, kernels={"cpu": cpu.index, "cuda": cuda_kernels.shape_kernel("index")}, grad=_index_grad,
      shard=sharding.index,
      sample=_index_samples)


def _index_backward_infer(attrs, g, *arrays):
    return Spec(tuple(attrs["shape"]), g.dtype)


def _index_backward_samples(rng):
    return [((rng.standard_normal((4, 3)), np.array([0, 4, 4, 1])),
             {"spec": (("array", 0),), "shape": (5, 3)}),
            ((rng.standard_normal((2, 3)),), {"spec": (("slice", 1, 5, 2),), "shape": (5, 3)})]


defop("index_backward", _index_backward_infer, _index_backward_reference,
      kernels={"cpu": cpu.index_backward, "cuda": cuda_kernels.shape_kernel("index_backward")}, shard=sharding.index_backward, grad=lambda c: (c.F.apply("index", c.g, *c.x[1:], spec=c.attrs["spec"]),)
      + (None,) * (len(c.x) - 1), sample=_index_backward_samples)


def _setitem_infer(attrs, x, value, *arrays):
    _check_arrays("setitem", arrays)
    target = result_shape("setitem", x.shape, attrs["spec"], [a.shape for a in arrays])
    try:
        np.broadcast_shapes(value.shape, target)
        if np.broadcast_shapes(value.shape, target) != tuple(target):
            raise ValueError
    except ValueError:
        raise ValueError(f"setitem: cannot assign a value of shape {value.shape} "
                         f"to an index selecting shape {tuple(target)} of a tensor of shape {x.shape}") from None
    return Spec(x.shape, x.dtype)


def _setitem_grad(c):
    x, value, arrays, spec = c.x[0], c.x[1], c.x[2:], c.attrs["spec"]
    gx = c.F.apply("setitem", c.g, c.F.zeros((), dtype=c.g.dtype), *arrays, spec=spec) if c.needs[0] else None
    gv = c.F.apply("index", c.g, *arrays, spec=spec).sum_to(value.shape) if c.needs[1] else None
    return (gx, gv) + (None,) * len(arrays)


def _setitem_reference(x, value, *arrays, spec):
    out = x.copy()
    out[cpu._index(spec, arrays)] = value
    return out


defop("setitem", _setitem_infer, _setitem_reference, kernels={"cpu": cpu.setitem, "cuda": cuda_kernels.shape_kernel("setitem")}, grad=_setitem_grad, shard=sharding.replicated,
      sample=lambda rng: [((rng.standard_normal((4, 3)), rng.standard_normal((3,))),
                           {"spec": (("slice", 1, 3, None),)}),
                          ((rng.standard_normal((4, 3)), rng.standard_normal((2, 3)), np.array([3, 0])),
                           {"spec": (("array", 0),)})])
