"""Fused CPU kernels (Numba) for row-wise softmax / log-softmax / cross-entropy /
layernorm and flat SGD / Adam updates.

Conventions
-----------
* Row kernels take 2-D float32/float64 arrays ``(rows, cols)`` and reduce over the
  last axis. The public wrappers make inputs C-contiguous (a copy only when they
  are not) and cast the companion arrays (``gy``, ``w``, ``lse`` ...) to ``x``'s
  dtype, so every kernel compiles exactly once per dtype.
* Sums, normalisation, layernorm statistics and optimizer math run in float64 and
  are rounded once on store, so float32 row sums stay accurate even for 40k-column
  rows. exp() alone runs in the input dtype on the max-shifted argument, as NumPy's
  vectorized ufunc over chunks of rows (exp is most of the softmax cost); its
  error (~|x - max| * 6e-8 relative) is that of any float32 softmax.
* Optimizer updates are element-wise; each output element depends on the same
  element of its own input, so ``out_p is p`` / ``out_m is m`` (in-place updates)
  are safe. Any other overlap (e.g. ``out_m`` sharing memory with ``v``) is
  rejected with ValueError, because the parallel kernels are compiled assuming
  distinct arrays. Output arrays must be C-contiguous 1-D arrays of ``p``'s dtype.

This module imports only numpy and numba on purpose: it must stay importable by
worker processes that know nothing about the rest of gtnumba.
"""
import os

import numpy as np
import numba
from numba import prange

# Numba's parallel kernels run on the OpenMP runtime, whose threads spin for a while after each
# parallel loop, as OpenBLAS's do after a GEMM: on 2 cores the two pools took turns stalling each
# other (first user's in-process step, 2026-12-02: 21-24 ms spinning, 15 ms passive).  Read by
# the runtime when Numba first launches threads; a user's own setting stays.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = [
    "softmax_rows", "softmax_rows_backward",
    "log_softmax_rows", "log_softmax_rows_backward",
    "cross_entropy_rows", "cross_entropy_rows_backward",
    "layernorm_rows", "layernorm_rows_backward",
    "sgd_update", "adam_update", "scaled_add",
]

# Row kernels are serial: on the 2-core reference machine parallel=True made them
# only ~1.5x faster on 8192x512 but compiled ~2.4x slower (all row kernels: ~4.5 s
# -> ~11 s per dtype on a cold cache). The optimizer updates have a parallel variant
# for big arrays: the parfor lowering marks the arrays noalias, which lets LLVM
# vectorize the sqrt/div (10M-element Adam on one thread: ~55 ms -> ~16 ms), and it
# adds threads. Small arrays stay serial: a parallel launch costs microseconds, and
# on an oversubscribed CPU it can wait milliseconds for a descheduled worker. The
# thread count is numba's (NUMBA_NUM_THREADS / numba.set_num_threads); processes
# sharing cores (e.g. several Dask workers) should lower it.
_PARALLEL_MIN_SIZE = 1 << 16
# error_model="numpy": float division by zero (e.g. a 0-column row) gives inf/nan
# like NumPy instead of raising ZeroDivisionError, and drops the per-division checks.
# nogil: a Dask worker's event loop answers peers and reads while its task runs a kernel
# Fast-math flags that let LLVM vectorize the row sums (reassociation), but none assuming no NaN or
# inf (they still propagate as in NumPy) and no fused multiply-add (a one-column layer norm's gradient
# must still cancel to exactly 0): layer norm 4096x512 float32, 5.4 -> 2.0 ms on one core.  exp and
# log stay scalar libm calls (Numba has no vector math library here).
_FASTMATH = {"reassoc", "nsz", "arcp"}
_jit = numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy", nogil=True)
_pjit = numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy", parallel=True, nogil=True)


# --------------------------------------------------------------------------- kernels
@_jit
def _shift_by(x, lse, out):
    """out = x - lse[row] in x's dtype (lse: x's dtype)."""
    for r in range(x.shape[0]):
        lr = lse[r]
        for c in range(x.shape[1]):
            out[r, c] = x[r, c] - lr


@_jit
def _scale_to_unit_sum(e):
    for r in range(e.shape[0]):
        s = 0.0
        for c in range(e.shape[1]):
            s += np.float64(e[r, c])
        inv = 1.0 / s
        for c in range(e.shape[1]):
            e[r, c] = e[r, c] * inv


@_jit
def _lse_of(e, m, out):
    """out = m + log(sum(e, row)) with e = exp(x - m)."""
    for r in range(e.shape[0]):
        s = 0.0
        for c in range(e.shape[1]):
            s += np.float64(e[r, c])
        out[r] = np.float64(m[r]) + np.log(s)


@_jit
def _minus_rows(x, lse, y):
    for r in range(x.shape[0]):
        for c in range(x.shape[1]):
            y[r, c] = np.float64(x[r, c]) - lse[r]


@_jit
def _softmax_rows_backward(y, gy):
    rows, cols = y.shape
    gx = np.empty_like(y)
    for r in range(rows):
        s = 0.0
        for c in range(cols):
            s += np.float64(gy[r, c]) * np.float64(y[r, c])
        for c in range(cols):
            gx[r, c] = np.float64(y[r, c]) * (np.float64(gy[r, c]) - s)
    return gx


@_jit
def _log_softmax_grad(gy, e, gx):
    """gx = gy - e * sum(gy, row), with e = exp(y)."""
    for r in range(gy.shape[0]):
        s = 0.0
        for c in range(gy.shape[1]):
            s += np.float64(gy[r, c])
        for c in range(gy.shape[1]):
            gx[r, c] = np.float64(gy[r, c]) - np.float64(e[r, c]) * s


@_jit
def _cross_entropy_grad(e, labels, gloss):
    """e = exp(x - lse) becomes (e - onehot(labels)) * gloss, in place."""
    for r in range(e.shape[0]):
        g = np.float64(gloss[r])
        lab = labels[r]
        at_label = np.float64(e[r, lab])
        for c in range(e.shape[1]):
            e[r, c] = e[r, c] * g
        e[r, lab] = (at_label - 1.0) * g


@_jit
def _pick_minus(lse, x, labels, loss):
    for r in range(x.shape[0]):
        loss[r] = lse[r] - np.float64(x[r, labels[r]])


@_jit
def _layernorm_rows(x, w, b, eps):
    rows, cols = x.shape
    y = np.empty_like(x)
    mean_out = np.empty(rows, dtype=x.dtype)
    rstd_out = np.empty(rows, dtype=x.dtype)
    for r in range(rows):
        # Two-pass (mean, then squared deviations) instead of E[x^2]-E[x]^2,
        # which cancels catastrophically for rows with a large offset.
        s = 0.0
        for c in range(cols):
            s += np.float64(x[r, c])
        mean = s / cols
        ss = 0.0
        for c in range(cols):
            d = np.float64(x[r, c]) - mean
            ss += d * d
        rstd = 1.0 / np.sqrt(ss / cols + eps)
        for c in range(cols):
            xh = (np.float64(x[r, c]) - mean) * rstd
            y[r, c] = xh * np.float64(w[c]) + np.float64(b[c])
        mean_out[r] = mean
        rstd_out[r] = rstd
    return y, mean_out, rstd_out


@_jit
def _layernorm_rows_backward(x, w, mean, rstd, gy):
    rows, cols = x.shape
    gx = np.empty_like(x)
    gw_acc = np.zeros(cols, dtype=np.float64)
    gb_acc = np.zeros(cols, dtype=np.float64)
    for r in range(rows):
        mu = np.float64(mean[r])
        rs = np.float64(rstd[r])
        # With g = gy*w and xhat = (x-mean)*rstd:
        # gx = rstd * (g - mean(g) - xhat * mean(g*xhat)).
        sg = 0.0
        sgx = 0.0
        for c in range(cols):
            gyc = np.float64(gy[r, c])
            xh = (np.float64(x[r, c]) - mu) * rs
            g = gyc * np.float64(w[c])
            sg += g
            sgx += g * xh
            gw_acc[c] += gyc * xh
            gb_acc[c] += gyc
        sg /= cols
        sgx /= cols
        for c in range(cols):
            xh = (np.float64(x[r, c]) - mu) * rs
            gx[r, c] = rs * (np.float64(gy[r, c]) * np.float64(w[c]) - sg - xh * sgx)
    return gx, gw_acc.astype(x.dtype), gb_acc.astype(x.dtype)


@_jit
def _sgd_elem(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first_step):
    d = g + weight_decay * p
    if momentum != 0.0:
        buf = d if first_step else momentum * buf + (1.0 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    return p - lr * d, buf


@_jit
def _adam_elem(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step_size, rsqrt_bc2,
               decoupled):
    if decoupled:
        p = p * (1.0 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    # PyTorch's form of lr * mhat / (sqrt(vhat) + eps): one sqrt and one division.
    return p - step_size * m / (np.sqrt(v) * rsqrt_bc2 + eps), m, v


# Each driver computes all outputs of element i from the inputs of element i before
# storing them, so out_p / out_m ... may be p / m ... themselves.
@_jit
def _sgd_serial(p, g, buf, out_p, out_buf, hp, store_buf):
    for i in range(p.shape[0]):
        out_p[i], b = _sgd_elem(np.float64(p[i]), np.float64(g[i]), np.float64(buf[i]), *hp)
        if store_buf:
            out_buf[i] = b


@_pjit
def _sgd_parallel(p, g, buf, out_p, out_buf, hp, store_buf):
    for i in prange(p.shape[0]):
        out_p[i], b = _sgd_elem(np.float64(p[i]), np.float64(g[i]), np.float64(buf[i]), *hp)
        if store_buf:
            out_buf[i] = b


@_jit
def _adam_serial(p, g, m, v, out_p, out_m, out_v, hp):
    for i in range(p.shape[0]):
        out_p[i], out_m[i], out_v[i] = _adam_elem(
            np.float64(p[i]), np.float64(g[i]), np.float64(m[i]), np.float64(v[i]), *hp)


@_pjit
def _adam_parallel(p, g, m, v, out_p, out_m, out_v, hp):
    for i in prange(p.shape[0]):
        out_p[i], out_m[i], out_v[i] = _adam_elem(
            np.float64(p[i]), np.float64(g[i]), np.float64(m[i]), np.float64(v[i]), *hp)


# --------------------------------------------------------------------------- wrappers
def _rows(x, name="x"):
    x = np.asarray(x)
    if x.dtype != np.float32 and x.dtype != np.float64:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, cols), got shape {x.shape}")
    return np.ascontiguousarray(x)


def _like(a, ref, shape, name):
    a = np.ascontiguousarray(a, dtype=ref.dtype)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    return a


def _labels(labels, x):
    rows, cols = x.shape
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if labels.shape != (rows,):
        raise ValueError(f"labels must have shape ({rows},), got {labels.shape}")
    bad = (labels < 0) | (labels >= cols)
    if bad.any():
        raise ValueError(f"label {int(labels[np.argmax(bad)])} is out of range "
                         f"for {cols} classes (valid: 0..{cols - 1})")
    return labels


# exp in a Numba loop is a scalar libm call (~7 ns an element here), NumPy's is vectorized (~0.7 ns):
# the exp-heavy row kernels run in chunks of rows, a Numba pass writing the shifted values, np.exp
# in place, a Numba pass reducing and writing; a chunk of ~64K elements stays in the core's L2.
_EXP_CHUNK = 1 << 16


def _chunks(rows, cols):
    step = max(1, _EXP_CHUNK // max(cols, 1))
    return [(a, min(rows, a + step)) for a in range(0, rows, step)]


def _row_lse(x):
    """float64 log-sum-exp of each row."""
    rows, cols = x.shape
    lse, chunks = np.empty(rows, dtype=np.float64), _chunks(rows, cols)
    scratch = np.empty((chunks[0][1], cols), dtype=x.dtype) if chunks else None     # one chunk's, reused
    for a, b in chunks:
        e, m = scratch[:b - a], _row_max(x[a:b])
        _shift_by(x[a:b], m, e)
        np.exp(e, out=e)
        _lse_of(e, m, lse[a:b])
    return lse


def _row_max(x):
    """In x's dtype, so that exp(x - max) cannot overflow.  NumPy's reduction is vectorized (a Numba
    loop is not, unless NaN is assumed away); a NaN in a row makes its max NaN, and the row NaN."""
    return np.max(x, axis=1)


def softmax_rows(x):
    """Max-shifted softmax of each row of a 2-D array."""
    x = _rows(x)
    y = np.empty_like(x)
    if x.shape[1] == 0:
        return y
    for a, b in _chunks(*x.shape):
        e = y[a:b]
        _shift_by(x[a:b], _row_max(x[a:b]), e)
        np.exp(e, out=e)
        _scale_to_unit_sum(e)
    return y


def softmax_rows_backward(y, gy):
    """gx = y * (gy - sum(gy * y, row)), with y the softmax output."""
    y = _rows(y, "y")
    return _softmax_rows_backward(y, _like(gy, y, y.shape, "gy"))


def log_softmax_rows(x):
    """x - max - log(sum(exp(x - max))) per row."""
    x = _rows(x)
    y = np.empty_like(x)
    if x.shape[1] == 0:
        return y
    _minus_rows(x, _row_lse(x), y)
    return y


def log_softmax_rows_backward(y, gy):
    """gx = gy - exp(y) * sum(gy, row), with y the log-softmax output."""
    y = _rows(y, "y")
    gy, gx, chunks = _like(gy, y, y.shape, "gy"), np.empty_like(y), _chunks(*y.shape)
    # exp(y) into a scratch chunk, not into gx: a kernel handed the same array twice is not vectorized
    scratch = np.empty((chunks[0][1], y.shape[1]), dtype=y.dtype) if chunks else None
    for a, b in chunks:
        _log_softmax_grad(gy[a:b], np.exp(y[a:b], out=scratch[:b - a]), gx[a:b])
    return gx


def cross_entropy_rows(x, labels):
    """Per-row cross-entropy of logits x against int labels: (loss, lse), both 1-D."""
    x = _rows(x)
    labels = _labels(labels, x)
    lse = _row_lse(x)
    loss = np.empty(x.shape[0], dtype=x.dtype)
    _pick_minus(lse, x, labels, loss)
    return loss, lse.astype(x.dtype)


def cross_entropy_rows_backward(x, labels, lse, gloss):
    """gx = (softmax(x) - onehot(labels)) * gloss[:, None], softmax via the saved lse."""
    x = _rows(x)
    rows = x.shape[0]
    labels, lse, gloss = _labels(labels, x), _like(lse, x, (rows,), "lse"), _like(gloss, x, (rows,), "gloss")
    gx = np.empty_like(x)
    _shift_by(x, lse, gx)
    np.exp(gx, out=gx)
    _cross_entropy_grad(gx, labels, gloss)
    return gx


def layernorm_rows(x, w, b, eps=1e-5):
    """Layernorm over each row (biased variance): returns (y, mean, rstd)."""
    x = _rows(x)
    cols = x.shape[1]
    return _layernorm_rows(x, _like(w, x, (cols,), "w"), _like(b, x, (cols,), "b"),
                           float(eps))


def layernorm_rows_backward(x, w, mean, rstd, gy):
    """Exact gradient of layernorm_rows: returns (gx, gw, gb)."""
    x = _rows(x)
    rows, cols = x.shape
    return _layernorm_rows_backward(x, _like(w, x, (cols,), "w"),
                                    _like(mean, x, (rows,), "mean"),
                                    _like(rstd, x, (rows,), "rstd"),
                                    _like(gy, x, x.shape, "gy"))


def _flat(p):
    p = np.asarray(p)
    if p.dtype != np.float32 and p.dtype != np.float64:
        raise TypeError(f"p must be float32 or float64, got {p.dtype}")
    if p.ndim != 1:
        raise ValueError(f"p must be 1-D, got shape {p.shape}")
    return np.ascontiguousarray(p)


def _out(a, p, name):
    # Outputs are written in place, so they cannot be silently converted.
    if (not isinstance(a, np.ndarray) or a.dtype != p.dtype or a.shape != p.shape
            or not a.flags.c_contiguous or not a.flags.writeable):
        raise ValueError(f"{name} must be a writeable C-contiguous {p.dtype} array "
                         f"of shape {p.shape}")
    return a


def _check_aliasing(outs, ins):
    """outs[k] may be exactly ins[k] (in-place update); no other overlap is allowed."""
    arrays = list(ins) + list(outs)
    for k, o in enumerate(outs):
        for j, a in enumerate(arrays):
            if j == len(ins) + k or not np.may_share_memory(o, a):
                continue
            # Same dtype, shape and C order: same start address = the same elements.
            if j == k and a.ctypes.data == o.ctypes.data:
                continue
            raise ValueError("optimizer outputs may only alias their own input "
                             "exactly (out_p=p, out_m=m, ...), not other arrays")


def sgd_update(p, g, buf, out_p, out_buf, lr, momentum=0.0, dampening=0.0,
               weight_decay=0.0, nesterov=False, first_step=False):
    """One PyTorch-SGD step; writes into out_p / out_buf (may alias p / buf).

    With momentum == 0, buf is unused and out_buf receives a copy of buf.
    Returns (out_p, out_buf).
    """
    p = _flat(p)
    ins = (p, _like(buf, p, p.shape, "buf"), _like(g, p, p.shape, "g"))
    outs = (_out(out_p, p, "out_p"), _out(out_buf, p, "out_buf"))
    # without momentum the buffer passes through unchanged: given as its own output, it is not written
    store_buf = not (float(momentum) == 0.0 and outs[1].ctypes.data == ins[1].ctypes.data)
    _check_aliasing(outs if store_buf else outs[:1], ins)
    hp = (float(lr), float(momentum), float(dampening), float(weight_decay),
          bool(nesterov), bool(first_step))
    kernel = _sgd_parallel if p.size >= _PARALLEL_MIN_SIZE else _sgd_serial
    kernel(p, ins[2], ins[1], outs[0], outs[1], hp, store_buf)
    return out_p, out_buf


def adam_update(p, g, m, v, out_p, out_m, out_v, lr, beta1=0.9, beta2=0.999,
                eps=1e-8, weight_decay=0.0, step=1, decoupled=False):
    """One PyTorch Adam (decoupled=False) / AdamW (decoupled=True) step.

    step is the 1-based step count for bias correction. Writes into out_p /
    out_m / out_v (may alias p / m / v). Returns (out_p, out_m, out_v).
    """
    p = _flat(p)
    if step < 1:
        raise ValueError(f"step must be >= 1 (1-based), got {step}")
    bc1 = 1.0 - float(beta1) ** step
    bc2 = 1.0 - float(beta2) ** step
    hp = (float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
          float(lr) / bc1, 1.0 / float(np.sqrt(bc2)), bool(decoupled))
    ins = (p, _like(m, p, p.shape, "m"), _like(v, p, p.shape, "v"),
           _like(g, p, p.shape, "g"))
    outs = (_out(out_p, p, "out_p"), _out(out_m, p, "out_m"), _out(out_v, p, "out_v"))
    _check_aliasing(outs, ins)
    kernel = _adam_parallel if p.size >= _PARALLEL_MIN_SIZE else _adam_serial
    kernel(p, ins[3], ins[1], ins[2], outs[0], outs[1], outs[2], hp)
    return out_p, out_m, out_v


# --------------------------------------------------------------------------- a + sign * c * g
@_jit
def _scaled_add(a, g, c, sign, out):
    # two roundings in the arrays' dtype, as NumPy's a - (c * g) makes them (no fused multiply-add)
    for i in range(a.shape[0]):
        out[i] = a[i] + sign * (c * g[i])


@_jit
def _scaled_add_into_a(a, g, c, sign):
    # (out is a: LLVM's overlap check between two array arguments would pick its scalar loop)
    for i in range(a.shape[0]):
        a[i] = a[i] + sign * (c * g[i])


def scaled_add(a, g, c, sign, out):
    """out = a + c * g (sign 1) or a - c * g (sign -1), flat C-contiguous arrays of one float
    dtype and a scalar c of that dtype, in one pass; out may be a or g."""
    if out.ctypes.data == a.ctypes.data:
        _scaled_add_into_a(a, g, c, a.dtype.type(sign))
    else:
        _scaled_add(a, g, c, a.dtype.type(sign), out)
    return out
