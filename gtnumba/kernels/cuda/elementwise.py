"""Elementwise CUDA kernels: one strided/broadcasting kernel template per arity, instantiated
with a `@cuda.jit(device=True)` scalar function per op.

Every kernel here has the signature of the CPU kernel of its op row (positional device arrays,
then the row's attrs as keywords) and returns a fresh C-contiguous device array from the pool.
Operands may be any C-contiguous device arrays whose shapes broadcast; the host side computes the
output shape, per-operand element strides (0 along broadcast dims), merges dims that every operand
walks contiguously, and launches the template with (shape, strides) tuples.  Numba compiles one
specialization per (op, dtypes, number of dims), cached by its dispatcher; the scalar function
is built once per (op, compute dtype), so constants have the compute dtype (float32 math stays
float32 on the device).

Templates use grid-stride loops; the block size is `runtime.BLOCK`.
"""
import functools
import math

import numpy as np
from numba import cuda

from . import memory, runtime
from .runtime import jit, offset

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
I64, BOOL = np.dtype(np.int64), np.dtype(np.bool_)
FLOATS = (F32, F64)
NUMERIC = tuple(d for d in runtime.DTYPES if d != BOOL)
ALL = runtime.DTYPES

# The simulator runs device functions as Python: NumPy's functions give NumPy's results there
# (log(0) = -inf, exp overflow = inf) where Python's math module would raise.
if runtime.SIMULATOR:
    _exp, _log, _sqrt, _tanh = np.exp, np.log, np.sqrt, np.tanh
else:
    _exp, _log, _sqrt, _tanh = math.exp, math.log, math.sqrt, math.tanh
_erf = math.erf
_fabs = abs


# ---- kernel templates, one per arity -------------------------------------------------------
def _unary_template(fn):
    def unary_kernel(out, n, shape, x, sx):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            out[i] = fn(x[offset(i, shape, sx)])
    return unary_kernel


def _unary_param_template(fn):
    def unary_param_kernel(out, n, shape, x, sx, p, q):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            out[i] = fn(x[offset(i, shape, sx)], p, q)
    return unary_param_kernel


def _binary_template(fn):
    def binary_kernel(out, n, shape, a, sa, b, sb):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            out[i] = fn(a[offset(i, shape, sa)], b[offset(i, shape, sb)])
    return binary_kernel


def _ternary_template(fn):
    def ternary_kernel(out, n, shape, c, sc, a, sa, b, sb):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            out[i] = fn(c[offset(i, shape, sc)], a[offset(i, shape, sa)], b[offset(i, shape, sb)])
    return ternary_kernel


def _fill_kernel(out, n, value):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        out[i] = value


TEMPLATES = {"unary": _unary_template, "param": _unary_param_template,
             "binary": _binary_template, "ternary": _ternary_template}


# ---- scalar functions: factory(T) -> device function, T the compute dtype's scalar type ------
def _dev(f):
    return jit(f, device=True)


# Binary arithmetic converts both operands to the compute dtype T first: the API casts operands
# to the result dtype anyway (a row's input_dtypes), and a direct call with mixed dtypes (bool -
# bool, int / int) then computes as the row's dtype rule says instead of failing or widening.
def _add(T):
    return _dev(lambda a, b: T(a) + T(b))


def _sub(T):
    return _dev(lambda a, b: T(a) - T(b))


def _mul(T):
    return _dev(lambda a, b: T(a) * T(b))


def _div(T):
    return _dev(lambda a, b: T(a) / T(b))


def _pow(T):
    return _dev(lambda a, b: T(a) ** T(b))


def _maximum(T):
    def f(a, b):
        a, b = T(a), T(b)
        return a if (a > b or a != a) else b        # NaN wins, as np.maximum
    return _dev(f)


def _minimum(T):
    def f(a, b):
        a, b = T(a), T(b)
        return a if (a < b or a != a) else b
    return _dev(f)


def _cmp(kind):
    """Comparisons compare in the operands' common dtype T, as NumPy does."""
    def factory(T):
        if kind == "eq":
            return _dev(lambda a, b: T(a) == T(b))
        if kind == "ne":
            return _dev(lambda a, b: T(a) != T(b))
        if kind == "lt":
            return _dev(lambda a, b: T(a) < T(b))
        if kind == "le":
            return _dev(lambda a, b: T(a) <= T(b))
        if kind == "gt":
            return _dev(lambda a, b: T(a) > T(b))
        return _dev(lambda a, b: T(a) >= T(b))
    return factory


def _logical_and(T):
    def f(a, b):
        return (a != 0) and (b != 0)
    return _dev(f)


def _where(T):
    def f(c, a, b):
        return T(a) if c else T(b)
    return _dev(f)


def _neg(T):
    return _dev(lambda x: -x)


def _abs(T):
    if T is np.bool_:
        return _dev(lambda x: x)
    return _dev(lambda x: _fabs(x))


def _sign(T):
    one, zero, minus = T(1), T(0), T(-1)

    def f(x):
        if x > zero:
            return one
        if x < zero:
            return minus
        if x == zero:
            return zero
        return x                                    # NaN
    return _dev(f)


def _relu(T):
    if T is np.bool_:
        return _dev(lambda x: x)
    zero = T(0)

    def f(x):
        return zero if x < zero else x              # NaN stays NaN, as np.maximum(x, 0)
    return _dev(f)


def _exp_f(T):
    return _dev(lambda x: _exp(x))


def _log_f(T):
    return _dev(lambda x: _log(x))


def _sqrt_f(T):
    return _dev(lambda x: _sqrt(x))


def _tanh_f(T):
    return _dev(lambda x: _tanh(x))


def _sigmoid(T):
    one, zero = T(1), T(0)

    def f(x):
        e = _exp(-_fabs(x))                          # <= 1: never overflows
        return one / (one + e) if x >= zero else e / (one + e)
    return _dev(f)


def _gelu(T):
    half, one, rsqrt2 = T(0.5), T(1), T(0.7071067811865476)

    def f(x):
        return half * x * (one + _erf(x * rsqrt2))
    return _dev(f)


def _gelu_backward(T):
    half, one, rsqrt2, rsqrt2pi = T(0.5), T(1), T(0.7071067811865476), T(0.3989422804014327)

    def f(x, g):
        x, g = T(x), T(g)
        cdf = half * (one + _erf(x * rsqrt2))
        return g * (cdf + x * _exp(-half * x * x) * rsqrt2pi)
    return _dev(f)


def _clamp(T):
    def f(x, lo, hi):
        v = x
        if v < lo:
            v = lo
        if v > hi:
            v = hi
        return v
    return _dev(f)


def _identity(T):
    return _dev(lambda x: x)


# op name -> (template kind, scalar factory, input dtypes the kernel takes): the kernel side of
# each row; which of those dtypes the API launches comes from the op table (see ptx.py)
SCALAR = {
    "add": ("binary", _add, ALL), "sub": ("binary", _sub, ALL), "mul": ("binary", _mul, ALL),
    "div": ("binary", _div, ALL), "pow": ("binary", _pow, ALL), "maximum": ("binary", _maximum, ALL),
    "minimum": ("binary", _minimum, ALL), "eq": ("binary", _cmp("eq"), ALL), "ne": ("binary", _cmp("ne"), ALL),
    "lt": ("binary", _cmp("lt"), ALL), "le": ("binary", _cmp("le"), ALL), "gt": ("binary", _cmp("gt"), ALL),
    "ge": ("binary", _cmp("ge"), ALL), "logical_and": ("binary", _logical_and, ALL),
    "gelu_backward": ("binary", _gelu_backward, FLOATS), "where": ("ternary", _where, ALL),
    "neg": ("unary", _neg, NUMERIC), "abs": ("unary", _abs, ALL), "sign": ("unary", _sign, NUMERIC),
    "exp": ("unary", _exp_f, FLOATS), "log": ("unary", _log_f, FLOATS), "sqrt": ("unary", _sqrt_f, FLOATS),
    "relu": ("unary", _relu, ALL), "sigmoid": ("unary", _sigmoid, FLOATS), "tanh": ("unary", _tanh_f, FLOATS),
    "gelu": ("unary", _gelu, FLOATS), "cast": ("unary", _identity, ALL), "clamp": ("param", _clamp, ALL),
}


@functools.lru_cache(maxsize=None)
def scalar_function(op, dtype):
    return SCALAR[op][1](np.dtype(dtype).type)


@functools.lru_cache(maxsize=None)
def kernel_function(op, dtype):
    """The Python function of `op`'s kernel for compute dtype `dtype` (what `jit` compiles)."""
    return TEMPLATES[SCALAR[op][0]](scalar_function(op, dtype))


@functools.lru_cache(maxsize=None)
def compiled_kernel(op, dtype):
    """`op`'s kernel for compute dtype `dtype`: a Numba dispatcher that specializes (and caches)
    per argument types, i.e. per operand dtypes and number of dims."""
    return jit(kernel_function(op, dtype))


@functools.lru_cache(maxsize=None)
def _fill():
    return jit(_fill_kernel)


# ---- host side ------------------------------------------------------------------------------
def _layout(name, arrays, out_shape=None):
    """(out shape, coalesced shape, per-operand strides) for broadcasting `arrays`."""
    shapes = [tuple(a.shape) for a in arrays]
    if out_shape is None:
        out_shape = shapes[0] if all(s == shapes[0] for s in shapes) else runtime.broadcast_shape(name, *shapes)
    if all(s == out_shape for s in shapes):       # the common case: no broadcasting
        n = runtime.prod(out_shape)
        return out_shape, (max(n, 1),), [(1,)] * len(arrays)
    strides = [runtime.broadcast_strides(s, out_shape) for s in shapes]
    shape, strides = runtime.coalesce(out_shape, strides)
    return out_shape, shape, strides


def run(op, name, arrays, out_dtype, compute_dtype, params=(), out_shape=None):
    """Check, allocate and launch `op`'s template over device `arrays`; returns the output."""
    out_shape, shape, strides = _layout(name, arrays, out_shape)
    out = memory.empty(out_shape, out_dtype)
    n = runtime.prod(out_shape)
    if n == 0:
        return out
    args = [runtime.flat(out), n, shape]
    for a, s in zip(arrays, strides):
        args += [runtime.flat(a), s]
    args += list(params)
    runtime.launch(compiled_kernel(op, compute_dtype), n, *args, name=name)
    return out


def _check(name, arrays, dtypes=ALL):
    return [runtime.check_array(name, a, f"input {i}", dtypes) for i, a in enumerate(arrays)]


def _promote(*dts):
    return np.dtype(np.result_type(*dts))


def fill(shape, value, dtype):
    """A fresh device array of `shape` filled with `value` (zeros for empty reductions)."""
    dtype = np.dtype(dtype)
    out = memory.empty(shape, dtype)
    n = runtime.prod(out.shape)
    if n:
        runtime.launch(_fill(), n, runtime.flat(out), n, dtype.type(value), name="fill")
    return out


def broadcast_to(x, shape, dtype=None):
    """Materialized broadcast (and optional cast) of device array `x` to `shape`: a fresh array."""
    name = "broadcast_to"
    runtime.check_array(name, x)
    shape = tuple(int(d) for d in shape)
    if runtime.broadcast_shape(name, x.shape, shape) != shape:
        raise ValueError(f"{name}: cannot broadcast shape {tuple(x.shape)} to {shape}")
    dtype = np.dtype(x.dtype if dtype is None else dtype)
    return run("cast", name, [x], dtype, dtype, out_shape=shape)


def _arith(op):
    """add/sub/mul/pow/maximum/minimum: result dtype of the operands (bool arithmetic -> int64)."""
    def kernel(a, b):
        da, db = _check(op, (a, b))
        out = _promote(da, db)
        if out == BOOL and op in ("add", "sub", "mul", "pow"):
            out = I64
        return run(op, op, (a, b), out, out)
    kernel.__name__ = kernel.__qualname__ = f"cuda_{op}"
    return kernel


def div(a, b):
    da, db = _check("div", (a, b))
    out = _promote(da, db)
    if out not in FLOATS:
        out = F32
    return run("div", "div", (a, b), out, out)


def _compare(op):
    def kernel(a, b):
        da, db = _check(op, (a, b))
        return run(op, op, (a, b), BOOL, _promote(da, db))
    kernel.__name__ = kernel.__qualname__ = f"cuda_{op}"
    return kernel


def logical_and(a, b):
    da, db = _check("logical_and", (a, b))
    return run("logical_and", "logical_and", (a, b), BOOL, _promote(da, db))


def gelu_backward(x, g):
    dx, dg = _check("gelu_backward", (x, g), SCALAR["gelu_backward"][2])
    out = _promote(dx, dg)
    return run("gelu_backward", "gelu_backward", (x, g), out, out)


def where(c, a, b):
    name = "where"
    runtime.check_array(name, c, "condition", (BOOL,))
    da, db = _check(name, (a, b))
    out = _promote(da, db)
    return run(name, name, (c, a, b), out, out)


def _unary(op):
    def kernel(x):
        dt = runtime.check_array(op, x, "input", SCALAR[op][2])
        return run(op, op, (x,), dt, dt)
    kernel.__name__ = kernel.__qualname__ = f"cuda_{op}"
    return kernel


def clamp(x, lo, hi):
    name = "clamp"
    dt = runtime.check_array(name, x)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"{name}: min {lo} is greater than max {hi}")
    # float tensors clamp against bounds of their own dtype (as np.clip with Python floats);
    # integer and bool tensors compare in float64 and truncate on store, as np.clip(...).astype
    pt = dt.type if dt in FLOATS else np.float64
    p = pt(-np.inf if lo is None else lo)
    q = pt(np.inf if hi is None else hi)
    return run(name, name, (x,), dt, dt, params=(p, q))


def cast(x, dtype):
    name = "cast"
    src = runtime.check_array(name, x)
    dtype = np.dtype(dtype)
    if dtype not in runtime.DTYPES:
        raise TypeError(f"{name}: unsupported target dtype {dtype} (input shape {tuple(x.shape)})")
    return run(name, name, (x,), dtype, src)


def alias(x, placement=None):
    """The output aliases its input (the row is marked alias=True), as on the CPU backend;
    `placement` only matters to the multi-worker scheduler."""
    runtime.check_array("alias", x)
    return x


add, sub, mul, power = _arith("add"), _arith("sub"), _arith("mul"), _arith("pow")
maximum, minimum = _arith("maximum"), _arith("minimum")
eq, ne, lt, le, gt, ge = (_compare(op) for op in ("eq", "ne", "lt", "le", "gt", "ge"))
neg, sign, abs_, relu = _unary("neg"), _unary("sign"), _unary("abs"), _unary("relu")
exp, log, sqrt, tanh = (_unary(op) for op in ("exp", "log", "sqrt", "tanh"))
sigmoid, gelu = _unary("sigmoid"), _unary("gelu")

# op row name -> kernel (what the op table's "cuda" slots point at)
KERNELS = {
    "add": add, "sub": sub, "mul": mul, "div": div, "pow": power, "maximum": maximum, "minimum": minimum,
    "eq": eq, "ne": ne, "lt": lt, "le": le, "gt": gt, "ge": ge, "logical_and": logical_and, "where": where,
    "neg": neg, "abs": abs_, "sign": sign, "exp": exp, "log": log, "sqrt": sqrt, "relu": relu,
    "sigmoid": sigmoid, "tanh": tanh, "gelu": gelu, "gelu_backward": gelu_backward, "clamp": clamp,
    "cast": cast, "alias": alias, "fill": fill,
}
