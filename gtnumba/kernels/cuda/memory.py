"""Device memory for the CUDA backend: every kernel output comes from `empty()`.

Three allocators behind one interface, chosen once (or with `GTNUMBA_CUDA_POOL=cupy|cache|numba`):

- "cupy": on a real GPU with CuPy installed, blocks come from CuPy's memory pool
  (`cupy.cuda.alloc`, ~4 us for 4 MiB against ~160 us for `cuda.device_array`) and are wrapped
  as Numba device arrays that keep the CuPy block alive; when the last array (or view) over a
  block dies, CuPy's pool takes the block back.
- "cache": on a real GPU without CuPy, a caching allocator of our own: blocks keyed by their size
  rounded up to 512 bytes; a block returns to its free list when the last array over it dies
  (a finalizer on the Numba memory pointer every view shares), and an out-of-memory error
  empties the cache and retries once.
- "numba": plain `cuda.device_array` (the simulator, where pooling buys nothing).

All work (kernels, copies, cuBLAS) runs on one stream (`runtime.stream()`), so a block reused
after its arrays died is ordered after every kernel that used it.

Copies between host and device happen only in `to_device` and `to_host`, and `COPIES` counts
them (tests and benchmarks read it).  A 0-d host array (a scalar constant, a learning rate) is
copied once and its device copy reused for every later equal scalar: such leaf values are never
written by a kernel (kernels write only into arrays they allocate).  `to_host` synchronizes the
stream and then raises any data error a kernel recorded (gtnumba.kernels.cuda.checks).
"""
import os
import threading

import numpy as np
from numba import cuda

from . import checks, runtime

ROUND = 512
_lock = threading.RLock()   # re-entrant: a finalizer may return a block while we hold it


def _round(nbytes):
    return max(ROUND, -(-nbytes // ROUND) * ROUND)


class _NumbaAllocator:
    name = "numba"

    def empty(self, shape, dtype):
        return cuda.device_array(shape, dtype=dtype)

    def stats(self):
        return {"allocator": self.name}

    def empty_cache(self):
        pass


def _wrap(context, shape, dtype, pointer_value, nbytes, owner=None, finalizer=None):
    """A Numba device array over raw device memory (real CUDA target only).

    Every view Numba makes of it (reshape, slices) holds the pointer object made here, or holds it
    as owner, so `owner` stays alive and `finalizer` runs only once the last view is gone.  Built
    from a per-(shape, dtype) template array (its __dict__ copied, the pointer swapped in): Numba's
    constructor re-derives the layout every time, which is most of an allocation's host cost."""
    mem = _pointer_class()(context, int(pointer_value), nbytes, owner, finalizer)
    return _array(_template(shape, dtype, mem)[2], mem)


_TEMPLATES = {}            # (shape, dtype) -> (nbytes, rounded size, template DeviceNDArray)
_POINTER = []


def _template(shape, dtype, mem):
    t = _TEMPLATES.get((shape, dtype))
    if t is None:
        from numba.cuda.cudadrv.devicearray import DeviceNDArray
        strides = tuple(s * dtype.itemsize for s in runtime.c_strides(shape))
        nbytes = runtime.prod(shape) * dtype.itemsize
        template = DeviceNDArray(shape, strides, dtype, gpu_data=mem)
        template.gpu_data = None                 # (copies get their own pointer; keep no block alive)
        t = (nbytes, _round(nbytes), template)
        if len(_TEMPLATES) < 4096:
            _TEMPLATES[(shape, dtype)] = t
    return t


def _array(template, mem):
    arr = object.__new__(type(template))
    arr.__dict__ = fields = template.__dict__.copy()      # (half the cost of update() on an empty dict)
    fields["gpu_data"] = mem
    return arr


def _pointer_class():
    """A Numba MemoryPointer whose release runs from __del__ (cheaper than weakref.finalize), which
    keeps its address as an int (`ptr_value`, read by the launch path) and makes the driver's
    pointer object only when Numba asks for it."""
    if _POINTER:
        return _POINTER[0]
    from numba.cuda.cudadrv import driver

    class PooledPointer(driver.MemoryPointer):
        def __init__(self, context, ptr_value, size, owner=None, finalizer=None):
            self.context = context
            self.ptr_value = ptr_value
            self.size = self._cuda_memsize_ = size
            self.is_managed = False
            self.refct = 1
            self._owner = owner
            self._release = finalizer

        @property
        def device_pointer(self):
            return driver.binding.CUdeviceptr(self.ptr_value)

        handle = device_pointer

        @property
        def device_pointer_value(self):
            return self.ptr_value

        def __del__(self):
            release = self._release
            if release is not None:
                self._release = None
                if type(release) is tuple:            # (pool, size, raw) of the caching allocator
                    release[0].release(release[1], release[2])
                else:
                    release()
    _POINTER.append(PooledPointer)
    return PooledPointer


class _CupyAllocator:
    name = "cupy"

    def __init__(self, cupy, context=None):
        self.cupy = cupy
        self.context = context

    def empty(self, shape, dtype):
        nbytes = runtime.prod(shape) * dtype.itemsize
        if nbytes == 0:
            return cuda.device_array(shape, dtype=dtype)
        if self.context is None:
            self.context = cuda.current_context()
        block = self.cupy.cuda.alloc(nbytes)          # a cupy MemoryPointer from its pool
        return _wrap(self.context, shape, dtype, block.ptr, nbytes, owner=block)

    def stats(self):
        pool = self.cupy.get_default_memory_pool()
        return {"allocator": self.name, "used_bytes": pool.used_bytes(), "total_bytes": pool.total_bytes()}

    def empty_cache(self):
        self.cupy.get_default_memory_pool().free_all_blocks()


class _CachingAllocator:
    """Free lists of raw device blocks keyed by rounded byte size."""
    name = "cache"

    def __init__(self, context=None):
        self.context = context    # the Numba context (tests hand in a stand-in)
        self.free = {}            # rounded size -> [raw Numba memory pointer]
        self.cached_bytes = 0
        self.used_bytes = 0
        self.hits = 0
        self.misses = 0

    def _context(self):
        if self.context is None:
            self.context = cuda.current_context()
        return self.context

    def _raw(self, size):
        ctx = self._context()
        try:
            return ctx.memalloc(size)
        except Exception as exc:  # out of memory: give the cache back and try once more
            if "OUT_OF_MEMORY" not in repr(exc).upper():
                raise
            self.empty_cache()
            return ctx.memalloc(size)

    def empty(self, shape, dtype):
        t = _TEMPLATES.get((shape, dtype))
        nbytes, size = (t[0], t[1]) if t is not None else (runtime.prod(shape) * dtype.itemsize, 0)
        if nbytes == 0:
            return cuda.device_array(shape, dtype=dtype)
        size = size or _round(nbytes)
        with _lock:
            blocks = self.free.get(size)
            raw = blocks.pop() if blocks else None
            if raw is not None:
                self.cached_bytes -= size
                self.hits += 1
            else:
                self.misses += 1
            self.used_bytes += size
        if raw is None:
            raw = self._raw(size)
        mem = _pointer_class()(self.context or self._context(), raw.device_pointer_value, nbytes, None,
                               (self, size, raw))
        return _array((t or _template(shape, dtype, mem))[2], mem)

    def release(self, size, raw):
        with _lock:
            self.free.setdefault(size, []).append(raw)
            self.cached_bytes += size
            self.used_bytes -= size

    def stats(self):
        return {"allocator": self.name, "used_bytes": self.used_bytes, "cached_bytes": self.cached_bytes,
                "hits": self.hits, "misses": self.misses}

    def empty_cache(self):
        with _lock:
            self.free.clear()
            self.cached_bytes = 0
        try:
            self._context().deallocations.clear()     # Numba frees lazily: free now
        except Exception:  # pragma: no cover - nothing pending
            pass


_allocator = []


def _choose():
    wanted = os.environ.get("GTNUMBA_CUDA_POOL", "").strip().lower()
    if wanted not in ("", "cupy", "cache", "numba"):
        raise ValueError(f"GTNUMBA_CUDA_POOL must be cupy, cache or numba, got {wanted!r}")
    if runtime.SIMULATOR or wanted == "numba":
        return _NumbaAllocator()
    if wanted in ("", "cupy"):
        try:
            import cupy
            return _CupyAllocator(cupy)
        except Exception:
            if wanted == "cupy":
                raise
    return _CachingAllocator()


def allocator():
    if not _allocator:
        _allocator.append(_choose())
        runtime.tune_for_device()
    return _allocator[0]


def empty(shape, dtype):
    """A fresh C-contiguous device array of `shape` and `dtype` from the pool."""
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(d) for d in shape)
    out = allocator().empty(shape, np.dtype(dtype))
    rec = runtime.recorder()
    if rec is not None:
        rec.alloc(out)
    return out


COPIES = {"h2d": 0, "d2h": 0, "h2d_bytes": 0, "d2h_bytes": 0}
_SCALARS = {}            # (dtype, bytes) -> device copy of a 0-d host array
_SCALARS_LIMIT = 4096


def to_device(array):
    """Host array -> fresh C-contiguous device array (a device array is returned as is; a 0-d
    array equal to one copied before returns that shared, read-only copy)."""
    if runtime.is_device_array(array):
        return array
    host = np.asarray(array, order="C")      # (np.ascontiguousarray would make 0-d arrays 1-d)
    if host.dtype not in runtime.DTYPES:
        raise TypeError(f"to_device: unsupported dtype {host.dtype} for an array of shape {host.shape}")
    if host.ndim == 0:
        return constant(host)
    if runtime.recorder() is not None:
        runtime.recorder().unbindable("a host -> device copy inside a kernel")
    return _copy_in(host)


def constant(host):
    """The shared, read-only device copy of a small host constant (copied on first use only)."""
    host = np.asarray(host, order="C")
    key = (host.dtype.str, host.shape, host.tobytes())
    dev = _SCALARS.get(key)
    if dev is None:
        if len(_SCALARS) >= _SCALARS_LIMIT:
            _SCALARS.pop(next(iter(_SCALARS)))
        dev = _SCALARS[key] = _copy_in(host)
    return dev


def _copy_in(host):
    COPIES["h2d"] += 1
    COPIES["h2d_bytes"] += host.nbytes
    if runtime.SIMULATOR:
        return cuda.to_device(host, stream=runtime.stream())
    out = empty(host.shape, host.dtype)
    if host.size:
        out.copy_to_device(host, stream=runtime.stream())
    return out


def to_host(value):
    """Device array -> host NumPy array (host arrays pass through).  Synchronizes the stream, then
    raises a data error a kernel recorded since the last read."""
    if not runtime.is_device_array(value):
        return np.asarray(value)
    if runtime.recorder() is not None:
        runtime.recorder().unbindable("a device -> host copy inside a kernel")
    COPIES["d2h"] += 1
    COPIES["d2h_bytes"] += int(value.size) * value.dtype.itemsize
    s = runtime.stream()
    host = value.copy_to_host(stream=s)
    s.synchronize()
    checks.raise_pending()
    return host


def synchronize():
    """Wait for the stream, then raise a data error a kernel recorded."""
    runtime.stream().synchronize()
    checks.raise_pending()


def stats():
    return allocator().stats()


def empty_cache():
    allocator().empty_cache()
