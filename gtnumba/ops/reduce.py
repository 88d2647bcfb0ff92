"""Reduction rows: sum, max, min over an axis set; argmax/argmin over one axis."""
import numpy as np

from .. import dtypes
from ..kernels import cpu
from ..kernels import cuda as cuda_kernels
from . import sharding
from .registry import Spec, defop
from .shapes import reduced_shape


def _reduce_infer(op):
    def infer(attrs, x):
        if op != "sum" and 0 in [x.shape[a] for a in attrs["axes"]]:
            raise ValueError(f"{op}: cannot reduce over an empty axis (shape {x.shape}, axes {attrs['axes']})")
        dtype = x.dtype
        if op == "sum" and dtype == dtypes.bool_:
            dtype = dtypes.int64
        return Spec(reduced_shape(x.shape, attrs["axes"], attrs["keepdims"]), dtype)
    return infer


def _kept(t, shape, axes):
    """Reshape a reduction result to its keepdims shape, so it broadcasts against the input."""
    return t.reshape(reduced_shape(shape, axes, True))


def _sum_grad(c):
    x = c.x[0]
    return (_kept(c.g, x.shape, c.attrs["axes"]).expand(x.shape),)


def _extremum_grad(c):
    """Ties share the gradient equally, as PyTorch's amax/amin do."""
    x, axes = c.x[0], c.attrs["axes"]
    hit = (x == _kept(c.out, x.shape, axes)).astype(c.g.dtype)
    count = hit.sum(axis=axes, keepdims=True)
    return (_kept(c.g, x.shape, axes) * hit / count,)


def _reduce_samples(rng):
    x = rng.standard_normal((3, 4, 5))
    return [((x,), {"axes": axes, "keepdims": k})
            for axes, k in [((0,), False), ((1,), True), ((2,), False), ((0, 2), True), ((0, 1, 2), False)]]


defop("sum", _reduce_infer("sum"), lambda x, axes, keepdims: np.sum(x, axis=axes, keepdims=keepdims),
      kernels={"cpu": cpu.reduce_sum, "cuda": cuda_kernels.reduction_kernel("sum")}, grad=_sum_grad, shard=sharding.reduction("sum"), sample=_reduce_samples)
defop("max", _reduce_infer("max"), lambda x, axes, keepdims: np.max(x, axis=axes, keepdims=keepdims),
      kernels={"cpu": cpu.reduce_max, "cuda": cuda_kernels.reduction_kernel("max")}, grad=_extremum_grad, shard=sharding.reduction("extremum"), sample=_reduce_samples)
defop("min", _reduce_infer("min"), lambda x, axes, keepdims: np.min(x, axis=axes, keepdims=keepdims),
      kernels={"cpu": cpu.reduce_min, "cuda": cuda_kernels.reduction_kernel("min")}, grad=_extremum_grad, shard=sharding.reduction("extremum"), sample=_reduce_samples)


def _arg_infer(op):
    def infer(attrs, x):
        axis = attrs["axis"]
        if axis is None:
            return Spec((1,) * len(x.shape) if attrs["keepdims"] else (), dtypes.int64)
        if x.shape[axis] == 0:
            raise ValueError(f"{op}: cannot take {op} over an empty axis (shape {x.shape}, axis {axis})")
        return Spec(reduced_shape(x.shape, (axis,), attrs["keepdims"]), dtypes.int64)
    return infer


def _arg_samples(rng):
    x = rng.standard_normal((3, 4, 5))
    return [((x,), {"axis": a, "keepdims": k}) for a, k in [(0, False), (2, True), (None, False)]]


defop("argmax", _arg_infer("argmax"), lambda x, axis, keepdims: np.argmax(x, axis=axis, keepdims=keepdims),
      kernels={"cpu": cpu.argmax, "cuda": cuda_kernels.reduction_kernel("argmax")}, differentiable=False, shard=sharding.arg_reduction, sample=_arg_samples)
defop("argmin", _arg_infer("argmin"), lambda x, axis, keepdims: np.argmin(x, axis=axis, keepdims=keepdims),
      kernels={"cpu": cpu.argmin, "cuda": cuda_kernels.reduction_kernel("argmin")}, differentiable=False, shard=sharding.arg_reduction, sample=_arg_samples)

