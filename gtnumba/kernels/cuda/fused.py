"""Fused row kernels on the CUDA backend: softmax / log-softmax over any axis and their backward
rows, cross-entropy over rows of 2-D logits and its backward row, layer norm over the last axis
and its backward row.  Signatures and semantics are those of the CPU kernels (gtnumba/kernels/
cpu.py -> cpu_fused.py): float32/float64, companion inputs (g, w, b, lse, ...) cast to the first
input's dtype, sums and statistics in float64, exp in the input dtype on the max-shifted value.

Rows are never permuted.  A row along `axis` of a C-contiguous array of shape (outer, n, inner)
starts at o*n*inner + i and steps by `inner`, so the host passes (n_rows, n, inner) and the
kernels index in place (the last axis is inner = 1: contiguous rows).

Template: a block per group of rows.  Each row gets G threads (G = next power of two >= n,
at most REDUCE_BLOCK), a block holds blockDim / G rows, and grid-strides over row groups.  A
row's threads stride over its columns, then combine their partial values with a segmented
shared-memory tree (halving within each G-thread segment, no warp shuffles, so the simulator
runs it too).  Long rows (n >= REDUCE_BLOCK) get a whole block each; short rows (attention
scores) share a block instead of leaving most of its threads idle.

layer_norm_backward's gw / gb are column sums over all rows: a thread per (column, chunk of rows)
writes float64 partials (coalesced: neighbouring threads read neighbouring columns), and a second
small launch sums the chunks per column; one chunk (few rows) writes the outputs directly.
"""
import functools
import math

import numpy as np
from numba import cuda

from . import checks, memory, runtime
from .elementwise import _exp, _log, _sqrt
from .runtime import jit

F32, F64, I32, I64 = (np.dtype(t) for t in (np.float32, np.float64, np.int32, np.int64))
FLOATS = (F32, F64)
LABELS = (I32, I64)
F = np.float64
NEG_INF = -math.inf
NAN = math.nan
BAD_LABEL = {name: checks.site(ValueError, name + ": label {value} is out of range for {bound} classes "
                               "(valid: 0..{last})")
             for name in ("cross_entropy", "cross_entropy_backward")}

# layer_norm_backward column sums: a chunk has at least this many rows (module constant, read at
# launch; tests lower it to force the two-pass path)
COLSUM_CHUNK_MIN = 2 if runtime.SIMULATOR else 32


# ---- segmented shared-memory trees (device) ---------------------------------------------------------
@jit(device=True)
def _group_sum(sh, v, tid, g):
    """Sum of `v` over the g-thread segment holding `tid` (every thread of the block calls it)."""
    sh[tid] = v
    cuda.syncthreads()
    lane = tid % g
    s = g // 2
    while s > 0:
        if lane < s:
            sh[tid] += sh[tid + s]
        cuda.syncthreads()
        s //= 2
    total = sh[tid - lane]
    cuda.syncthreads()
    return total


@jit(device=True)
def _group_sum2(sh, sh2, v, v2, tid, g):
    """Two sums in one tree (one set of barriers)."""
    sh[tid] = v
    sh2[tid] = v2
    cuda.syncthreads()
    lane = tid % g
    s = g // 2
    while s > 0:
        if lane < s:
            sh[tid] += sh[tid + s]
            sh2[tid] += sh2[tid + s]
        cuda.syncthreads()
        s //= 2
    total = sh[tid - lane]
    total2 = sh2[tid - lane]
    cuda.syncthreads()
    return total, total2


@jit(device=True)
def _group_max(sh, v, tid, g):
    """Max (NaN wins) of `v` over the g-thread segment holding `tid`."""
    sh[tid] = v
    cuda.syncthreads()
    lane = tid % g
    s = g // 2
    while s > 0:
        if lane < s:
            a = sh[tid]
            b = sh[tid + s]
            if b > a or b != b:
                sh[tid] = b
        cuda.syncthreads()
        s //= 2
    total = sh[tid - lane]
    cuda.syncthreads()
    return total


@jit(device=True)
def _row_base(r, n, inner):
    o = r // inner
    return o * n * inner + (r - o * inner)


# ---- kernel templates (T: the input's scalar type, tree: shared tree size) ----------------------------
def _row_max_sum(T):
    """Device helpers shared by softmax-like kernels: the row max (float64) and sum of exp(x - max)
    with exp in T; `hi` is n for a live row and 0 for a padding row."""
    @jit(device=True)
    def row_max(sh, x, base, inner, lane, hi, tid, g):
        m = NEG_INF
        for c in range(lane, hi, g):
            v = F(x[base + c * inner])
            if v > m or v != v:
                m = v
        return _group_max(sh, m, tid, g)

    @jit(device=True)
    def row_sumexp(sh, x, base, inner, lane, hi, tid, g, mt):
        s = 0.0
        for c in range(lane, hi, g):
            s += F(_exp(x[base + c * inner] - mt))
        return _group_sum(sh, s, tid, g)
    return row_max, row_sumexp


def _softmax_template(T, tree):
    row_max, _ = _row_max_sum(T)

    def softmax_kernel(y, x, n_rows, n, inner, g):
        sh = cuda.shared.array(tree, np.float64)
        tid = cuda.threadIdx.x
        lane = tid % g
        rpb = cuda.blockDim.x // g
        for grp in range(cuda.blockIdx.x, (n_rows + rpb - 1) // rpb, cuda.gridDim.x):
            r = grp * rpb + tid // g
            hi = n if r < n_rows else 0
            base = _row_base(r, n, inner)
            mt = T(row_max(sh, x, base, inner, lane, hi, tid, g))
            s = 0.0
            for c in range(lane, hi, g):
                k = base + c * inner
                e = _exp(x[k] - mt)
                y[k] = e
                s += F(e)
            s = _group_sum(sh, s, tid, g)
            inv = 1.0 / s if hi > 0 else 0.0            # (padding rows have nothing to scale)
            for c in range(lane, hi, g):
                k = base + c * inner
                y[k] = F(y[k]) * inv
    return softmax_kernel


def _log_softmax_template(T, tree):
    row_max, row_sumexp = _row_max_sum(T)

    def log_softmax_kernel(y, x, n_rows, n, inner, g):
        sh = cuda.shared.array(tree, np.float64)
        tid = cuda.threadIdx.x
        lane = tid % g
        rpb = cuda.blockDim.x // g
        for grp in range(cuda.blockIdx.x, (n_rows + rpb - 1) // rpb, cuda.gridDim.x):
            r = grp * rpb + tid // g
            hi = n if r < n_rows else 0
            base = _row_base(r, n, inner)
            m = row_max(sh, x, base, inner, lane, hi, tid, g)
            s = row_sumexp(sh, x, base, inner, lane, hi, tid, g, T(m))
            lse = m + _log(s) if hi > 0 else 0.0
            for c in range(lane, hi, g):
                k = base + c * inner
                y[k] = F(x[k]) - lse
    return log_softmax_kernel


def _softmax_backward_template(T, tree):
    def softmax_backward_kernel(gx, y, gy, n_rows, n, inner, g):
        sh = cuda.shared.array(tree, np.float64)
        tid = cuda.threadIdx.x
        lane = tid % g
        rpb = cuda.blockDim.x // g
        for grp in range(cuda.blockIdx.x, (n_rows + rpb - 1) // rpb, cuda.gridDim.x):
            r = grp * rpb + tid // g
            hi = n if r < n_rows else 0
            base = _row_base(r, n, inner)
            s = 0.0
            for c in range(lane, hi, g):
                k = base + c * inner
                s += F(gy[k]) * F(y[k])
            s = _group_sum(sh, s, tid, g)
            for c in range(lane, hi, g):
                k = base + c * inner
                gx[k] = F(y[k]) * (F(gy[k]) - s)
    return softmax_backward_kernel


def _log_softmax_backward_template(T, tree):
    def log_softmax_backward_kernel(gx, y, gy, n_rows, n, inner, g):
        sh = cuda.shared.array(tree, np.float64)
        tid = cuda.threadIdx.x
        lane = tid % g
        rpb = cuda.blockDim.x // g
        for grp in range(cuda.blockIdx.x, (n_rows + rpb - 1) // rpb, cuda.gridDim.x):
            r = grp * rpb + tid // g
            hi = n if r < n_rows else 0
            base = _row_base(r, n, inner)
            s = 0.0
            for c in range(lane, hi, g):
                s += F(gy[base + c * inner])
            s = _group_sum(sh, s, tid, g)
            for c in range(lane, hi, g):
                k = base + c * inner
                gx[k] = F(gy[k]) - F(_exp(y[k])) * s
    return log_softmax_backward_kernel


def _cross_entropy_template(T, tree):
    row_max, row_sumexp = _row_max_sum(T)

    def cross_entropy_kernel(loss, lse_out, x, labels, n_rows, n, g, flag, code):
        sh = cuda.shared.array(tree, np.float64)
        tid = cuda.threadIdx.x
        lane = tid % g
        rpb = cuda.blockDim.x // g
        for grp in range(cuda.blockIdx.x, (n_rows + rpb - 1) // rpb, cuda.gridDim.x):
            r = grp * rpb + tid // g
            hi = n if r < n_rows else 0
            base = r * n
            m = row_max(sh, x, base, 1, lane, hi, tid, g)
            s = row_sumexp(sh, x, base, 1, lane, hi, tid, g, T(m))
            if lane == 0 and r < n_rows:
                lse = m + _log(s)
                lse_out[r] = lse
                lab = labels[r]
                if lab < 0 or lab >= n:                  # a bad label: reported, never read past
                    checks.report(flag, code, lab, n, 0)
                    loss[r] = NAN
                else:
                    loss[r] = lse - F(x[base + lab])
    return cross_entropy_kernel


def _cross_entropy_backward_template(T, tree):
    def cross_entropy_backward_kernel(gx, x, labels, lse, gl, n_rows, n, flag, code):
        for t in range(cuda.grid(1), n_rows * n, cuda.gridsize(1)):
            r = t // n
            c = t - r * n
            e = _exp(x[t] - lse[r])
            lab = labels[r]
            if c == 0 and (lab < 0 or lab >= n):
                checks.report(flag, code, lab, n, 0)
            if c == lab:
                gx[t] = (F(e) - 1.0) * F(gl[r])
            else:
                gx[t] = F(e) * F(gl[r])
    return cross_entropy_backward_kernel


def _layer_norm_template(T, tree):
    def layer_norm_kernel(y, mean_out, rstd_out, x, w, b, n_rows, n, eps, g):
        sh = cuda.shared.array(tree, np.float64)
        tid = cuda.threadIdx.x
        lane = tid % g
        rpb = cuda.blockDim.x // g
        for grp in range(cuda.blockIdx.x, (n_rows + rpb - 1) // rpb, cuda.gridDim.x):
            r = grp * rpb + tid // g
            hi = n if r < n_rows else 0
            base = r * n
            s = 0.0
            for c in range(lane, hi, g):
                s += F(x[base + c])
            mean = _group_sum(sh, s, tid, g) / n
            ss = 0.0                                   # two-pass: no E[x^2] - E[x]^2 cancellation
            for c in range(lane, hi, g):
                d = F(x[base + c]) - mean
                ss += d * d
            rstd = 1.0 / _sqrt(_group_sum(sh, ss, tid, g) / n + eps)
            for c in range(lane, hi, g):
                y[base + c] = (F(x[base + c]) - mean) * rstd * F(w[c]) + F(b[c])
            if lane == 0 and r < n_rows:
                mean_out[r] = mean
                rstd_out[r] = rstd
    return layer_norm_kernel


def _layer_norm_backward_template(T, tree):
    def layer_norm_backward_kernel(gx, x, w, mean, rstd, gy, n_rows, n, g):
        sh = cuda.shared.array(tree, np.float64)
        sh2 = cuda.shared.array(tree, np.float64)
        tid = cuda.threadIdx.x
        lane = tid % g
        rpb = cuda.blockDim.x // g
        for grp in range(cuda.blockIdx.x, (n_rows + rpb - 1) // rpb, cuda.gridDim.x):
            r = grp * rpb + tid // g
            live = r < n_rows
            hi = n if live else 0
            base = r * n
            mu = 0.0
            rs = 0.0
            if live:
                mu = F(mean[r])
                rs = F(rstd[r])
            # with g = gy * w and xhat = (x - mean) * rstd: gx = rstd (g - mean(g) - xhat mean(g xhat))
            sg = 0.0
            sgx = 0.0
            for c in range(lane, hi, g):
                gg = F(gy[base + c]) * F(w[c])
                sg += gg
                sgx += gg * ((F(x[base + c]) - mu) * rs)
            sg, sgx = _group_sum2(sh, sh2, sg, sgx, tid, g)
            sg /= n
            sgx /= n
            for c in range(lane, hi, g):
                xh = (F(x[base + c]) - mu) * rs
                gx[base + c] = rs * (F(gy[base + c]) * F(w[c]) - sg - xh * sgx)
    return layer_norm_backward_kernel


def _ln_colsum_kernel(pw, pb, x, mean, rstd, gy, n_rows, n, chunk):
    """Partial gw / gb of rows [k*chunk, (k+1)*chunk), one thread per (chunk k, column c); the
    partials are laid out (n_chunks, n)."""
    n_chunks = (n_rows + chunk - 1) // chunk
    for t in range(cuda.grid(1), n_chunks * n, cuda.gridsize(1)):
        k = t // n
        c = t - k * n
        lo = k * chunk
        hi = min(lo + chunk, n_rows)
        sw = 0.0
        sb = 0.0
        for r in range(lo, hi):
            gyc = F(gy[r * n + c])
            sw += gyc * ((F(x[r * n + c]) - F(mean[r])) * F(rstd[r]))
            sb += gyc
        pw[t] = sw
        pb[t] = sb


def _ln_colsum_final_kernel(gw, gb, pw, pb, n, n_chunks):
    for c in range(cuda.grid(1), n, cuda.gridsize(1)):
        sw = 0.0
        sb = 0.0
        for k in range(n_chunks):
            sw += pw[k * n + c]
            sb += pb[k * n + c]
        gw[c] = sw
        gb[c] = sb


TEMPLATES = {
    "softmax": _softmax_template, "log_softmax": _log_softmax_template,
    "softmax_backward": _softmax_backward_template, "log_softmax_backward": _log_softmax_backward_template,
    "cross_entropy": _cross_entropy_template, "cross_entropy_backward": _cross_entropy_backward_template,
    "layer_norm": _layer_norm_template, "layer_norm_backward": _layer_norm_backward_template,
}


@functools.lru_cache(maxsize=None)
def kernel_function(kind, dtype, tree=None):
    """Python function of fused kernel `kind` for input dtype `dtype` (shared tree of `tree`)."""
    if kind == "ln_colsum":
        return _ln_colsum_kernel
    if kind == "ln_colsum_final":
        return _ln_colsum_final_kernel
    return TEMPLATES[kind](np.dtype(dtype).type, tree)


@functools.lru_cache(maxsize=None)
def compiled_kernel(kind, dtype, tree=None):
    return jit(kernel_function(kind, dtype, tree))


# ---- host side ------------------------------------------------------------------------------------
def _row_plan(n_rows, n):
    """(tree, g, block, grid) of a row-group launch: g threads per row (a power of two >= n, at most
    the tree), as many rows per block as fit the tree (no more than there are rows)."""
    tree = runtime.REDUCE_BLOCK
    if tree < 1 or tree & (tree - 1):
        raise ValueError(f"REDUCE_BLOCK must be a power of two, got {tree}")
    g = min(tree, runtime.next_pow2(max(n, 1)))
    rpb = max(1, min(tree // g, runtime.next_pow2(n_rows)))
    while g * rpb < runtime.MIN_REDUCE_BLOCK and g * rpb < tree:
        rpb *= 2                                   # a real block holds at least one warp
    block = g * rpb
    grid = max(1, min(-(-n_rows // rpb), runtime.MAX_GRID))
    return tree, g, block, grid


def _launch_rows(kind, name, dtype, n_rows, n, *args):
    """Launch row-group kernel `kind`: args are (outputs and inputs..., scalars...) up to g, then
    any after it (cross_entropy's error flag and code)."""
    if n_rows == 0 or n == 0:
        return
    tree, g, block, grid = _row_plan(n_rows, n)
    kernel = compiled_kernel(kind, np.dtype(dtype), tree)
    head, tail = (args[:-2], args[-2:]) if kind == "cross_entropy" else (args, ())
    runtime.launch_config(kernel, grid, block, *head, g, *tail)


def _check_float(name, x, what="input"):
    return runtime.check_array(name, x, what, FLOATS)


def _like(name, a, dtype, shape, what):
    """`a` as a device array of `dtype` (cast when it differs, as the CPU kernels do) and `shape`."""
    runtime.check_array(name, a, what, FLOATS)
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: {what} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    if np.dtype(a.dtype) != dtype:
        from .elementwise import cast
        a = cast(a, dtype)
    return a


def _axis_layout(name, shape, axis):
    """(n_rows, n, inner) of the rows along `axis` of a C-contiguous array of `shape`."""
    nd = len(shape)
    if not isinstance(axis, (int, np.integer)) or not -nd <= axis < nd:
        raise ValueError(f"{name}: axis {axis!r} is out of range for an array of shape {shape}")
    axis = int(axis) % nd
    n = shape[axis]
    inner = runtime.prod(shape[axis + 1:])
    return runtime.prod(shape[:axis]) * inner, n, inner


def _rowwise(kind, name, x, axis):
    dt = _check_float(name, x)
    shape = tuple(x.shape)
    n_rows, n, inner = _axis_layout(name, shape, axis)
    y = memory.empty(shape, dt)
    _launch_rows(kind, name, dt, n_rows, n, runtime.flat(y), runtime.flat(x), n_rows, n, inner)
    return y


def _rowwise_backward(kind, name, y, g, axis):
    dt = _check_float(name, y, "y")
    shape = tuple(y.shape)
    g = _like(name, g, dt, shape, "g")
    n_rows, n, inner = _axis_layout(name, shape, axis)
    gx = memory.empty(shape, dt)
    _launch_rows(kind, name, dt, n_rows, n, runtime.flat(gx), runtime.flat(y), runtime.flat(g),
                 n_rows, n, inner)
    return gx


def softmax(x, axis):
    return _rowwise("softmax", "softmax", x, axis)


def softmax_backward(y, g, axis):
    return _rowwise_backward("softmax_backward", "softmax_backward", y, g, axis)


def log_softmax(x, axis):
    return _rowwise("log_softmax", "log_softmax", x, axis)


def log_softmax_backward(y, g, axis):
    return _rowwise_backward("log_softmax_backward", "log_softmax_backward", y, g, axis)


def _check_labels(name, labels, x_shape):
    """Labels' dtype and shape are checked here; their values on the device (a label out of range
    is raised at the next read, see gtnumba.kernels.cuda.checks)."""
    rows, cols = x_shape
    runtime.check_array(name, labels, "labels", LABELS + (F32, F64, np.dtype(np.bool_)))
    if np.dtype(labels.dtype) not in LABELS:
        raise TypeError(f"{name}: labels must be integers, got {np.dtype(labels.dtype)}")
    if tuple(labels.shape) != (rows,):
        raise ValueError(f"{name}: labels must have shape ({rows},), got {tuple(labels.shape)}")


def _logits(name, x):
    dt = _check_float(name, x, "logits")
    if len(x.shape) != 2:
        raise ValueError(f"{name}: logits must be 2-D (rows, classes), got shape {tuple(x.shape)}")
    return dt, tuple(x.shape)


def cross_entropy(x, labels):
    name = "cross_entropy"
    dt, shape = _logits(name, x)
    _check_labels(name, labels, shape)
    rows, cols = shape
    loss, lse = memory.empty((rows,), dt), memory.empty((rows,), dt)
    _launch_rows(name, name, dt, rows, cols, loss, lse, runtime.flat(x), labels, rows, cols,
                 checks.flag(), BAD_LABEL[name])
    return loss, lse


def cross_entropy_backward(x, labels, lse, g):
    name = "cross_entropy_backward"
    dt, shape = _logits(name, x)
    _check_labels(name, labels, shape)
    rows, cols = shape
    lse = _like(name, lse, dt, (rows,), "lse")
    g = _like(name, g, dt, (rows,), "g")
    gx = memory.empty(shape, dt)
    n = rows * cols
    if n:
        runtime.launch(compiled_kernel(name, dt), n, runtime.flat(gx), runtime.flat(x), labels, lse, g,
                       rows, cols, checks.flag(), BAD_LABEL[name], name=name)
    return gx


def _fill_nan(shape, dt):
    from .elementwise import fill
    return fill(shape, np.nan, dt)


def layer_norm(x, w, b, eps):
    name = "layer_norm"
    dt = _check_float(name, x)
    shape = tuple(x.shape)
    if not shape:
        raise ValueError(f"{name}: needs at least 1 dim, got a 0-d input")
    n = shape[-1]
    w = _like(name, w, dt, (n,), "weight")
    b = _like(name, b, dt, (n,), "bias")
    rows = runtime.prod(shape[:-1])
    y = memory.empty(shape, dt)
    if n == 0:                              # mean of nothing: NaN statistics, as the CPU kernel
        return y, _fill_nan(shape[:-1], dt), _fill_nan(shape[:-1], dt)
    mean, rstd = memory.empty(shape[:-1], dt), memory.empty(shape[:-1], dt)
    _launch_rows(name, name, dt, rows, n, runtime.flat(y), runtime.flat(mean), runtime.flat(rstd),
                 runtime.flat(x), w, b, rows, n, float(eps))
    return y, mean, rstd


def _colsum_plan(n_rows, n):
    """(chunk, n_chunks) of layer_norm_backward's column sums."""
    n_chunks = max(1, min(-(-n_rows // max(1, COLSUM_CHUNK_MIN)), max(1, runtime.TARGET_THREADS // max(n, 1))))
    chunk = -(-n_rows // n_chunks)
    return chunk, -(-n_rows // chunk)


def layer_norm_backward(x, w, mean, rstd, g):
    name = "layer_norm_backward"
    dt = _check_float(name, x)
    shape = tuple(x.shape)
    if not shape:
        raise ValueError(f"{name}: needs at least 1 dim, got a 0-d input")
    n = shape[-1]
    rows = runtime.prod(shape[:-1])
    w = _like(name, w, dt, (n,), "weight")
    mean = _like(name, mean, dt, shape[:-1], "mean")
    rstd = _like(name, rstd, dt, shape[:-1], "rstd")
    g = _like(name, g, dt, shape, "g")
    gx = memory.empty(shape, dt)
    if rows == 0 or n == 0:
        from .elementwise import fill
        return gx, fill((n,), 0, dt), fill((n,), 0, dt)
    fx, fm, fr, fg = runtime.flat(x), runtime.flat(mean), runtime.flat(rstd), runtime.flat(g)
    _launch_rows(name, name, dt, rows, n, runtime.flat(gx), fx, w, fm, fr, fg, rows, n)
    gw, gb = memory.empty((n,), dt), memory.empty((n,), dt)
    chunk, n_chunks = _colsum_plan(rows, n)
    partial = compiled_kernel("ln_colsum", None)
    if n_chunks == 1:
        runtime.launch(partial, n, gw, gb, fx, fm, fr, fg, rows, n, chunk, name=name)
        return gx, gw, gb
    pw, pb = memory.empty((n_chunks * n,), F64), memory.empty((n_chunks * n,), F64)
    runtime.launch(partial, n_chunks * n, pw, pb, fx, fm, fr, fg, rows, n, chunk, name=name)
    runtime.launch(compiled_kernel("ln_colsum_final", None), n, gw, gb, pw, pb, n, n_chunks, name=name)
    return gx, gw, gb


KERNELS = {
    "softmax": softmax, "softmax_backward": softmax_backward, "log_softmax": log_softmax,
    "log_softmax_backward": log_softmax_backward, "cross_entropy": cross_entropy,
    "cross_entropy_backward": cross_entropy_backward, "layer_norm": layer_norm,
    "layer_norm_backward": layer_norm_backward,
}


# ---- compile_ptx cases ------------------------------------------------------------------------------
def ptx_cases(full=False):
    """Every fused kernel at the argument types the host launches it with (float32 and float64;
    int32 and int64 labels)."""
    from numba import types
    from numba.np.numpy_support import from_dtype

    def arr(dt):
        return types.Array(from_dtype(np.dtype(dt)), 1, "C")
    i, tree = types.int64, runtime.REDUCE_BLOCK
    for dt in FLOATS:
        a = arr(dt)
        for kind in ("softmax", "log_softmax"):
            yield f"{kind} {dt}", kernel_function(kind, dt, tree), (a, a, i, i, i, i)
        for kind in ("softmax_backward", "log_softmax_backward"):
            yield f"{kind} {dt}", kernel_function(kind, dt, tree), (a, a, a, i, i, i, i)
        flag = arr(I64)
        for lab in LABELS:
            yield (f"cross_entropy {dt} labels {lab}", kernel_function("cross_entropy", dt, tree),
                   (a, a, a, arr(lab), i, i, i, flag, i))
            yield (f"cross_entropy_backward {dt} labels {lab}",
                   kernel_function("cross_entropy_backward", dt, None), (a, a, arr(lab), a, a, i, i, flag, i))
        yield (f"layer_norm {dt}", kernel_function("layer_norm", dt, tree),
               (a, a, a, a, a, a, i, i, types.float64, i))
        yield f"layer_norm_backward {dt}", kernel_function("layer_norm_backward", dt, tree), (a,) * 6 + (i, i, i)
        for out in dict.fromkeys((dt, F64)):
            yield (f"layer_norm_backward colsum {dt} -> {out}", kernel_function("ln_colsum", None),
                   (arr(out), arr(out), a, a, a, a, i, i, i))
        yield (f"layer_norm_backward colsum final {dt}", kernel_function("ln_colsum_final", None),
               (a, a, arr(F64), arr(F64), i, i))
