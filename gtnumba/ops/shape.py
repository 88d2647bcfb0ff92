"""Shape rows: reshape, permute, expand, concat (views where the backend allows)."""
import numpy as np

from ..kernels import cpu
from ..kernels import cuda as cuda_kernels
from . import sharding
from .registry import Spec, defop


def _reshape_infer(attrs, x):
    # the API resolved -1 already, so the shape here is concrete
    assert int(np.prod(attrs["shape"])) == int(np.prod(x.shape))
    return Spec(attrs["shape"], x.dtype)


defop("reshape", _reshape_infer, lambda x, shape: np.reshape(x, shape),
      kernels={"cpu": cpu.reshape, "cuda": cuda_kernels.shape_kernel("reshape")},
      grad=lambda c: (c.g.reshape(c.x[0].shape),), alias=True, shard=sharding.reshape,
      sample=lambda rng: [((rng.standard_normal((3, 4)),), {"shape": (2, 6)}),
                          ((rng.standard_normal((2, 3, 4)),), {"shape": (24,)})])


def _permute_infer(attrs, x):
    axes = attrs["axes"]
    if sorted(axes) != list(range(len(x.shape))):
        raise ValueError(f"permute: axes {axes} are not a permutation of the {len(x.shape)} dims of shape {x.shape}")
    return Spec(tuple(x.shape[a] for a in axes), x.dtype)


def _permute_grad(c):
    inverse = tuple(int(i) for i in np.argsort(c.attrs["axes"]))
    return (c.g.permute(*inverse),)


defop("permute", _permute_infer, lambda x, axes: np.transpose(x, axes),
      kernels={"cpu": cpu.permute, "cuda": cuda_kernels.shape_kernel("permute")}, grad=_permute_grad, alias=True, shard=sharding.permute,
      sample=lambda rng: [((rng.standard_normal((2, 3, 4)),), {"axes": (2, 0, 1)}),
                          ((rng.standard_normal((3, 5)),), {"axes": (1, 0)})])


def _expand_infer(attrs, x):
    shape = attrs["shape"]
    ok = len(shape) >= len(x.shape) and all(
        d == s or d == 1 for d, s in zip(x.shape[::-1], shape[::-1]))
    if not ok:
        raise ValueError(f"expand: cannot expand shape {x.shape} to {shape}")
    return Spec(tuple(shape), x.dtype)


defop("expand", _expand_infer, lambda x, shape: np.broadcast_to(x, shape),
      kernels={"cpu": cpu.expand, "cuda": cuda_kernels.shape_kernel("expand")},
      grad=lambda c: (c.g.sum_to(c.x[0].shape),), alias=True, shard=sharding.expand,
      sample=lambda rng: [((rng.standard_normal((3, 1)),), {"shape": (2, 3, 4)}),
                          ((rng.standard_normal((4,)),), {"shape": (3, 4)})])


def _concat_infer(attrs, *xs):
    axis = attrs["axis"]
    first = xs[0]
    for x in xs[1:]:
        if len(x.shape) != len(first.shape) or any(
                a != b for i, (a, b) in enumerate(zip(x.shape, first.shape)) if i != axis):
            shapes = ", ".join(str(t.shape) for t in xs)
            raise ValueError(f"cat: shapes {shapes} differ outside axis {axis}")
    dtype = first.dtype
    for x in xs[1:]:
        dtype = np.promote_types(dtype, x.dtype)
    shape = list(first.shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    return Spec(tuple(shape), dtype)


def _concat_grad(c):
    axis, grads, start = c.attrs["axis"], [], 0
    for x, need in zip(c.x, c.needs):
        stop = start + x.shape[axis]
        index = (slice(None),) * axis + (slice(start, stop),)
        grads.append(c.g[index] if need else None)
        start = stop
    return tuple(grads)


defop("concat", _concat_infer, lambda *xs, axis: np.concatenate(xs, axis=axis),
      kernels={"cpu": cpu.concat, "cuda": cuda_kernels.shape_kernel("concat")}, grad=_concat_grad, shard=sharding.concat,
      sample=lambda rng: [((rng.standard_normal((2, 3)), rng.standard_normal((4, 3))), {"axis": 0}),
                          ((rng.standard_normal((2, 1, 3)), rng.standard_normal((2, 2, 3)),
                            rng.standard_normal((2, 3, 3))), {"axis": 1})])

