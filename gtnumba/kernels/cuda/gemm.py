"""Matrix product on the CUDA backend: `matmul(a, b)` over N-D (>= 2) operands with NumPy-broadcast
batch dims, as `np.matmul` (the CPU kernel).

Two paths:

- cuBLAS through CuPy, when CuPy is installed and the device is a real GPU (never in the
  simulator): the Numba arrays are handed to `cupy.asarray` through `__cuda_array_interface__`
  and `cupy.matmul` writes straight into an output from our pool (`out=`): no copies.  CuPy's
  current stream is by default the legacy default stream, on which every Numba launch here runs,
  so ordering needs no sync (CUPY_CUDA_PER_THREAD_DEFAULT_STREAM=1 would break that).
- a Numba GEMM otherwise (and for integer/bool products): a shared-memory tiled, register-blocked
  kernel.  A block computes a BM x BN tile of C; per step it stages a BM x BK slice of A
  (stored transposed, k-major, one pad column against bank conflicts on the transposing stores)
  and a BK x BN slice of B in shared memory, both loaded with coalesced global reads; each of its
  (BM/TM) * (BN/TN) threads accumulates a TM x TN micro-tile in registers (a local array with
  constant bounds that LLVM unrolls into registers: the PTX has no local loads or stores).  A thread's micro-tile rows and columns are
  strided by BM/TM and BN/TN (not contiguous), so in the inner product a warp reads consecutive
  shared-memory words of the B tile (no bank conflicts) and its stores of C are coalesced.
  Loads and stores are bounds-checked, so M, N, K need not be multiples of the tile.
  Batches run on the grid's z dimension (grid-stride); per-operand batch strides are 0 along
  broadcast batch dims, so a broadcast operand is read in place, never materialized.

Tile sizes are module constants read at launch (tests shrink them; the simulator's defaults are
tiny because it pays ~0.1 ms per simulated thread).  Accumulation is in the output dtype (as
cuBLAS and NumPy's BLAS do for float32); bool products run as int64 and are cast back (!= 0).
"""
import functools
import os

import numpy as np
from numba import cuda

from . import memory, runtime
from .runtime import jit, offset

F32, F64, I32, I64, BOOL = (np.dtype(t) for t in (np.float32, np.float64, np.int32, np.int64, np.bool_))
GEMM_DTYPES = (F32, F64, I32, I64)

# ---- tile configuration (module constants, read at launch) ------------------------------------
if runtime.SIMULATOR:
    BM, BN, BK, TM, TN = 8, 8, 4, 2, 2          # 16 threads per block
else:
    BM, BN, BK, TM, TN = 64, 64, 16, 4, 4       # 256 threads, each a 4x4 micro-tile
# grid limits (CUDA's; tests lower them so the grid-stride loops over tiles and batches wrap)
MAX_GRID_X, MAX_GRID_Y, MAX_GRID_Z = 2 ** 31 - 1, 65535, 65535

# Use cuBLAS (CuPy) when available on a real GPU; GTNUMBA_CUBLAS=0 (or this flag) turns it off.
USE_CUBLAS = os.environ.get("GTNUMBA_CUBLAS", "1").strip() != "0"


def tiles():
    """The tile configuration the next launch uses, validated."""
    cfg = (int(BM), int(BN), int(BK), int(TM), int(TN))
    bm, bn, bk, tm, tn = cfg
    if min(cfg) < 1 or bm % tm or bn % tn:
        raise ValueError(f"matmul: bad tile configuration BM={bm} BN={bn} BK={bk} TM={tm} TN={tn} "
                         f"(BM must be a multiple of TM and BN of TN)")
    threads = (bm // tm) * (bn // tn)
    if threads > 1024:
        raise ValueError(f"matmul: tile configuration needs {threads} threads per block (> 1024)")
    return cfg


# ---- device code --------------------------------------------------------------------------------
def _gemm_template(T, bm, bn, bk, tm, tn):
    rm, rn = bm // tm, bn // tn          # threads along M and N
    nt = rm * rn                         # threads per block
    bm_pad = bm + 1                      # (a closure constant: shared shapes must be constants)
    zero = T(0)

    def gemm_kernel(c, a, b, M, N, K, nbatch, bshape, a_bs, b_bs):
        As = cuda.shared.array((bk, bm_pad), T)      # A tile, k-major (transposed); the pad
        #                                              column spreads its transposing stores over banks
        Bs = cuda.shared.array((bk, bn), T)
        acc = cuda.local.array((tm, tn), T)
        af = cuda.local.array(tm, T)
        bf = cuda.local.array(tn, T)
        tid = cuda.threadIdx.x
        tx = tid % rn
        ty = tid // rn
        n_tiles_n = (N + bn - 1) // bn
        n_tiles_m = (M + bm - 1) // bm
        for z in range(cuda.blockIdx.z, nbatch, cuda.gridDim.z):
            oa = offset(z, bshape, a_bs)
            ob = offset(z, bshape, b_bs)
            oc = z * M * N
            for tm_i in range(cuda.blockIdx.y, n_tiles_m, cuda.gridDim.y):
                row0 = tm_i * bm
                for tn_i in range(cuda.blockIdx.x, n_tiles_n, cuda.gridDim.x):
                    col0 = tn_i * bn
                    for i in range(tm):
                        for j in range(tn):
                            acc[i, j] = zero
                    for k0 in range(0, K, bk):
                        # stage A[row0:row0+bm, k0:k0+bk] (transposed) and B[k0:k0+bk, col0:col0+bn]
                        for l in range(tid, bm * bk, nt):
                            r = l // bk
                            kk = l - r * bk
                            gr = row0 + r
                            gk = k0 + kk
                            if gr < M and gk < K:
                                As[kk, r] = a[oa + gr * K + gk]
                            else:
                                As[kk, r] = zero
                        for l in range(tid, bk * bn, nt):
                            kk = l // bn
                            cc = l - kk * bn
                            gk = k0 + kk
                            gc = col0 + cc
                            if gk < K and gc < N:
                                Bs[kk, cc] = b[ob + gk * N + gc]
                            else:
                                Bs[kk, cc] = zero
                        cuda.syncthreads()
                        for kk in range(bk):
                            for i in range(tm):
                                af[i] = As[kk, ty + i * rm]
                            for j in range(tn):
                                bf[j] = Bs[kk, tx + j * rn]
                            for i in range(tm):
                                for j in range(tn):
                                    acc[i, j] += af[i] * bf[j]
                        cuda.syncthreads()
                    for i in range(tm):
                        gr = row0 + ty + i * rm
                        if gr < M:
                            for j in range(tn):
                                gc = col0 + tx + j * rn
                                if gc < N:
                                    c[oc + gr * N + gc] = acc[i, j]
    return gemm_kernel


@functools.lru_cache(maxsize=None)
def kernel_function(dtype, cfg):
    """Python function of the GEMM kernel for `dtype` and tile config (BM, BN, BK, TM, TN)."""
    return _gemm_template(np.dtype(dtype).type, *cfg)


@functools.lru_cache(maxsize=None)
def compiled_kernel(dtype, cfg):
    return jit(kernel_function(dtype, cfg))


# ---- cuBLAS through CuPy --------------------------------------------------------------------------
_CUPY = []


def _cublas():
    """The CuPy module when cuBLAS can be used here (a real GPU, CuPy importable), else None."""
    if runtime.SIMULATOR or not USE_CUBLAS:
        return None
    if not _CUPY:
        try:
            import cupy
            _CUPY.append(cupy)
        except Exception:
            _CUPY.append(None)
    return _CUPY[0]


def _matmul_cublas(cupy, a, b, out):
    """out[...] = a @ b by cupy.matmul (cuBLAS), all three Numba arrays viewed by CuPy in place,
    queued on the backend's stream."""
    with _cupy_stream(cupy):
        ca, cb, co = cupy.asarray(a), cupy.asarray(b), cupy.asarray(out)
        cupy.matmul(ca, cb, out=co)
    return out


_CUPY_STREAM = []


def _cupy_stream(cupy):
    """The backend's stream as a CuPy stream (made once)."""
    if not _CUPY_STREAM:
        handle = getattr(runtime.stream(), "handle", 0)       # (the simulator's stream has none)
        _CUPY_STREAM.append(cupy.cuda.ExternalStream(int(getattr(handle, "value", handle) or 0)))
    return _CUPY_STREAM[0]


# ---- host side ------------------------------------------------------------------------------------
def _cast(x, dtype):
    if np.dtype(x.dtype) == dtype:
        return x
    from .elementwise import cast
    return cast(x, dtype)


def _batch_layout(a_shape, b_shape, batch):
    """Coalesced (batch shape, A batch strides, B batch strides) in elements (0: broadcast)."""
    a_mat = a_shape[-2] * a_shape[-1]
    b_mat = b_shape[-2] * b_shape[-1]
    a_bs = tuple(s * a_mat for s in runtime.broadcast_strides(a_shape[:-2], batch))
    b_bs = tuple(s * b_mat for s in runtime.broadcast_strides(b_shape[:-2], batch))
    c_bs = runtime.c_strides(batch)
    shape, (a_bs, b_bs, _) = runtime.coalesce(batch, [a_bs, b_bs, c_bs])
    return shape, a_bs, b_bs


def gemm(a, b, out, cfg=None):
    """Launch the Numba GEMM: out (batch..., M, N) = a (..., M, K) @ b (..., K, N), all of one
    dtype; `out` is C-contiguous with the broadcast batch shape."""
    cfg = tiles() if cfg is None else cfg
    bm, bn, bk, tm, tn = cfg
    sa, sb, so = tuple(a.shape), tuple(b.shape), tuple(out.shape)
    M, K, N = sa[-2], sa[-1], sb[-1]
    batch = so[:-2]
    nbatch = runtime.prod(batch)
    if M == 0 or N == 0 or nbatch == 0:
        return out
    bshape, a_bs, b_bs = _batch_layout(sa, sb, batch)
    grid = (max(1, min(-(-N // bn), MAX_GRID_X)), max(1, min(-(-M // bm), MAX_GRID_Y)),
            max(1, min(nbatch, MAX_GRID_Z)))
    threads = (bm // tm) * (bn // tn)
    kernel = compiled_kernel(np.dtype(out.dtype), cfg)
    runtime.launch_config(kernel, grid, threads, runtime.flat(out), runtime.flat(a), runtime.flat(b), M, N, K,
                          nbatch, bshape, a_bs, b_bs)
    return out


def matmul(a, b):
    name = "matmul"
    da = runtime.check_array(name, a, "left operand")
    db = runtime.check_array(name, b, "right operand")
    sa, sb = tuple(a.shape), tuple(b.shape)
    if len(sa) < 2 or len(sb) < 2:
        raise ValueError(f"{name}: operands must be at least 2-D, got {sa} and {sb}")
    if sa[-1] != sb[-2]:
        raise ValueError(f"{name}: shapes {sa} and {sb} do not match ({sa[-1]} != {sb[-2]} on the contracted dim)")
    batch = runtime.broadcast_shape(name, sa[:-2], sb[:-2])
    out_dtype = np.dtype(np.promote_types(da, db))
    out_shape = batch + (sa[-2], sb[-1])
    compute = I64 if out_dtype == BOOL else out_dtype
    if compute not in GEMM_DTYPES:
        raise TypeError(f"{name}: unsupported dtype {out_dtype} for shapes {sa} and {sb}")
    a, b = _cast(a, compute), _cast(b, compute)
    out = memory.empty(out_shape, compute)
    if runtime.prod(out_shape) == 0:
        return out if compute == out_dtype else memory.empty(out_shape, out_dtype)
    if sa[-1] == 0:                            # empty contraction: zeros
        from .elementwise import fill
        return fill(out_shape, 0, out_dtype)
    cupy = _cublas() if compute in (F32, F64) else None
    if cupy is not None:
        runtime.host_call(functools.partial(_matmul_cublas, cupy), a, b, out)
    else:
        gemm(a, b, out)
    return out if compute == out_dtype else _cast(out, out_dtype)


KERNELS = {"matmul": matmul}


# ---- compile_ptx cases ------------------------------------------------------------------------------
def ptx_cases(full=False):
    """(label, function, argument types) of every GEMM specialization the host launches: each
    dtype with the default tile configuration and 1 coalesced batch dim (2 and 3 for float32, or
    for every dtype with full=True)."""
    from numba import types
    from numba.np.numpy_support import from_dtype
    cfg = tiles()
    for dt in GEMM_DTYPES:
        arr = types.Array(from_dtype(dt), 1, "C")
        for nd in ((1, 2, 3) if full or dt == F32 else (1,)):
            tup = types.UniTuple(types.int64, nd)
            sig = (arr, arr, arr) + (types.int64,) * 4 + (tup, tup, tup)
            yield f"gemm {dt} {'x'.join(map(str, cfg))} batch{nd}", kernel_function(dt, cfg), sig
