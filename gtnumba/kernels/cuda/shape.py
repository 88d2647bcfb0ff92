"""Shape and indexing CUDA kernels: reshape, permute, expand, concat, index, index_backward,
setitem and select.

Every kernel has the signature of its CPU twin (gtnumba/kernels/cpu.py: positional device arrays,
then the row's attrs as keywords) and returns C-contiguous device arrays.  The host side turns
each op into (shape, element strides) tuples over flat 1-D views, merges dims that every operand
walks contiguously (`runtime.coalesce`) and launches one of five kernels:

- `copy`     dst[dbase + od(i)] = src[sbase + os(i)]: a strided gather/scatter copy.  It is the
             generic permute (the last dim stays last, so reads and writes are both coalesced
             along it), expand (stride 0 along broadcast dims), concat (one launch per input into
             the output at its offset along the axis), basic indexing (a gather: ints fold into
             the base offset, slices become strides of step * stride, negative steps included,
             None a size-1 dim), the basic scatters of index_backward and setitem, and
             setitem's copy of its input.
- `transpose` a tiled transpose through shared memory for a permute that moves the last dim:
             per batch index (the other dims), a TILE x TILE tile is read with threads along
             the input's contiguous dim and written with threads along the output's contiguous
             dim (the input's dim that becomes last), so both sides are coalesced; the tile is
             padded to TILE x (TILE + 1) against shared-memory bank conflicts.  Blocks are
             (TILE, TILE_ROWS) threads; each thread moves TILE / TILE_ROWS elements per tile.
- `gather_index`   out[i] = x[base + ox(i) + wrap(idx[oi(i)]) * stride]: integer-array indexing.
- `scatter_index`  dst[base + od(i) + wrap(idx[oi(i)]) * stride] = src[os(i)]: setitem.
- `scatter_add_index`  the same with `cuda.atomic.add` (index_backward: repeated indices
             accumulate, as np.add.at).

Advanced indexing follows NumPy's rules: the index arrays broadcast together to a shape B; ints
count as advanced indices too when an array is present; B's dims replace the advanced items in
place when those are adjacent in the index (no slice, None or Ellipsis between them), else they
come first.  One index array is read by the kernel as it is (int32 or int64, negatives wrapped on
the device); several (a bool mask of 2+ dims becomes several) are first combined on the device
into one int64 array of element offsets over B (`_combine_index`, one launch per array).
Index values are checked on the device, never copied to the host: an out-of-range index is
skipped (never read or written) and recorded in the device error flag, and the next read raises
IndexError naming the op, the index, the axis and its size (gtnumba.kernels.cuda.checks).

reshape is a view (the row is alias=True); a permute that only moves size-1 dims is a view too.
setitem with repeated array indices writes one of the values (NumPy: the last), chosen by the
race between threads.
"""
import functools

import numpy as np
from numba import cuda, types
from numba.np.numpy_support import from_dtype

from . import checks
from . import elementwise as ew
from . import memory, runtime
from .runtime import jit, offset

F32, F64, I32, I64, BOOL = (np.dtype(t) for t in (np.float32, np.float64, np.int32, np.int64, np.bool_))
ALL = runtime.DTYPES
INDEX_DTYPES = (I32, I64)
ATOMIC_DTYPES = (F32, F64, I32, I64)      # what cuda.atomic.add takes (index_backward with arrays)

# ---- launch configuration (module constants, read at launch time; tests may lower them) ------
TILE = 4 if runtime.SIMULATOR else 32           # transpose tile edge
TILE_ROWS = 2 if runtime.SIMULATOR else 8       # thread rows of a transpose block (divides TILE)
TILE_GRID = 2 if runtime.SIMULATOR else 65535   # most blocks along each of the 3 grid dims


# ---- kernels -----------------------------------------------------------------------------------
def _copy_kernel(dst, dbase, sd, src, sbase, ss, n, shape):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        dst[dbase + offset(i, shape, sd)] = src[sbase + offset(i, shape, ss)]


@jit(device=True)
def _checked(k, size, flag, code, axis):
    """Index k on an axis of `size`, wrapped when negative; -1 (after reporting it) when out of
    range.  size -1 marks combined element offsets: already checked, -1 when one was bad."""
    if size < 0:
        return k
    if k < -size or k >= size:
        checks.report(flag, code, k, size, axis)
        return -1
    return k + size if k < 0 else k


def _gather_index_kernel(out, n, shape, x, base, sx, idx, si, size, stride, flag, code, axis):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        k = _checked(idx[offset(i, shape, si)], size, flag, code, axis)
        if k >= 0:
            out[i] = x[base + offset(i, shape, sx) + k * stride]
        else:
            out[i] = 0


def _scatter_index_kernel(dst, base, sd, src, ss, n, shape, idx, si, size, stride, flag, code, axis):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        k = _checked(idx[offset(i, shape, si)], size, flag, code, axis)
        if k >= 0:
            dst[base + offset(i, shape, sd) + k * stride] = src[offset(i, shape, ss)]


def _scatter_add_index_kernel(dst, base, sd, src, ss, n, shape, idx, si, size, stride, flag, code, axis):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        k = _checked(idx[offset(i, shape, si)], size, flag, code, axis)
        if k >= 0:
            cuda.atomic.add(dst, base + offset(i, shape, sd) + k * stride, src[offset(i, shape, ss)])


def _combine_index_kernel(offsets, n, shape, idx, si, size, stride, flag, code, axis):
    """offsets[i] += wrapped idx * stride over the broadcast index shape; -1 once any is bad."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        k = _checked(idx[offset(i, shape, si)], size, flag, code, axis)
        if k < 0 or offsets[i] < 0:
            offsets[i] = -1
        else:
            offsets[i] += k * stride


@functools.lru_cache(maxsize=None)
def transpose_function(dtype, tile, rows_per_block):
    """The tiled transpose kernel for `dtype` with a (tile, tile + 1) shared tile and blocks of
    (tile, rows_per_block) threads.

    Per batch offset pair (bx in x, bo in out), x holds a (rows, cols) matrix with cols
    contiguous and rows `sx_row` apart; out holds its transpose (cols, rows) with rows
    contiguous and cols `so_col` apart."""
    T, R = int(tile), int(rows_per_block)
    TILE_SHAPE = (T, T + 1)
    D = np.dtype(dtype).type

    def transpose_kernel(out, x, rows, cols, nbatch, bshape, bsx, bso, sx_row, so_col):
        buf = cuda.shared.array(TILE_SHAPE, D)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        row_tiles = (rows + T - 1) // T
        col_tiles = (cols + T - 1) // T
        # every loop bound depends only on the block's indices: syncthreads is block-uniform
        for b in range(cuda.blockIdx.z, nbatch, cuda.gridDim.z):
            bx = offset(b, bshape, bsx)
            bo = offset(b, bshape, bso)
            for tr in range(cuda.blockIdx.y, row_tiles, cuda.gridDim.y):
                r0 = tr * T
                for tc in range(cuda.blockIdx.x, col_tiles, cuda.gridDim.x):
                    c0 = tc * T
                    c = c0 + tx                        # read along x's contiguous cols
                    for k in range(ty, T, R):
                        r = r0 + k
                        if r < rows and c < cols:
                            buf[k, tx] = x[bx + r * sx_row + c]
                    cuda.syncthreads()
                    r = r0 + tx                        # write along out's contiguous rows
                    for k in range(ty, T, R):
                        c = c0 + k
                        if r < rows and c < cols:
                            out[bo + c * so_col + r] = buf[tx, k]
                    cuda.syncthreads()
    return transpose_kernel


_copy = jit(_copy_kernel)
_gather_index = jit(_gather_index_kernel)
_scatter_index = jit(_scatter_index_kernel)
_scatter_add_index = jit(_scatter_add_index_kernel)
_combine_index = jit(_combine_index_kernel)
BAD_INDEX = {name: checks.site(IndexError, name + ": index {value} is out of bounds for axis {axis} with "
                               "size {bound}")
             for name in ("index", "index_backward", "setitem")}


@functools.lru_cache(maxsize=None)
def _transpose(dtype, tile, rows_per_block):
    return jit(transpose_function(np.dtype(dtype), tile, rows_per_block))


# ---- host helpers ------------------------------------------------------------------------------
def _shape(shape):
    return (int(shape),) if np.isscalar(shape) else tuple(int(d) for d in shape)


def _strided_copy(name, dst, dbase, dstrides, src, sbase, sstrides, shape):
    """dst[dbase + index . dstrides] = src[sbase + index . sstrides] for every index of `shape`
    (dst and src flat 1-D device arrays of one dtype)."""
    n = runtime.prod(shape)
    if n == 0:
        return
    cshape, (sd, ss) = runtime.coalesce(tuple(shape), [tuple(dstrides), tuple(sstrides)])
    runtime.launch(_copy, n, dst, int(dbase), sd, src, int(sbase), ss, n, cshape, name=name)


def _copy_of(name, x):
    """A fresh device copy of `x` (one flat copy launch)."""
    out = memory.empty(x.shape, x.dtype)
    n = int(x.size)
    if n:
        _strided_copy(name, runtime.flat(out), 0, (1,), runtime.flat(x), 0, (1,), (n,))
    return out


def _as_dtype(x, dtype):
    return x if np.dtype(x.dtype) == dtype else ew.cast(x, dtype)


# ---- reshape / permute / expand / concat -----------------------------------------------------
def reshape(x, shape):
    """A view of `x` with `shape` (one -1 is resolved, as NumPy does)."""
    name = "reshape"
    dt = runtime.check_array(name, x)
    shape = _shape(shape)
    size = int(x.size)
    if sum(1 for d in shape if d == -1) > 1 or any(d < -1 for d in shape):
        raise ValueError(f"{name}: invalid shape {shape} for an array of shape {tuple(x.shape)}")
    if -1 in shape:
        known = runtime.prod(d for d in shape if d != -1)
        if known == 0 or size % known:
            raise ValueError(f"{name}: cannot reshape an array of shape {tuple(x.shape)} into {shape}")
        shape = tuple(size // known if d == -1 else d for d in shape)
    if runtime.prod(shape) != size:
        raise ValueError(f"{name}: cannot reshape an array of shape {tuple(x.shape)} into {shape}")
    if size == 0:
        return memory.empty(shape, dt)                 # nothing to alias
    if tuple(x.shape) == shape:
        return x
    return x.reshape(shape)


def _normalize_axes(name, axes, nd, shape):
    try:
        norm = tuple(int(a) + nd if int(a) < 0 else int(a) for a in axes)
    except TypeError:
        raise ValueError(f"{name}: axes must be a tuple of ints, got {axes!r}") from None
    if sorted(norm) != list(range(nd)):
        raise ValueError(f"{name}: axes {tuple(axes)} are not a permutation of the {nd} dims of shape {shape}")
    return norm


def _merge_permutation(shape, axes):
    """(merged input shape, merged axes): size-1 dims dropped, and runs of input dims that stay
    neighbours in the output merged into one dim."""
    kept = [a for a in range(len(shape)) if shape[a] != 1]
    rank = {a: r for r, a in enumerate(kept)}
    groups = []                                         # runs of input ranks, in output order
    for a in axes:
        if shape[a] == 1:
            continue
        r = rank[a]
        if groups and groups[-1][-1] + 1 == r:
            groups[-1].append(r)
        else:
            groups.append([r])
    order = sorted(range(len(groups)), key=lambda g: groups[g][0])   # the groups in input order
    in_shape = tuple(runtime.prod(shape[kept[r]] for r in groups[g]) for g in order)
    position = {g: i for i, g in enumerate(order)}
    return in_shape, tuple(position[g] for g in range(len(groups)))


def permute(x, axes):
    name = "permute"
    dt = runtime.check_array(name, x)
    shape = tuple(x.shape)
    nd = len(shape)
    axes = _normalize_axes(name, axes, nd, shape)
    out_shape = tuple(shape[a] for a in axes)
    n = runtime.prod(out_shape)
    if n == 0:
        return memory.empty(out_shape, dt)
    mshape, maxes = _merge_permutation(shape, axes)
    m = len(mshape)
    if maxes == tuple(range(m)):                       # only size-1 dims move: a view
        return x.reshape(out_shape)
    out = memory.empty(out_shape, dt)
    in_strides = runtime.c_strides(mshape)
    mout = tuple(mshape[a] for a in maxes)
    out_strides = runtime.c_strides(mout)
    src, dst = runtime.flat(x), runtime.flat(out)
    if maxes[-1] == m - 1:
        # the contiguous dim stays last: a strided gather reads and writes along it
        _strided_copy(name, dst, 0, out_strides, src, 0, tuple(in_strides[a] for a in maxes), mout)
        return out
    q = maxes[-1]                       # the input dim that becomes the output's contiguous one
    p = maxes.index(m - 1)              # where the input's contiguous dim goes
    batch = [a for a in range(m) if a != q and a != m - 1]
    out_pos = {a: i for i, a in enumerate(maxes)}
    bshape, (bsx, bso) = runtime.coalesce(tuple(mshape[a] for a in batch),
                                          [tuple(in_strides[a] for a in batch),
                                           tuple(out_strides[out_pos[a]] for a in batch)])
    rows, cols = mshape[q], mshape[m - 1]
    nbatch = runtime.prod(bshape)
    T, R = TILE, TILE_ROWS
    if T % R or T * R > 1024:
        raise ValueError(f"{name}: TILE_ROWS {R} must divide TILE {T}, with TILE * TILE_ROWS <= 1024")
    grid = (min(-(-cols // T), TILE_GRID), min(-(-rows // T), TILE_GRID), min(nbatch, TILE_GRID))
    runtime.launch_config(_transpose(dt, T, R), grid, (T, R), dst, src, rows, cols, nbatch, bshape, bsx, bso,
                          in_strides[q], out_strides[p])
    return out


def expand(x, shape):
    """The broadcast of `x` to `shape`, materialized (stride-0 reads along broadcast dims)."""
    name = "expand"
    dt = runtime.check_array(name, x)
    shape = _shape(shape)
    xs = tuple(x.shape)
    if len(shape) < len(xs) or any(d != s and d != 1 for d, s in zip(xs[::-1], shape[::-1])):
        raise ValueError(f"{name}: cannot expand shape {xs} to {shape}")
    out = memory.empty(shape, dt)
    _strided_copy(name, runtime.flat(out), 0, runtime.c_strides(shape),
                  runtime.flat(x), 0, runtime.broadcast_strides(xs, shape), shape)
    return out


def concat(*xs, axis):
    """np.concatenate on the device: one strided copy launch per (non-empty) input."""
    name = "concat"
    if not xs:
        raise ValueError(f"{name}: needs at least one array")
    dts = [runtime.check_array(name, x, f"input {i}") for i, x in enumerate(xs)]
    first = tuple(xs[0].shape)
    nd = len(first)
    if nd == 0:
        raise ValueError(f"{name}: zero-dimensional arrays cannot be concatenated")
    if not -nd <= int(axis) < nd:
        raise ValueError(f"{name}: axis {axis} is out of range for arrays with {nd} dims")
    axis = int(axis) % nd
    for x in xs[1:]:
        s = tuple(x.shape)
        if len(s) != nd or any(a != b for i, (a, b) in enumerate(zip(s, first)) if i != axis):
            shapes = ", ".join(str(tuple(t.shape)) for t in xs)
            raise ValueError(f"{name}: shapes {shapes} differ outside axis {axis}")
    dt = dts[0]
    for d in dts[1:]:
        dt = np.promote_types(dt, d)
    out_shape = first[:axis] + (sum(int(x.shape[axis]) for x in xs),) + first[axis + 1:]
    out = memory.empty(out_shape, dt)
    dst = runtime.flat(out)
    out_strides = runtime.c_strides(out_shape)
    start = 0
    for x in xs:
        shape = tuple(x.shape)
        if x.size:
            x = _as_dtype(x, dt)
            _strided_copy(name, dst, start * out_strides[axis], out_strides,
                          runtime.flat(x), 0, runtime.c_strides(shape), shape)
        start += shape[axis]
    return out


# ---- indexing ----------------------------------------------------------------------------------
class _Plan:
    """An index applied to a C-contiguous array of `shape`, as strides over the result.

    shape     the result's shape
    base      element offset of the result's first element (ints and slice starts)
    xstrides  per result dim, the element stride in the indexed array (0 for None and B dims)
    idx       None (basic indexing), or a flat device int array read at `istrides` (0 except
              along the broadcast index dims B): one index array as it is (wrapped at `size`
              when negative, times `stride`; `axis` names it in errors)
    parts     several index arrays, (flat array, strides over B, axis size, axis stride, axis)
              each, combined into element offsets (size -1, stride 1) when a kernel runs
    """
    __slots__ = ("shape", "base", "xstrides", "idx", "istrides", "size", "stride", "axis", "parts", "bshape")


def _plan(name, shape, spec, arrays):
    shape = tuple(int(d) for d in shape)
    nd = len(shape)
    strides = runtime.c_strides(shape)
    spec = tuple(spec)
    if sum(1 for it in spec if it[0] == "ellipsis") > 1:
        raise IndexError(f"{name}: an index can only have a single ellipsis ('...')")
    used = sum(1 for it in spec if it[0] not in ("none", "ellipsis"))
    if used > nd:
        raise IndexError(f"{name}: too many indices for a tensor of shape {shape}: {used} were indexed")
    has_arrays = any(it[0] == "array" for it in spec)
    basic = []              # (size, stride) per result dim made by a slice, None or a skipped dim
    adv = []                # (array number, axis) per array item
    adv_pos = []            # positions in spec of the advanced items (arrays; ints with arrays)
    insert_at = None        # basic result dims before the first advanced item
    base, axis = 0, 0
    for pos, it in enumerate(spec):
        kind = it[0]
        if kind == "ellipsis":
            for _ in range(nd - used):
                basic.append((shape[axis], strides[axis]))
                axis += 1
        elif kind == "none":
            basic.append((1, 0))
        elif kind == "slice":
            start, stop, step = slice(*it[1:]).indices(shape[axis])
            n = len(range(start, stop, step))
            basic.append((n, step * strides[axis]))
            if n:
                base += start * strides[axis]
            axis += 1
        elif kind in ("int", "array"):
            if kind == "int":
                i, dim = int(it[1]), shape[axis]
                if not -dim <= i < dim:
                    raise IndexError(f"{name}: index {i} is out of bounds for axis {axis} "
                                     f"with size {dim} (tensor shape {shape})")
                base += (i + dim if i < 0 else i) * strides[axis]
            else:
                adv.append((int(it[1]), axis))
            if kind == "array" or has_arrays:
                adv_pos.append(pos)
                if insert_at is None:
                    insert_at = len(basic)
            axis += 1
        else:
            raise IndexError(f"{name}: unknown index item {it!r}")
    for a in range(axis, nd):
        basic.append((shape[a], strides[a]))

    plan = _Plan()
    plan.base, plan.idx, plan.size, plan.stride, plan.axis, plan.parts = base, None, 0, 1, 0, ()
    if not adv:
        plan.shape = tuple(n for n, _ in basic)
        plan.xstrides = tuple(s for _, s in basic)
        plan.istrides = (0,) * len(basic)
        return plan

    devs = []
    for k, a in adv:
        if k >= len(arrays):
            raise IndexError(f"{name}: the index refers to index array {k}, but {len(arrays)} were given")
        runtime.check_array(name, arrays[k], f"index array {k}", INDEX_DTYPES)
        devs.append(arrays[k])
    try:
        bshape = tuple(np.broadcast_shapes(*[tuple(d.shape) for d in devs]))
    except ValueError:
        shown = " ".join(str(tuple(d.shape)) for d in devs)
        raise IndexError(f"{name}: shape mismatch: indexing arrays could not be broadcast together "
                         f"with shapes {shown}") from None
    adjacent = adv_pos == list(range(adv_pos[0], adv_pos[0] + len(adv_pos)))
    at = insert_at if adjacent else 0
    bdims = [(n, 0) for n in bshape]
    dims = basic[:at] + bdims + basic[at:]
    plan.shape = tuple(n for n, _ in dims)
    plan.xstrides = tuple(s for _, s in dims)
    plan.istrides = (0,) * at + runtime.c_strides(bshape) + (0,) * (len(basic) - at)
    if len(devs) == 1:
        (k, a), = adv
        plan.idx, plan.size, plan.stride, plan.axis = runtime.flat(devs[0]), shape[a], strides[a], a
    else:
        # (flat index array, its strides over B, axis size, axis stride, axis) per array
        plan.parts = tuple((runtime.flat(d), runtime.broadcast_strides(tuple(d.shape), bshape), shape[a],
                            strides[a], a) for d, (k, a) in zip(devs, adv))
        plan.bshape = bshape
    return plan


def _index_array(name, plan):
    """The plan's one index array; several are first combined into element offsets on the device."""
    if not plan.parts:
        return plan.idx
    bshape = plan.bshape
    offsets = ew.fill(bshape, 0, I64)
    n = runtime.prod(bshape)
    for idx, istrides, size, stride, axis in plan.parts:
        cshape, (si,) = runtime.coalesce(bshape, [istrides])
        runtime.launch(_combine_index, n, runtime.flat(offsets), n, cshape, idx, si, size, stride,
                       checks.flag(), BAD_INDEX[name], axis, name=name)
    plan.idx, plan.size, plan.stride, plan.parts = runtime.flat(offsets), -1, 1, ()
    return plan.idx


def index(x, *arrays, spec):
    """x[spec]: a strided gather; integer-array items read their index array on the device."""
    name = "index"
    dt = runtime.check_array(name, x)
    plan = _plan(name, x.shape, spec, arrays)
    out = memory.empty(plan.shape, dt)
    n = runtime.prod(plan.shape)
    if n == 0:
        return out
    if plan.idx is None and not plan.parts:
        _strided_copy(name, runtime.flat(out), 0, runtime.c_strides(plan.shape),
                      runtime.flat(x), plan.base, plan.xstrides, plan.shape)
        return out
    idx = _index_array(name, plan)
    cshape, (sx, si) = runtime.coalesce(plan.shape, [plan.xstrides, plan.istrides])
    runtime.launch(_gather_index, n, runtime.flat(out), n, cshape, runtime.flat(x), plan.base, sx,
                   idx, si, plan.size, plan.stride, checks.flag(), BAD_INDEX[name], plan.axis, name=name)
    return out


def _scatter(name, kernel, dst, plan, src, src_strides):
    """dst[spec] = src (or += with atomics), `src` read at `src_strides` over the plan's shape."""
    n = runtime.prod(plan.shape)
    if n == 0:
        return
    if plan.idx is None and not plan.parts:
        _strided_copy(name, runtime.flat(dst), plan.base, plan.xstrides, runtime.flat(src), 0,
                      src_strides, plan.shape)
        return
    idx = _index_array(name, plan)
    cshape, (sd, ss, si) = runtime.coalesce(plan.shape, [plan.xstrides, tuple(src_strides), plan.istrides])
    runtime.launch(kernel, n, runtime.flat(dst), plan.base, sd, runtime.flat(src), ss, n, cshape,
                   idx, si, plan.size, plan.stride, checks.flag(), BAD_INDEX[name], plan.axis, name=name)


def index_backward(g, *arrays, spec, shape):
    """zeros(shape)[spec] += g: atomic scatter-add for array indices (repeats accumulate, as
    np.add.at), a plain strided scatter for basic ones."""
    name = "index_backward"
    dt = runtime.check_array(name, g, "gradient")
    shape = _shape(shape)
    plan = _plan(name, shape, spec, arrays)
    if tuple(g.shape) != plan.shape:
        raise ValueError(f"{name}: gradient of shape {tuple(g.shape)} does not match the index's "
                         f"result shape {plan.shape} (indexed shape {shape})")
    if (plan.idx is not None or plan.parts) and dt not in ATOMIC_DTYPES:
        raise TypeError(f"{name}: atomic scatter-add needs float32, float64, int32 or int64, got {dt} "
                        f"for a gradient of shape {tuple(g.shape)}")
    out = ew.fill(shape, 0, dt)
    _scatter(name, _scatter_add_index, out, plan, g, runtime.c_strides(plan.shape))
    return out


def setitem(x, value, *arrays, spec):
    """A copy of x with x[spec] = value (value broadcast to the index's result shape)."""
    name = "setitem"
    dt = runtime.check_array(name, x)
    runtime.check_array(name, value, "value")
    plan = _plan(name, x.shape, spec, arrays)
    vshape = tuple(value.shape)
    if runtime.broadcast_shape(name, vshape, plan.shape) != plan.shape:
        raise ValueError(f"{name}: cannot assign a value of shape {vshape} to an index selecting "
                         f"shape {plan.shape} of a tensor of shape {tuple(x.shape)}")
    out = _copy_of(name, x)
    if runtime.prod(plan.shape) and value.size:
        value = _as_dtype(value, dt)
        _scatter(name, _scatter_index, out, plan, value, runtime.broadcast_strides(vshape, plan.shape))
    return out


def select(values, index):
    """One output of a multi-output op (a tuple of device arrays)."""
    return values[index]


KERNELS = {
    "reshape": reshape, "permute": permute, "expand": expand, "concat": concat,
    "index": index, "index_backward": index_backward, "setitem": setitem, "select": select,
}


# ---- compile_ptx cases ---------------------------------------------------------------------------
def _arr(dt):
    return types.Array(from_dtype(np.dtype(dt)), 1, "C")


def _tup(nd):
    return types.UniTuple(types.int64, nd)


def ptx_cases(full=False):
    """(label, python function, argument types) of every kernel here at the types the host code
    launches it with: flat C-contiguous 1-D arrays, int64 offsets and sizes, UniTuple(int64, nd)
    shapes/strides.  By default every dtype once per kernel (int64 index arrays, 1 dim) plus
    float32 at more dims and with int32 index arrays; with full=True every dtype, both index
    dtypes and 1-4 dims."""
    i64 = types.int64
    for dt in ALL:
        more = full or dt == F32
        for nd in (range(1, 5) if full else (1, 2, 3) if more else (1,)):
            t = _tup(nd)
            yield f"shape copy {dt} nd{nd}", _copy_kernel, (_arr(dt), i64, t, _arr(dt), i64, t, i64, t)
        for it in (INDEX_DTYPES if more else (I64,)):
            for nd in (range(1, 4) if full else (1, 2) if dt == F32 and it == I64 else (1,)):
                t = _tup(nd)
                chk = (_arr(I64), i64, i64)
                yield (f"shape gather_index {dt} idx {it} nd{nd}", _gather_index_kernel,
                       (_arr(dt), i64, t, _arr(dt), i64, t, _arr(it), t, i64, i64) + chk)
                scatter_sig = (_arr(dt), i64, t, _arr(dt), t, i64, t, _arr(it), t, i64, i64) + chk
                yield f"shape scatter_index {dt} idx {it} nd{nd}", _scatter_index_kernel, scatter_sig
                if dt in ATOMIC_DTYPES:
                    yield (f"shape scatter_add_index {dt} idx {it} nd{nd}", _scatter_add_index_kernel,
                           scatter_sig)
        fn = transpose_function(dt, TILE, TILE_ROWS)
        if dt in INDEX_DTYPES:
            for nd in (1, 2):
                yield (f"shape combine_index idx {dt} nd{nd}", _combine_index_kernel,
                       (_arr(I64), i64, _tup(nd), _arr(dt), _tup(nd), i64, i64, _arr(I64), i64, i64))
        for nb in (range(1, 5) if full else (1, 2) if more else (1,)):
            t = _tup(nb)
            yield (f"shape transpose {dt} tile{TILE}x{TILE_ROWS} batch{nb}", fn,
                   (_arr(dt), _arr(dt), i64, i64, i64, t, t, t, i64, i64))
