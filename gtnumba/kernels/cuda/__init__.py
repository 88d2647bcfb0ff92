"""The CUDA backend: Numba CUDA kernels behind the op table's "cuda" slots.

Importing this package is cheap and never touches numba.cuda: the op table holds `LazyKernel`
handles, and the kernel modules (runtime, memory, elementwise, reduction) are imported on the
first call, so `import gtnumba` costs nothing extra on a machine without a GPU.

Modules:
    runtime      simulator switch, the stream, launch configuration, `jit` wrapper (disk cache),
                 `launch`, argument checks, the one index-unravel helper `offset`
    memory       the device memory pool (CuPy's pool, a caching allocator, or plain device_array),
                 the only host <-> device copies (counted in COPIES), shared scalar constants
    checks       data errors found on the device (labels, indices, step) raised at the next read
    bound        plan steps bound once: recorded launches replayed without their host code
    graphs       a cached plan replayed as one CUDA graph (real GPU; GTNUMBA_CUDA_GRAPHS=0: off)
    elementwise  one broadcasting kernel template per arity + a scalar device function per op
    reduction    sum/max/min over any axis set, argmax/argmin, tree-combined in float64/int64
    gemm         matmul: cuBLAS through CuPy on a real GPU when installed, else a register-blocked
                 shared-memory tiled Numba GEMM (batched on the grid's z dimension)
    fused        softmax / log-softmax / cross-entropy / layer norm and their backward rows
    updates      sgd_update / adam_update, one elementwise kernel each
    shape        reshape/permute (tiled transpose)/expand/concat, indexing gather, scatter(-add)
    ptx          every kernel at the signatures the backend launches, for `compile_ptx` checks
                 (elementwise dtypes derived from the op table)
"""
import importlib


class LazyKernel:
    """A kernel slot that imports its module on first call (`module.KERNELS[op]`)."""
    __slots__ = ("module", "op", "_fn", "__name__", "__qualname__")

    def __init__(self, module, op):
        self.module, self.op, self._fn = module, op, None
        self.__name__ = self.__qualname__ = f"cuda_{op}"

    def resolve(self):
        if self._fn is None:
            mod = importlib.import_module(f"{__name__}.{self.module}")
            self._fn = mod.KERNELS[self.op]
        return self._fn

    def __call__(self, *args, **kwargs):
        fn = self._fn or self.resolve()
        return fn(*args, **kwargs)

    def __repr__(self):
        return f"<cuda kernel {self.module}.{self.op}>"


def elementwise_kernel(op):
    """The op table's "cuda" slot of elementwise row `op` (gtnumba.kernels.cuda.elementwise)."""
    return LazyKernel("elementwise", op)


def shape_kernel(op):
    """The op table's "cuda" slot of shape/indexing row `op` (gtnumba.kernels.cuda.shape)."""
    return LazyKernel("shape", op)


def reduction_kernel(op):
    """The op table's "cuda" slot of reduction row `op` (gtnumba.kernels.cuda.reduction)."""
    return LazyKernel("reduction", op)


def gemm_kernel(op):
    """The op table's "cuda" slot of matrix-product row `op` (gtnumba.kernels.cuda.gemm)."""
    return LazyKernel("gemm", op)


def fused_kernel(op):
    """The op table's "cuda" slot of fused row `op` (gtnumba.kernels.cuda.fused)."""
    return LazyKernel("fused", op)


def update_kernel(op):
    """The op table's "cuda" slot of optimizer-update row `op` (gtnumba.kernels.cuda.updates)."""
    return LazyKernel("updates", op)


def to_device(array):
    from .memory import to_device as f
    return f(array)


def to_host(value):
    from .memory import to_host as f
    return f(value)


def simulator():
    """True when NUMBA_ENABLE_CUDASIM is on (checked without importing numba.cuda)."""
    from numba import config
    return bool(config.ENABLE_CUDASIM)


def gpu_present():
    """True only for a real CUDA GPU (never under the simulator)."""
    if simulator():
        return False
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:
        return False


def probe():
    """(True, "") when a tiny kernel compiles, runs and gives the right answer here, else
    (False, why).  Backend choice calls it before picking "cuda" on its own."""
    try:
        import numpy as np
        from .elementwise import fill
        from .memory import to_host
        got = to_host(fill((4,), 3, np.float32))
        if not (got == 3).all():
            return False, f"a test kernel computed {got.tolist()} instead of [3, 3, 3, 3]"
        return True, ""
    except Exception as exc:  # any failure means: do not pick this backend on our own
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def usable():
    """Can the CUDA backend run here: a real GPU, or the simulator."""
    return simulator() or gpu_present()
