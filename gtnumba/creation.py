"""Creation functions: tensors from data, constants and random numbers (one seeded generator)."""
import numpy as np

from . import dtypes, signal
from .leaves import array_node
from ._tensor import Tensor, apply

_RNG = [np.random.default_rng()]


def manual_seed(seed):
    """Seed gtnumba's random generator (randn, rand, dropout masks, weight init)."""
    _RNG[0] = np.random.default_rng(int(seed))


def generator():
    return _RNG[0]


def _make(arr, dtype, requires_grad, op, copy=False):
    t = Tensor._wrap(array_node(arr, dtype, op, copy))
    if requires_grad:
        t.requires_grad = True
    return t


def _data(t):
    """Mark user data: on a mesh, auto-sharding splits it along dim 0 (the batch)."""
    t._node.role = "data"
    return t


def tensor(data, dtype=None, requires_grad=False):
    return _data(_make(data, dtype, requires_grad, "tensor", copy=True))


def from_numpy(array, requires_grad=False):
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy: expected a numpy.ndarray, got {type(array).__name__}")
    return _data(_make(array, None, requires_grad, "from_numpy", copy=True))


def _shape(op, shape):
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape):
        raise TypeError(f"{op}: shape must be ints, got {tuple(shape)!r}")
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"{op}: negative dimension in shape {shape}")
    return shape


def _float_dtype(op, dtype):
    dt = dtypes.as_dtype(dtype, op)
    if not dtypes.is_float(dt):
        raise TypeError(f"{op}: random values need a floating-point dtype, got {dt}")
    return dt


def randn(*shape, dtype=None, requires_grad=False):
    dt = _float_dtype("randn", dtype)
    return _make(generator().standard_normal(_shape("randn", shape)).astype(dt), dt, requires_grad, "randn")


def rand(*shape, dtype=None, requires_grad=False):
    dt = _float_dtype("rand", dtype)
    return _make(generator().random(_shape("rand", shape)).astype(dt), dt, requires_grad, "rand")


def randint(low, high, shape, dtype=None):
    return _make(generator().integers(low, high, _shape("randint", (shape,))), dtype or dtypes.int64, False, "randint")


def full(shape, fill_value, dtype=None, requires_grad=False):
    shape = _shape("full", (shape,) if isinstance(shape, int) else tuple(shape))
    dt = dtypes.as_dtype(dtype, "full")
    if requires_grad:
        return _make(np.full(shape, fill_value, dtype=dt), dt, requires_grad, "full")
    if not isinstance(fill_value, (int, float, bool, np.number, np.bool_)):
        raise TypeError(f"full: fill value must be a number, got {fill_value!r}")
    return apply("fill", shape=shape, value=dt.type(fill_value).item(), dtype=dt)


def zeros(*shape, dtype=None, requires_grad=False):
    return full(_shape("zeros", shape), 0, dtype, requires_grad)


def ones(*shape, dtype=None, requires_grad=False):
    return full(_shape("ones", shape), 1, dtype, requires_grad)


def zeros_like(t, dtype=None, requires_grad=False):
    return full(t.shape, 0, dtype or t.dtype, requires_grad)


def ones_like(t, dtype=None, requires_grad=False):
    return full(t.shape, 1, dtype or t.dtype, requires_grad)


def arange(start, stop=None, step=1, dtype=None, requires_grad=False):
    if stop is None:
        start, stop = 0, start
    if step == 0:
        raise ValueError("arange: step must not be zero")
    values = (start, stop, step)
    if dtype is None:
        dtype = dtypes.float32 if any(isinstance(v, float) for v in values) else dtypes.int64
    return _make(np.arange(start, stop, step), dtype, requires_grad, "arange")


def eye(n, m=None, dtype=None):
    return _make(np.eye(n, m), dtypes.as_dtype(dtype, "eye"), False, "eye")


# The public creation functions (gt.randn, gtnumba.client.tensor.randn, ...): inside a signal scope
# they lay their tensors out as the signal says.  gtnumba's own code calls the plain ones above.
PUBLIC = {f.__name__: signal.scoped(f) for f in (tensor, from_numpy, randn, rand, randint, full, zeros, ones,
                                                 zeros_like, ones_like, arange, eye)}
