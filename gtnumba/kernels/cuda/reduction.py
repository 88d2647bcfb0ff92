"""Reduction CUDA kernels: sum / max / min over any axis set (keepdims), argmax / argmin over one
axis or all of them.

No permutation is ever made.  The host splits the input's dims into kept dims (the output's) and
reduced dims, merges neighbours within each group that are contiguous in memory, and passes both
groups as (shape, element strides) tuples: an output index maps to a base offset, a reduction
index to an offset added to it, so any axis set of a C-contiguous array is read in place.

Two kernel templates, chosen per launch:

- thread per output ("serial"): for small reductions (<= SERIAL_MAX_REDUCE elements), and for
  many outputs over a kept innermost dim (neighbouring threads read neighbouring memory);
- block per output ("block"): threads stride over the reduction, each accumulating its share,
  then a shared-memory tree (no warp shuffles, so the simulator runs it too) combines them.

Both accumulate float32 in float64 (ints and bools in int64), so float32 sums are more accurate
than NumPy's pairwise float32 sums.  When there are too few outputs to fill the GPU, a long
reduction is split into chunks: a first launch writes one partial per (output, chunk) in the
accumulator dtype, a second reduces the partials (argmax/argmin carry (value, index) pairs, ties
going to the smaller index, NaN winning as in NumPy).
"""
import functools

import numpy as np
from numba import cuda

from . import memory, runtime
from .elementwise import fill
from .runtime import jit, offset

F64, I64, BOOL = np.dtype(np.float64), np.dtype(np.int64), np.dtype(np.bool_)
OPS = ("sum", "max", "min", "argmax", "argmin")


def acc_dtype(op, dtype):
    """Accumulator (and partial) dtype of `op` over `dtype`."""
    dtype = np.dtype(dtype)
    if op == "sum":
        return F64 if dtype.kind == "f" else I64
    return I64 if dtype == BOOL else dtype


# ---- combine functions (device), built per accumulator dtype -----------------------------------
def _value_ops(op, A):
    """(init(x, position) -> accumulator, combine(acc, value) -> accumulator) for sum/max/min."""
    if op == "sum":
        zero = A(0)

        def init(x, p):
            return zero

        def combine(acc, v):
            return acc + A(v)
    else:
        def init(x, p):
            return A(x[p])

        if op == "max":
            def combine(acc, v):
                v = A(v)
                return acc if (acc > v or acc != acc) else v     # NaN wins, as np.max
        else:
            def combine(acc, v):
                v = A(v)
                return acc if (acc < v or acc != acc) else v
    return jit(init, device=True), jit(combine, device=True)


def _better(op):
    """better(v, i, bv, bi): does (v, i) beat the best (bv, bi)?  First NaN wins, then the
    largest (smallest) value, ties going to the smaller index, as np.argmax (np.argmin)."""
    if op == "argmax":
        def better(v, i, bv, bi):
            if bv != bv:
                return v != v and i < bi
            if v != v:
                return True
            return v > bv or (v == bv and i < bi)
    else:
        def better(v, i, bv, bi):
            if bv != bv:
                return v != v and i < bi
            if v != v:
                return True
            return v < bv or (v == bv and i < bi)
    return jit(better, device=True)


def _index_of(has_index):
    """Where a candidate's index comes from: the reduction position, or a partials' index array."""
    if has_index:
        def index(xi, p, r):
            return xi[p]
    else:
        def index(xi, p, r):
            return r
    return jit(index, device=True)


# ---- templates ----------------------------------------------------------------------------
# Arguments shared by all templates: out (n_out * n_split partials or outputs), x (flat input),
# n_out, n_split, chunk (reduction positions per split), n_red, kept (shape, strides), reduced
# (shape, strides).  Work item t = (chunk c, output o).

def _serial_value(op, A):
    init, combine = _value_ops(op, A)

    def serial_reduce(out, x, n_out, n_split, chunk, n_red, kshape, kstrides, rshape, rstrides):
        for t in range(cuda.grid(1), n_out * n_split, cuda.gridsize(1)):
            o = t % n_out
            c = t // n_out
            base = offset(o, kshape, kstrides)
            lo = c * chunk
            hi = min(lo + chunk, n_red)
            acc = init(x, base + offset(lo, rshape, rstrides))
            for r in range(lo, hi):
                acc = combine(acc, x[base + offset(r, rshape, rstrides)])
            out[c * n_out + o] = acc          # partials laid out (n_split, n_out)
    return serial_reduce


def _serial_arg(op, A, has_index):
    better, index = _better(op), _index_of(has_index)

    def serial_argreduce(out, out_idx, x, xi, n_out, n_split, chunk, n_red, kshape, kstrides,
                         rshape, rstrides):
        for t in range(cuda.grid(1), n_out * n_split, cuda.gridsize(1)):
            o = t % n_out
            c = t // n_out
            base = offset(o, kshape, kstrides)
            lo = c * chunk
            hi = min(lo + chunk, n_red)
            p = base + offset(lo, rshape, rstrides)
            bv = A(x[p])
            bi = index(xi, p, lo)
            for r in range(lo + 1, hi):
                p = base + offset(r, rshape, rstrides)
                v = A(x[p])
                i = index(xi, p, r)
                if better(v, i, bv, bi):
                    bv = v
                    bi = i
            out[c * n_out + o] = bv
            out_idx[c * n_out + o] = bi
    return serial_argreduce


def _block_value(op, A, tree):
    init, combine = _value_ops(op, A)

    def block_reduce(out, x, n_out, n_split, chunk, n_red, kshape, kstrides, rshape, rstrides):
        sh = cuda.shared.array(tree, A)
        tid = cuda.threadIdx.x
        bd = cuda.blockDim.x
        for b in range(cuda.blockIdx.x, n_out * n_split, cuda.gridDim.x):
            o = b // n_split
            c = b - o * n_split
            base = offset(o, kshape, kstrides)
            lo = c * chunk
            hi = min(lo + chunk, n_red)
            acc = init(x, base + offset(lo, rshape, rstrides))
            for r in range(lo + tid, hi, bd):
                acc = combine(acc, x[base + offset(r, rshape, rstrides)])
            sh[tid] = acc
            cuda.syncthreads()
            s = bd // 2
            while s > 0:
                if tid < s:
                    sh[tid] = combine(sh[tid], sh[tid + s])
                cuda.syncthreads()
                s //= 2
            if tid == 0:
                out[b] = sh[0]                # partials laid out (n_out, n_split)
            cuda.syncthreads()
    return block_reduce


def _block_arg(op, A, has_index, tree):
    better, index = _better(op), _index_of(has_index)

    def block_argreduce(out, out_idx, x, xi, n_out, n_split, chunk, n_red, kshape, kstrides,
                        rshape, rstrides):
        sv = cuda.shared.array(tree, A)
        si = cuda.shared.array(tree, np.int64)
        tid = cuda.threadIdx.x
        bd = cuda.blockDim.x
        for b in range(cuda.blockIdx.x, n_out * n_split, cuda.gridDim.x):
            o = b // n_split
            c = b - o * n_split
            base = offset(o, kshape, kstrides)
            lo = c * chunk
            hi = min(lo + chunk, n_red)
            p = base + offset(lo, rshape, rstrides)
            bv = A(x[p])                       # threads without elements hold the chunk's first
            bi = index(xi, p, lo)
            for r in range(lo + tid, hi, bd):
                p = base + offset(r, rshape, rstrides)
                v = A(x[p])
                i = index(xi, p, r)
                if better(v, i, bv, bi):
                    bv = v
                    bi = i
            sv[tid] = bv
            si[tid] = bi
            cuda.syncthreads()
            s = bd // 2
            while s > 0:
                if tid < s:
                    if better(sv[tid + s], si[tid + s], sv[tid], si[tid]):
                        sv[tid] = sv[tid + s]
                        si[tid] = si[tid + s]
                cuda.syncthreads()
                s //= 2
            if tid == 0:
                out[b] = sv[0]
                out_idx[b] = si[0]
            cuda.syncthreads()
    return block_argreduce


@functools.lru_cache(maxsize=None)
def kernel_function(op, acc, path, has_index=False, tree=None):
    """Python function of a reduction kernel (what `jit` compiles)."""
    A = np.dtype(acc).type
    arg = op in ("argmax", "argmin")
    if path == "serial":
        return _serial_arg(op, A, has_index) if arg else _serial_value(op, A)
    return _block_arg(op, A, has_index, tree) if arg else _block_value(op, A, tree)


@functools.lru_cache(maxsize=None)
def compiled_kernel(op, acc, path, has_index=False, tree=None):
    return jit(kernel_function(op, acc, path, has_index, tree))


@functools.lru_cache(maxsize=None)
def _dummy_index():
    return memory.constant(np.zeros(1, np.int64))


# ---- host side ------------------------------------------------------------------------------
def _groups(shape, axes):
    """Coalesced (kept shape, kept strides, reduced shape, reduced strides) of a C-contiguous
    array of `shape` reduced over `axes`."""
    strides = runtime.c_strides(shape)
    kept = [(shape[d], strides[d]) for d in range(len(shape)) if d not in axes]
    red = [(shape[d], strides[d]) for d in range(len(shape)) if d in axes]

    def merge(dims):
        ks, (kst,) = runtime.coalesce(tuple(n for n, _ in dims), [tuple(s for _, s in dims)])
        return ks, kst
    return merge(kept) + merge(red)


def _plan(n_out, n_red, inner_kept):
    """(path, n_split, chunk, block) for one reduction launch."""
    if n_red <= runtime.SERIAL_MAX_REDUCE or (inner_kept and n_out >= runtime.COALESCED_MIN_OUT):
        n_split = 1
        if n_red > runtime.SERIAL_SPLIT_CHUNK:
            n_split = min(-(-n_red // runtime.SERIAL_SPLIT_CHUNK), max(1, runtime.TARGET_THREADS // n_out))
        chunk = -(-n_red // n_split)
        return "serial", -(-n_red // chunk), chunk, runtime.BLOCK
    # a power of two (the tree halves it), at most the shared tree's size
    block = runtime.floor_pow2(max(runtime.MIN_REDUCE_BLOCK, min(runtime.REDUCE_BLOCK, runtime.next_pow2(n_red))))
    n_split = min(-(-n_red // (block * runtime.BLOCK_ITEMS_MIN)), max(1, runtime.TARGET_BLOCKS // n_out))
    n_split = max(1, n_split)
    chunk = -(-n_red // n_split)
    return "block", -(-n_red // chunk), chunk, block


def _reduce_flat(name, op, x, xi, kshape, kstrides, rshape, rstrides, inner_kept, out_dtype):
    """Reduce flat device array `x` (and, for partials of argmax/argmin, its index array `xi`);
    returns flat (values, indices or None) of length n_out."""
    n_out, n_red = runtime.prod(kshape), runtime.prod(rshape)
    arg = op in ("argmax", "argmin")
    acc = acc_dtype(op, x.dtype)
    path, n_split, chunk, block = _plan(n_out, n_red, inner_kept)
    final = n_split == 1
    vals = memory.empty(n_out * n_split, out_dtype if final and not arg else acc)
    idx = memory.empty(n_out * n_split, I64) if arg else None
    tree = runtime.REDUCE_BLOCK if path == "block" else None
    if path == "block" and block > tree:
        raise ValueError(f"{name}: block of {block} threads exceeds the shared tree of {tree}")
    kernel = compiled_kernel(op, acc, path, xi is not None, tree)
    common = (n_out, n_split, chunk, n_red, kshape, kstrides, rshape, rstrides)
    args = ((vals, idx, x, _dummy_index() if xi is None else xi) if arg else (vals, x)) + common
    if path == "serial":
        runtime.launch(kernel, n_out * n_split, *args, name=name)
    else:
        runtime.launch(kernel, n_out * n_split, *args, block=block,
                       grid=min(n_out * n_split, runtime.MAX_GRID), name=name)
    if final:
        return vals, idx
    # second pass over the partials: serial ones are laid out (n_split, n_out), block ones
    # (n_out, n_split); either way the reduction runs over n_split
    if path == "serial":
        k2, r2, inner = ((n_out,), (1,)), ((n_split,), (n_out,)), True
    else:
        k2, r2, inner = ((n_out,), (n_split,)), ((n_split,), (1,)), False
    return _reduce_flat(name, op, vals, idx, *k2, *r2, inner, out_dtype)


def _normalize_axes(name, axes, ndim):
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, (int, np.integer)):
        axes = (axes,)
    norm = []
    for a in axes:
        if not -max(ndim, 1) <= a < max(ndim, 1):
            raise ValueError(f"{name}: axis {a} is out of range for an array with {ndim} dims")
        norm.append(int(a) % max(ndim, 1))
    if ndim == 0:
        return ()
    if len(set(norm)) != len(norm):
        raise ValueError(f"{name}: repeated axis in {tuple(axes)}")
    return tuple(sorted(norm))


def _reduce(op, x, axes, keepdims, out_dtype=None):
    name = op if op.startswith("arg") else f"reduce_{op}"
    dt = runtime.check_array(name, x)
    shape = tuple(x.shape)
    axes = _normalize_axes(name, axes, len(shape))
    if keepdims:
        out_shape = tuple(1 if d in axes else n for d, n in enumerate(shape))
    else:
        out_shape = tuple(n for d, n in enumerate(shape) if d not in axes)
    if out_dtype is None:
        out_dtype = I64 if op == "sum" and dt == BOOL else dt
    n_out = runtime.prod(out_shape)
    n_red = runtime.prod(shape[d] for d in axes)
    if n_red == 0 and n_out:
        if op != "sum":
            raise ValueError(f"{name}: cannot reduce over an empty axis (shape {shape}, axes {axes})")
        return fill(out_shape, 0, out_dtype)
    if n_out == 0:
        return memory.empty(out_shape, out_dtype)
    kshape, kstrides, rshape, rstrides = _groups(shape, axes)
    inner_kept = len(shape) > 0 and (len(shape) - 1) not in axes and shape[-1] > 1
    vals, idx = _reduce_flat(name, op, runtime.flat(x), None, kshape, kstrides, rshape, rstrides,
                             inner_kept, out_dtype)
    res = idx if op in ("argmax", "argmin") else vals
    return res.reshape(out_shape) if out_shape != (n_out,) else res


def reduce_sum(x, axes, keepdims):
    return _reduce("sum", x, axes, keepdims)


def reduce_max(x, axes, keepdims):
    return _reduce("max", x, axes, keepdims)


def reduce_min(x, axes, keepdims):
    return _reduce("min", x, axes, keepdims)


def _arg(op, x, axis, keepdims):
    if axis is None:
        out = _reduce(op, x, None, False, I64)
        return out.reshape((1,) * len(x.shape)) if keepdims and len(x.shape) else out
    if isinstance(axis, (tuple, list)):
        raise ValueError(f"{op}: takes one axis or None, got {axis!r}")
    return _reduce(op, x, (axis,), keepdims, I64)


def argmax(x, axis, keepdims):
    return _arg("argmax", x, axis, keepdims)


def argmin(x, axis, keepdims):
    return _arg("argmin", x, axis, keepdims)


KERNELS = {"sum": reduce_sum, "max": reduce_max, "min": reduce_min, "argmax": argmax, "argmin": argmin}
