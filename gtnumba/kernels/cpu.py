"""CPU kernels: one function per op row of the table, NumPy arrays in, NumPy arrays out.

Kernels never write into their inputs on their own (shape ops return views that alias them).
Outputs are always ndarrays, never NumPy scalars, so plans see one value type.

Kernels marked with `_writes_out` have an `into` twin that also takes `out=`: a C-contiguous
buffer of the output's shape and dtype (a tuple of them for several outputs) that the executor's
memory plan hands it (None: allocate).  The kernel in the op table keeps its CUDA twin's signature.
    writes_out "same": only when every input has the output's dtype (so the result is bit for bit
               what the kernel would allocate); "any": always.
    inplace    "any": `out` may be one of the inputs (elementwise: each element reads only its own
               inputs); or, per output, the input position it may overwrite; None: never.
    checks_data: the kernel raises on bad data (indices, labels); a plan never overwrites a value
               it was handed before its last such kernel ran, so a failed step can be run again.
"""
import inspect
import math

import numba
import numpy as np

from . import blas, cpu_fused


def _arr(x):
    return x if isinstance(x, np.ndarray) else np.asarray(x)


def _writes_out(kind, inplace=None):
    """`into(*inputs, out=None, **attrs)` -> the op table's kernel (the same without out=)."""
    def mark(into):
        def kernel(*args, **attrs):
            return into(*args, **attrs)
        sig = inspect.signature(into)
        kernel.__signature__ = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "out"])
        kernel.__name__ = kernel.__qualname__ = into.__name__
        return _mark(kernel, into, kind, inplace)
    return mark


def _mark(kernel, into, kind, inplace):
    kernel.into, kernel.writes_out, kernel.inplace, kernel.checks_data = into, kind, inplace, False
    return kernel


def _checks_data(kernel):
    kernel.writes_out, kernel.inplace, kernel.checks_data = None, None, True
    return kernel


# ---- inline forms: what a generated plan calls in place of a kernel ------------------------
# `kernel.inline(args, attrs, in_specs, out_specs)` -> (expression, {name: object}) or None: a
# Python expression over the argument expressions `args` that returns exactly what the kernel
# would (an ndarray, never a NumPy scalar), specialized on the step's shapes and attributes.
def _inline(fn):
    def mark(kernel):
        kernel.inline = fn
        return kernel
    return mark


def _array_expr(expr, out_specs):
    """A ufunc's 0-d result is a NumPy scalar: kernels return arrays."""
    return f"asarray({expr})" if out_specs[0].shape == () else expr


def _ufunc_inline(ufunc, *extra):
    name = f"u_{ufunc.__name__}"

    def inline(args, attrs, in_specs, out_specs):
        call = f"{name}({', '.join(list(args) + list(extra))})"
        return _array_expr(call, out_specs), {name: ufunc, "asarray": np.asarray}
    return inline


# ---- elementwise -------------------------------------------------------------------------
def binary(ufunc):
    def kernel(a, b):
        return _arr(ufunc(a, b))

    def into(a, b, out=None):
        return _arr(ufunc(a, b, out=out))
    kernel.__name__ = ufunc.__name__
    kernel.ufunc = ufunc      # what a compiled plan may call directly (the result is an array unless 0-d)
    kernel.inline = _ufunc_inline(ufunc)
    # comparisons give bool whatever the inputs: their out= never changes the arithmetic
    return _mark(kernel, into, "any" if ufunc in _BOOL_RESULT else "same", "any")


_BOOL_RESULT = (np.equal, np.not_equal, np.less, np.less_equal, np.greater, np.greater_equal,
                np.logical_and)


def unary(ufunc):
    def kernel(x):
        return _arr(ufunc(x))

    def into(x, out=None):
        return _arr(ufunc(x, out=out))
    kernel.__name__ = ufunc.__name__
    kernel.ufunc = ufunc
    kernel.inline = _ufunc_inline(ufunc)
    return _mark(kernel, into, "same", "any")


@_inline(_ufunc_inline(np.true_divide))
@_writes_out("same", "any")
def div(a, b, out=None):
    return _arr(np.true_divide(a, b, out=out))


@_inline(_ufunc_inline(np.power))
@_writes_out("same", "any")
def power(a, b, out=None):
    return _arr(np.power(a, b, out=out))


def _relu_inline(args, attrs, in_specs, out_specs):
    dtype = np.dtype(in_specs[0].dtype)
    zero = f"zero_{dtype.name}"
    return _array_expr(f"u_maximum({args[0]}, {zero})", out_specs), {
        "u_maximum": np.maximum, zero: dtype.type(0), "asarray": np.asarray}


@_inline(_relu_inline)
@_writes_out("same", "any")
def relu(x, out=None):
    return _arr(np.maximum(x, x.dtype.type(0), out=out))


def sigmoid(x):
    # 1/(1+exp(-x)) overflows exp for large negative x; this form stays finite everywhere
    e = np.exp(-np.abs(x))
    return _arr(np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False))


@numba.njit(cache=True, nogil=True)
def _gelu_flat(x, out):
    for i in range(x.size):
        v = x[i]
        out[i] = 0.5 * v * (1.0 + math.erf(v * 0.7071067811865476))


@numba.njit(cache=True, nogil=True)
def _gelu_backward_flat(x, g, out):
    for i in range(x.size):
        v = x[i]
        cdf = 0.5 * (1.0 + math.erf(v * 0.7071067811865476))
        out[i] = g[i] * (cdf + v * math.exp(-0.5 * v * v) * 0.3989422804014327)


@_writes_out("same")
def gelu(x, out=None):
    out = np.empty(x.shape, x.dtype) if out is None else out
    _gelu_flat(np.ascontiguousarray(x).reshape(-1), out.reshape(-1))
    return out


@_writes_out("same")
def gelu_backward(x, g, out=None):
    shape = np.broadcast_shapes(x.shape, g.shape)
    out = np.empty(shape, np.promote_types(x.dtype, g.dtype)) if out is None else out
    flat = [np.ascontiguousarray(np.broadcast_to(a, shape), dtype=out.dtype).reshape(-1) for a in (x, g)]
    _gelu_backward_flat(*flat, out.reshape(-1))
    return out


def clamp(x, lo, hi):
    return _arr(np.clip(x, lo, hi)).astype(x.dtype, copy=False)


def where(c, a, b):
    return _arr(np.where(c, a, b))


@_inline(lambda args, attrs, i, o: (f"{args[0]}.astype(dt_{np.dtype(attrs['dtype']).name})",
                                    {f"dt_{np.dtype(attrs['dtype']).name}": np.dtype(attrs["dtype"])}))
@_writes_out("any")
def cast(x, dtype, out=None):
    if out is None:
        return x.astype(dtype)
    np.copyto(out, x, casting="unsafe")
    return out


def _fill_inline(args, attrs, in_specs, out_specs):
    dtype, value = np.dtype(attrs["dtype"]), attrs["value"]
    names = {"zeros": np.zeros, "full": np.full, f"dt_{dtype.name}": dtype}
    if value != 0 or str(value).startswith("-"):      # -0.0 keeps its sign bit
        ok = value.__class__ in (int, float, bool) and math.isfinite(value)
        return (f"full({tuple(attrs['shape'])!r}, {value!r}, dt_{dtype.name})", names) if ok else None
    return f"zeros({tuple(attrs['shape'])!r}, dt_{dtype.name})", names


@_inline(_fill_inline)
@_writes_out("any")
def fill(shape, value, dtype, out=None):
    if out is None:
        return np.full(shape, value, dtype)
    out.fill(value)
    return out


@_inline(lambda args, attrs, i, o: (args[0], {}))
def alias(x, placement=None):
    return x


def select(values, index):
    return values[index]


# ---- reductions --------------------------------------------------------------------------
def _sum_inline(args, attrs, in_specs, out_specs):
    if in_specs[0].dtype.kind in "biu":
        return None
    return _array_expr(f"add_reduce({args[0]}, {tuple(attrs['axes'])!r}, None, None, {bool(attrs['keepdims'])})",
                       out_specs), {"add_reduce": np.add.reduce, "asarray": np.asarray}


@_inline(_sum_inline)
@_writes_out("same")
def reduce_sum(x, axes, keepdims, out=None):
    if x.dtype.kind in "biu":     # np.sum's integer promotion (int32 -> int64, bool -> int64)
        return _arr(np.sum(x, axis=axes, keepdims=keepdims, out=out))
    return _arr(np.add.reduce(x, axis=axes, keepdims=keepdims, out=out))


def reduce_max(x, axes, keepdims):
    return _arr(np.max(x, axis=axes, keepdims=keepdims))


def reduce_min(x, axes, keepdims):
    return _arr(np.min(x, axis=axes, keepdims=keepdims))


def argmax(x, axis, keepdims):
    return _arr(np.argmax(x, axis=axis, keepdims=keepdims)).astype(np.int64, copy=False)


def argmin(x, axis, keepdims):
    return _arr(np.argmin(x, axis=axis, keepdims=keepdims)).astype(np.int64, copy=False)


# ---- shape -------------------------------------------------------------------------------
@_inline(lambda args, attrs, i, o: (f"{args[0]}.reshape({tuple(attrs['shape'])!r})", {}))
def reshape(x, shape):
    return x.reshape(shape)


@_inline(lambda args, attrs, i, o: (f"{args[0]}.transpose({tuple(attrs['axes'])!r})", {}))
def permute(x, axes):
    return x.transpose(axes)


# Below this many elements a generated plan expands by copying: np.broadcast_to costs ~3 us of
# Python, a copy into a new array ~1 us (the value is the same; only a view's memory is saved).
_EXPAND_COPY_MAX = 2048


def _expand_copy(x, shape):
    out = np.empty(shape, x.dtype)
    np.copyto(out, x)
    return out


def _expand_inline(args, attrs, in_specs, out_specs):
    if math.prod(out_specs[0].shape) > _EXPAND_COPY_MAX:
        return None
    return f"expand_copy({args[0]}, {tuple(attrs['shape'])!r})", {"expand_copy": _expand_copy}


@_inline(_expand_inline)
def expand(x, shape):
    return np.broadcast_to(x, shape)


def concat(*xs, axis):
    return np.concatenate(xs, axis=axis)


# ---- indexing ----------------------------------------------------------------------------
def _index(spec, arrays):
    out = []
    for item in spec:
        kind = item[0]
        if kind == "int":
            out.append(item[1])
        elif kind == "slice":
            out.append(slice(*item[1:]))
        elif kind == "none":
            out.append(None)
        elif kind == "ellipsis":
            out.append(Ellipsis)
        else:
            out.append(arrays[item[1]])
    return tuple(out)


def _check_bounds(shape, spec, arrays):
    """Array indices are data: check them here, naming the op, instead of reading stray memory."""
    dims = [d for d in shape]
    axis = 0
    ell = sum(1 for it in spec if it[0] != "none" and it[0] != "ellipsis")
    for item in spec:
        if item[0] == "ellipsis":
            axis += len(dims) - ell
            continue
        if item[0] == "none":
            continue
        if item[0] == "array" and arrays[item[1]].size:
            idx = arrays[item[1]]
            lo, hi = int(idx.min()), int(idx.max())
            if lo < -dims[axis] or hi >= dims[axis]:
                bad = hi if hi >= dims[axis] else lo
                raise IndexError(f"index: index {bad} is out of bounds for axis {axis} "
                                 f"with size {dims[axis]} (tensor shape {tuple(shape)})")
        axis += 1


@_checks_data
def index(x, *arrays, spec):
    _check_bounds(x.shape, spec, arrays)
    return _arr(x[_index(spec, arrays)])


@_checks_data
def index_backward(g, *arrays, spec, shape):
    out = np.zeros(shape, dtype=g.dtype)
    idx = _index(spec, arrays)
    if arrays:
        np.add.at(out, idx, g)
    else:
        out[idx] = g
    return out


@_checks_data
def setitem(x, value, *arrays, spec):
    _check_bounds(x.shape, spec, arrays)
    out = np.array(x, copy=True)
    out[_index(spec, arrays)] = value
    return out


# ---- linear algebra ----------------------------------------------------------------------
# below this many rows, and this many weights, a batched matmul costs less than reshaping to one GEMM
_MATMUL_FLAT_MIN_ROWS, _MATMUL_FLAT_MIN_WEIGHTS = 64, 4096


# few rows times a big transposed weight (nn.Linear's x @ W.T): OpenBLAS runs it 1.6-2.4x faster as
# (W @ x.T).T plus a small transposing copy (16x20000 @ 20000x128: 3.1 -> 1.3 ms); with more rows, slower
_FLIP_MAX_ROWS, _FLIP_MIN_WEIGHTS = 32, 1 << 15


def _flips(a_shape, b_shape):
    return len(a_shape) >= 2 and len(b_shape) == 2 and math.prod(a_shape[:-1]) <= _FLIP_MAX_ROWS \
        and math.prod(b_shape) >= _FLIP_MIN_WEIGHTS


def _flattens(a_shape, b_shape):
    return len(a_shape) > 2 and len(b_shape) == 2 and (math.prod(a_shape[:-1]) >= _MATMUL_FLAT_MIN_ROWS
                                                       or math.prod(b_shape) >= _MATMUL_FLAT_MIN_WEIGHTS)


def _matmul_inline(args, attrs, in_specs, out_specs):
    # only where the kernel is plain np.matmul: one GEMM over all rows can round differently from
    # NumPy's GEMM per batch entry (OpenBLAS on AVX2, 6x8 @ 8x8 against 2 x 3x8 @ 8x8), and a plan's
    # generated code must give the interpreted run's bits
    a, b = in_specs
    if _flattens(a.shape, b.shape) or _flips(a.shape, b.shape):
        return None
    return _array_expr(f"u_matmul({args[0]}, {args[1]})", out_specs), {"u_matmul": np.matmul, "asarray": np.asarray}


def _gemm(rows, b, out):
    """rows @ b for 2-D operands, into `out` (2-D, C-ordered) when given."""
    if b.flags.f_contiguous and not b.flags.c_contiguous and _flips(rows.shape, b.shape):
        flipped = np.matmul(b.T, rows.T).T
        if out is None:
            return np.ascontiguousarray(flipped)
        out[...] = flipped
        return out
    return np.matmul(rows, b, out=out)


@_inline(_matmul_inline)
@_writes_out("same")
def matmul(a, b, out=None):
    if _flattens(a.shape, b.shape):
        # one GEMM over all rows: NumPy's batched matmul loops over the batch instead
        rows = a.reshape(-1, a.shape[-1])
        if out is None:
            return _gemm(rows, b, None).reshape(a.shape[:-1] + b.shape[-1:])
        _gemm(rows, b, out.reshape(rows.shape[0], b.shape[-1]))
        return out
    if a.ndim == 2 and b.ndim == 2:
        return _gemm(a, b, out)
    return np.matmul(a, b, out=out)


# ---- fused (NumPy would take several passes) ---------------------------------------------
def _last(x, axis):
    return x.ndim > 0 and axis % x.ndim == x.ndim - 1


def _rows(x, axis):
    """Move `axis` last and flatten the rest: the 2-D row view the fused kernels work on.
    (np.moveaxis costs ~4 us of Python: the usual last axis skips it.)"""
    moved = x if _last(x, axis) else np.moveaxis(x, axis, -1)
    return np.ascontiguousarray(moved).reshape(-1, x.shape[axis]), moved.shape


def _unrows(y2, moved_shape, axis):
    y = y2.reshape(moved_shape)
    return y if _last(y, axis) else np.moveaxis(y, -1, axis)


def softmax(x, axis):
    rows, shape = _rows(x, axis)
    return _unrows(cpu_fused.softmax_rows(rows), shape, axis)


def softmax_backward(y, g, axis):
    yr, shape = _rows(y, axis)
    gr, _ = _rows(g, axis)
    return _unrows(cpu_fused.softmax_rows_backward(yr, gr), shape, axis)


def log_softmax(x, axis):
    rows, shape = _rows(x, axis)
    return _unrows(cpu_fused.log_softmax_rows(rows), shape, axis)


def log_softmax_backward(y, g, axis):
    yr, shape = _rows(y, axis)
    gr, _ = _rows(g, axis)
    return _unrows(cpu_fused.log_softmax_rows_backward(yr, gr), shape, axis)


@_checks_data
def cross_entropy(x, labels):
    try:
        return cpu_fused.cross_entropy_rows(np.ascontiguousarray(x), np.ascontiguousarray(labels))
    except ValueError as e:
        raise ValueError(f"cross_entropy: {e} (logits shape {x.shape})") from None


@_checks_data
def cross_entropy_backward(x, labels, lse, g):
    return cpu_fused.cross_entropy_rows_backward(
        np.ascontiguousarray(x), np.ascontiguousarray(labels), lse, np.ascontiguousarray(g))


def layer_norm(x, w, b, eps):
    rows = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    y, mean, rstd = cpu_fused.layernorm_rows(rows, np.ascontiguousarray(w), np.ascontiguousarray(b), eps)
    return y.reshape(x.shape), mean.reshape(x.shape[:-1]), rstd.reshape(x.shape[:-1])


def layer_norm_backward(x, w, mean, rstd, g):
    n = x.shape[-1]
    gx, gw, gb = cpu_fused.layernorm_rows_backward(
        np.ascontiguousarray(x).reshape(-1, n), np.ascontiguousarray(w),
        np.ascontiguousarray(mean).reshape(-1), np.ascontiguousarray(rstd).reshape(-1),
        np.ascontiguousarray(g).reshape(-1, n))
    return gx.reshape(x.shape), gw, gb


# ---- a plan's fused update step (sched/plan.py: `p - lr * g` as one pass) --------------------
@_writes_out("same", "any")
def scaled_add(a, g, c, sign, out=None):
    """a + sign * (c * g): what a plan runs for the `p -= lr * p.grad` pair of steps (the same
    bits as the pair: NumPy rounds c * g, then the sum, in the arrays' dtype)."""
    if out is None:
        out = np.empty_like(a)
    if a.flags.c_contiguous and g.flags.c_contiguous and out.flags.c_contiguous:
        cpu_fused.scaled_add(a.reshape(-1), g.reshape(-1), c[()], sign, out.reshape(-1))
        return out
    prod = np.multiply(c, g)
    return _arr(np.add(a, prod, out=out) if sign > 0 else np.subtract(a, prod, out=out))


@_writes_out("same", "first")
def gemm_update(a, x, y, c, sign, out=None):
    """a + sign * c * (x @ y) for matrices, what a plan runs for `p -= lr * (x @ y)` when nothing else
    reads the product (a weight's gradient): one GEMM that accumulates into the output, so the
    gradient is never stored (the embedding's 40000x128 weight: one pass over it instead of three)."""
    if out is None:
        out = a.copy()
    elif out.ctypes.data != a.ctypes.data:
        np.copyto(out, a)
    return blas.gemm_accumulate(sign * float(c[()]), x, y, out)


# ---- optimizer updates (fused: one pass over each parameter) -----------------------------
@_writes_out("any", inplace=(0, 2))
def sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first_step, out=None):
    # the fused kernel allows out_p is p and out_buf is buf: each element reads only its own.  Without
    # momentum the buffer comes back as it went in unless a buffer is given for it: it is not copied
    out_p, out_buf = (None, None) if out is None else out
    out_p = np.empty_like(p) if out_p is None else out_p
    if out_buf is None:
        out_buf = buf if momentum == 0 and buf.dtype == p.dtype else np.empty_like(p)
    cpu_fused.sgd_update(np.ascontiguousarray(p).reshape(-1), np.ascontiguousarray(g).reshape(-1),
                         np.ascontiguousarray(buf).reshape(-1), out_p.reshape(-1), out_buf.reshape(-1),
                         float(lr), momentum, dampening, weight_decay, nesterov, first_step)
    return out_p, out_buf


@_writes_out("any", inplace=(0, 2, 3))
def adam_update(p, g, m, v, lr, step, beta1, beta2, eps, weight_decay, decoupled, out=None):
    out_p, out_m, out_v = (np.empty_like(p) if o is None else o for o in (out or (None,) * 3))
    flat = [np.ascontiguousarray(a).reshape(-1) for a in (p, g, m, v)]
    cpu_fused.adam_update(*flat, out_p.reshape(-1), out_m.reshape(-1), out_v.reshape(-1),
                          float(lr), beta1, beta2, eps, weight_decay, int(step), decoupled)
    return out_p, out_m, out_v
