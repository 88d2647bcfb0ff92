"""What every CUDA kernel module shares: the simulator switch, launch configuration, the `jit`
wrapper, the `launch` helper, argument checks and the broadcast/stride arithmetic.

Values on the CUDA backend are C-contiguous Numba device arrays (in the simulator, its
FakeCUDAArray).  Kernels see them as flat 1-D arrays and do their own index math from
(shape, element strides) tuples: tuples are passed by value, cost little to launch and make
Numba compile one specialization per number of dims.

Launch configuration is module state read at launch time, so tests (and tuning) can lower it:
`BLOCK` (threads per block of elementwise and thread-per-output kernels), `REDUCE_BLOCK` (most
threads of a block-per-output reduction; also the size of its shared-memory tree), `MAX_GRID`
(grid-stride loops cover the rest), `TARGET_BLOCKS` / `TARGET_THREADS` (how far a large reduction
is split before a second pass).
"""
import contextlib
import math
import os
import threading

import numpy as np
from numba import config as _numba_config
from numba import cuda

SIMULATOR = bool(_numba_config.ENABLE_CUDASIM)
# Numba warns about low occupancy on every launch of a small grid; small launches are normal here
# (a tiny model's rows), so the warning is off unless NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS asks for it.
if "NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS" not in os.environ:
    _numba_config.CUDA_LOW_OCCUPANCY_WARNINGS = 0


def _patch_simulator_shared_arrays():
    """numba-cuda 0.30.4's simulator allocates `cuda.shared.array` with an unlocked check-then-set
    on a per-block dict: when two threads of a block reach the allocation together, one can get a
    private array that the others never see, and a kernel staging data in shared memory (tiled
    GEMM, shared-memory trees) then computes garbage now and then.  Make the allocation atomic
    (and key it by the caller's file and line, as the simulator does, without a full stack walk)."""
    import sys
    import threading
    from numba.core import types as _types
    from numba.np import numpy_support
    from numba.cuda.simulator import kernelapi

    shared = kernelapi.FakeCUDAShared
    if getattr(shared.array, "_gtnumba_locked", False):
        return
    original = shared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, _types.Type):
            dtype = numpy_support.as_dtype(dtype)
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res
    array._gtnumba_locked = True
    shared.array = array


if SIMULATOR:
    _patch_simulator_shared_arrays()

# ---- launch configuration (module constants; tests may lower them) -------------------------
BLOCK = 32 if SIMULATOR else 256
REDUCE_BLOCK = 32 if SIMULATOR else 256
MIN_REDUCE_BLOCK = 1 if SIMULATOR else 32       # a real block-per-output tree uses >= 1 warp
MAX_GRID = 8 if SIMULATOR else 65535 * 16
TARGET_BLOCKS = 4 if SIMULATOR else 1024        # refreshed from the SM count on a real GPU
TARGET_THREADS = 256 if SIMULATOR else 1 << 18
SERIAL_MAX_REDUCE = 32       # reduce at most this many elements per output: one thread per output
COALESCED_MIN_OUT = 1024     # this many outputs over a kept innermost dim: one thread per output
SERIAL_SPLIT_CHUNK = 256     # a thread-per-output reduction is split only into chunks this long
BLOCK_ITEMS_MIN = 8          # a block of a split block-per-output reduction gets >= BLOCK*this

DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int32), np.dtype(np.int64),
          np.dtype(np.bool_))

# options the simulator's cuda.jit accepts; the rest (lineinfo, launch_bounds, link, lto, ...)
# only make sense for real compilation and are dropped there
_SIM_JIT_OPTIONS = {"device", "debug", "argtypes", "inline", "restype", "fastmath", "boundscheck",
                    "opt", "cache", "shared_memory_carveout"}


def jit(func=None, **options):
    """`numba.cuda.jit` that also works in the simulator (options it refuses are dropped there)
    and, on the real target, caches compiled kernels on disk (see `disk_cache`)."""
    if SIMULATOR:
        options = {k: v for k, v in options.items() if k in _SIM_JIT_OPTIONS}
        if options.get("inline") not in (None, False, True):
            options.pop("inline")
    if func is None:
        return lambda f: jit(f, **options)
    dispatcher = cuda.jit(func, **options)
    if not SIMULATOR and not options.get("device") and cache_key_of(func) is not None:
        disk_cache(dispatcher, func)
    return dispatcher


# ---- compiled kernels cached on disk -----------------------------------------------------------
# Numba-cuda's cache (the `cache=True` machinery: __pycache__ next to the source, or the user's
# cache directory) keys a kernel by its signature, the device, its own bytecode and its closure
# variables.  It does not see the device functions a kernel calls through module globals (the
# index helper, the error reporter), so gtnumba adds a digest of every kernel source file to the
# key: any edit of this package misses the old entries instead of loading a stale kernel.
# GTNUMBA_CUDA_CACHE=0 turns the disk cache off.
_DIGEST = []
_CACHE_CLASS = []


def sources_digest():
    if not _DIGEST:
        import hashlib
        h = hashlib.sha256()
        here = os.path.dirname(os.path.abspath(__file__))
        for name in sorted(os.listdir(here)):
            if name.endswith(".py"):
                with open(os.path.join(here, name), "rb") as f:
                    h.update(name.encode() + f.read())
        _DIGEST.append(h.hexdigest()[:16])
    return _DIGEST[0]


def cache_key_of(func):
    """The bytes numba-cuda's cache hashes for `func`'s closure (None: not cacheable, or the disk
    cache is off)."""
    if os.environ.get("GTNUMBA_CUDA_CACHE", "1").strip() == "0":
        return None
    if func.__closure__ is None:
        return b""
    try:
        from numba.cuda.serialize import dumps
        return dumps(tuple(c.cell_contents for c in func.__closure__))
    except Exception:  # a closure numba cannot pickle: compile it each run
        return None


def disk_cache(dispatcher, func):
    if not _CACHE_CLASS:
        from numba.cuda.dispatcher import CUDACache

        class KernelCache(CUDACache):
            def _index_key(self, sig, codegen):
                return super()._index_key(sig, codegen) + (("gtnumba-kernels", sources_digest()),)
        _CACHE_CLASS.append(KernelCache)
    try:
        dispatcher._cache = _CACHE_CLASS[0](func)
    except Exception:  # no writable cache directory: compile each run
        pass


@jit(device=True)
def offset(i, shape, strides):
    """The element offset, in an operand walked at `strides`, of flat index i over `shape` (C
    order): the one index-unravel helper of every kernel (one call per operand; with one
    coalesced dim, the common case, the loop does nothing)."""
    o = 0
    r = i
    for d in range(len(shape) - 1, 0, -1):
        n = shape[d]
        q = r // n
        o += (r - q * n) * strides[d]
        r = q
    return o + r * strides[0]


_device_tuned = []


def tune_for_device():
    """On a real GPU, size split reductions by the SM count (once)."""
    global TARGET_BLOCKS, TARGET_THREADS
    if SIMULATOR or _device_tuned:
        return
    _device_tuned.append(True)
    try:
        sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
    except Exception:  # pragma: no cover - no device attribute: keep the defaults
        return
    TARGET_BLOCKS = 8 * sms
    TARGET_THREADS = 2048 * sms


def grid_for(n, block, max_grid=None):
    """Blocks for `n` work items of `block` threads each, capped (grid-stride loops do the rest)."""
    cap = MAX_GRID if max_grid is None else max_grid
    return max(1, min(-(-n // block), cap))


# ---- the stream every launch and copy goes to ----------------------------------------------
_STREAM = []


def stream():
    """This process's one non-default stream (made on first use).  Every kernel, copy and cuBLAS
    call of the backend is queued on it, so work stays ordered without syncs, a pool block freed
    by one op is safe for the next, and a plan's launches can be captured as a CUDA graph."""
    if not _STREAM:
        _STREAM.append(cuda.stream())
    return _STREAM[0]


# A recorder (gtnumba.kernels.cuda.bound) sees every allocation, launch and host call of one plan
# step the first time it runs, to replay them later without the host code around them.  One per
# thread: a thread recording a step never sees another thread's launches.
class _Recording(threading.local):
    active = None          # a class default: a thread that never recorded finds it without an AttributeError


_RECORDING = _Recording()


def recorder():
    """This thread's active recorder, or None."""
    return _RECORDING.active


@contextlib.contextmanager
def recording(rec):
    saved, _RECORDING.active = recorder(), rec
    try:
        yield rec
    finally:
        _RECORDING.active = saved


def launch_config(kernel, grid, block, *args):
    """The one place a kernel is launched: on the backend's stream, seen by an active recorder."""
    kernel[grid, block, stream()](*args)
    rec = recorder()
    if rec is not None:
        rec.launch(kernel, grid, block, args)


def host_call(fn, *args):
    """Run `fn(*args)` (a library call on device arrays, e.g. cuBLAS), seen by an active recorder."""
    fn(*args)
    rec = recorder()
    if rec is not None:
        rec.call(fn, args)


def launch(kernel, n, *args, block=None, grid=None, name="kernel"):
    """Launch `kernel` over `n` work items (no launch when n == 0); returns (grid, block)."""
    block = BLOCK if block is None else block
    if not isinstance(block, int) or not 1 <= block <= 1024:
        raise ValueError(f"{name}: block size must be an int in 1..1024, got {block!r}")
    if n <= 0:
        return 0, block
    grid = grid_for(n, block) if grid is None else grid
    if grid < 1:
        raise ValueError(f"{name}: grid size must be positive, got {grid}")
    launch_config(kernel, grid, block, *args)
    return grid, block


# ---- argument checks ---------------------------------------------------------------------
def _device_array_types():
    if SIMULATOR:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        return (FakeCUDAArray,)
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    return (DeviceNDArray,)


_DEVICE_TYPES = _device_array_types()


def is_device_array(x):
    return isinstance(x, _DEVICE_TYPES)


def device_pointer(x):
    """The device address of a device array's first element (a host address in the simulator)."""
    if SIMULATOR:
        return x._ary.__array_interface__["data"][0]
    p = getattr(x.gpu_data, "ptr_value", None)      # a pool block (or a reshape of one: same start)
    return p if p is not None else (x.device_ctypes_pointer.value or 0)


def check_array(name, x, what="input", dtypes=DTYPES):
    """Raise a clear error, naming the kernel, unless `x` is a C-contiguous device array of a
    supported dtype.  Returns the array's dtype."""
    if isinstance(x, np.ndarray) or np.isscalar(x):
        raise TypeError(f"{name}: {what} is a host {type(x).__name__} of shape {np.shape(x)}; CUDA kernels "
                        f"take device arrays (gtnumba.kernels.cuda.memory.to_device)")
    if not is_device_array(x):
        raise TypeError(f"{name}: {what} must be a CUDA device array, got {type(x).__name__}")
    dt = np.dtype(x.dtype)
    if dt not in dtypes:
        allowed = ", ".join(str(d) for d in dtypes)
        raise TypeError(f"{name}: unsupported dtype {dt} for {what} of shape {tuple(x.shape)}; "
                        f"supported: {allowed}")
    if x.size and not x.is_c_contiguous():
        raise ValueError(f"{name}: {what} of shape {tuple(x.shape)} must be C-contiguous "
                         f"(strides {tuple(x.strides)})")
    return dt


def broadcast_shape(name, *shapes):
    try:
        return tuple(np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError:
        shown = " and ".join(str(tuple(s)) for s in shapes)
        raise ValueError(f"{name}: cannot broadcast shapes {shown}") from None


# ---- stride arithmetic (host side) ----------------------------------------------------------
def c_strides(shape):
    """Element strides of a C-contiguous array of `shape`."""
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return tuple(reversed(strides))


def broadcast_strides(shape, out_shape):
    """Element strides that read a C-contiguous array of `shape` at every index of `out_shape`:
    0 along broadcast (new or size-1) dims."""
    lead = len(out_shape) - len(shape)
    own = c_strides(shape)
    return tuple(0 if i < lead or shape[i - lead] == 1 else own[i - lead] for i in range(len(out_shape)))


def coalesce(shape, strides_list):
    """Drop size-1 dims and merge neighbours that every operand walks contiguously.

    Returns (shape, [strides per operand]) with at least one dim, so the kernels' index math
    runs over as few dims as the layout allows (same-shape operands become one flat dim)."""
    dims = [(n, [s[i] for s in strides_list]) for i, n in enumerate(shape) if n != 1]
    merged = []
    for n, st in dims:
        if merged:
            pn, pst = merged[-1]
            if all(ps == s * n for ps, s in zip(pst, st)):
                merged[-1] = (pn * n, st)
                continue
        merged.append((n, st))
    if not merged:
        merged = [(1, [0] * len(strides_list))]
    out_shape = tuple(n for n, _ in merged)
    return out_shape, [tuple(st[k] for _, st in merged) for k in range(len(strides_list))]


def flat(x):
    """1-D view of a C-contiguous device array (0-d arrays become length 1)."""
    if x.ndim == 1:
        return x
    return x.reshape(max(int(x.size), 1) if x.ndim == 0 else int(x.size))


def next_pow2(n):
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def floor_pow2(n):
    return 1 << (max(int(n), 1).bit_length() - 1)


def prod(shape):
    return math.prod(shape)
