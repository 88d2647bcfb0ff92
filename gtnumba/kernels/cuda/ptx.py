"""Every CUDA kernel of this package at the argument types the backend launches it with, for
ahead-of-time checks with `numba.cuda.compile_ptx` (no GPU needed, but NOT the simulator: run it
in a process without NUMBA_ENABLE_CUDASIM, with the CUDA compiler libraries of
`numba-cuda[cu13]` installed).

    python -m gtnumba.kernels.cuda.ptx            # compile every case for sm_90, print a summary
    python -m gtnumba.kernels.cuda.ptx --full     # also every number of dims up to 4
    python -m gtnumba.kernels.cuda.ptx --shard 1/2   # every second case (run shards in parallel)
    python -m gtnumba.kernels.cuda.ptx --check    # exit 3 when the CUDA compiler (NVVM) is missing

`cases()` yields (label, python function, argument types): the elementwise and reduction cases
listed here, then the `ptx_cases(full)` of every module in PTX_MODULES (gemm, fused, updates, and
shape when it exists); the argument types are exactly what
Numba's dispatcher infers from the host code's launches: flat C-contiguous 1-D arrays, int64
sizes, UniTuple(int64, ndim) shapes/strides, NumPy scalars for clamp bounds and fill values.
"""
import contextlib
import importlib
import sys
import time

import numpy as np
from numba import types
from numba.np.numpy_support import from_dtype

from . import elementwise as ew
from . import reduction as rd
from . import runtime

F32, F64, I32, I64, BOOL = (np.dtype(t) for t in (np.float32, np.float64, np.int32, np.int64, np.bool_))
NUMERIC = (F32, F64, I32, I64)
ALL = NUMERIC + (BOOL,)


def _arr(dt):
    return types.Array(from_dtype(np.dtype(dt)), 1, "C")


def _tup(nd):
    return types.UniTuple(types.int64, nd)


def _sample_attrs(row):
    cases = row.sample(np.random.default_rng(0)) if row.sample else []
    return dict(cases[0][1]) if cases else {}


def launched_dtypes(op):
    """The compute dtypes elementwise `op` is launched with through the API, derived from its op
    row (the dtypes its shape rule accepts, cast as its input_dtypes rule says) and kept to those
    the kernel takes (elementwise.SCALAR); no second per-op dtype table to drift."""
    from ...ops import OPS, Spec
    row, (kind, _, takes) = OPS[op], ew.SCALAR[op]
    attrs, n = _sample_attrs(row), {"unary": 1, "param": 1, "binary": 2, "ternary": 3}[kind]
    found = []
    for dt in ALL:
        specs = [Spec((2,), BOOL if op == "where" and i == 0 else dt) for i in range(n)]
        try:
            out = row.infer(attrs, *specs)
        except (TypeError, ValueError):
            continue
        compute = np.dtype(row.input_dtypes(attrs, *specs, out=out)[-1] if row.input_dtypes else dt)
        if compute in takes and compute not in found:
            found.append(compute)
    return tuple(found)


def _bool_out(op):
    from ...ops import OPS, Spec
    return OPS[op].infer({}, Spec((2,), F32), Spec((2,), F32)).dtype == BOOL


def _ew_signature(op, dt, nd, out=None):
    kind = ew.SCALAR[op][0]
    out = out or (BOOL if kind == "binary" and _bool_out(op) else dt)
    n, shape = types.int64, _tup(nd)
    if kind == "unary":
        return (_arr(out), n, shape, _arr(dt), shape)
    if kind == "param":
        p = from_dtype(dt if dt in (F32, F64) else F64)
        return (_arr(out), n, shape, _arr(dt), shape, p, p)
    if kind == "binary":
        return (_arr(out), n, shape, _arr(dt), shape, _arr(dt), shape)
    return (_arr(out), n, shape, _arr(BOOL), shape, _arr(dt), shape, _arr(dt), shape)


def elementwise_cases(full=False):
    for op in ew.SCALAR:
        for dt in launched_dtypes(op):
            if op == "cast":
                for dst in ALL:
                    yield (f"cast {dt}->{dst} nd1", ew.kernel_function(op, dt), _ew_signature(op, dt, 1, dst))
                continue
            for nd in (range(1, 5) if full else (1,)):
                yield f"{op} {dt} nd{nd}", ew.kernel_function(op, dt), _ew_signature(op, dt, nd)
    # every template at every number of dims the host's coalescing leaves for 2-4-D tensors
    for op in ("exp", "add", "where", "clamp"):
        for nd in (2, 3, 4):
            if not full:
                yield f"{op} float32 nd{nd}", ew.kernel_function(op, F32), _ew_signature(op, F32, nd)
    for dt in ALL:
        yield f"fill {dt}", ew._fill_kernel, (_arr(dt), types.int64, from_dtype(dt))


def reduction_cases(full=False):
    """Every (op, input dtype, template, partials or not) with 1-D kept and reduced groups; the
    index math at more dims once per template (it does not depend on the op or dtype)."""
    tree = runtime.REDUCE_BLOCK
    more_dims = [(2, 1), (1, 2), (2, 2)] + ([(3, 1), (1, 3), (3, 3)] if full else [])
    for op in rd.OPS:
        arg = op.startswith("arg")
        for dt in ALL:
            acc = rd.acc_dtype(op, dt)
            out = I64 if arg else (I64 if op == "sum" and dt == BOOL else dt)
            for path in ("serial", "block"):
                fn_tree = tree if path == "block" else None
                for has_index in ((False, True) if arg else (False,)):
                    src = acc if has_index else dt      # second passes read partials
                    dims = [(1, 1)]
                    if full or (dt == F32 and op in ("sum", "argmax") and not has_index):
                        dims += more_dims
                    for kn, rn in dims:
                        common = (types.int64,) * 4 + (_tup(kn), _tup(kn), _tup(rn), _tup(rn))
                        if arg:
                            sig = (_arr(acc), _arr(I64), _arr(src), _arr(I64)) + common
                        else:
                            sig = (_arr(out), _arr(dt)) + common
                        fn = rd.kernel_function(op, acc, path, has_index, fn_tree)
                        label = f"{op} {dt} {path}{' partials' if has_index else ''} kept{kn} red{rn}"
                        yield label, fn, sig
                # partials of a split sum/max/min are reduced again, in the accumulator dtype
                if not arg and acc != dt:
                    common = (types.int64,) * 4 + (_tup(1),) * 4
                    fn = rd.kernel_function(op, acc, path, False, fn_tree)
                    yield f"{op} {dt} {path} partials", fn, (_arr(out), _arr(acc)) + common


# kernel modules that define their own `ptx_cases(full)` (shape is optional: it may not exist yet)
PTX_MODULES = ("gemm", "fused", "updates", "shape")
_OPTIONAL = {"shape"}


def module_cases(full=False):
    """The `ptx_cases(full)` of every kernel module in PTX_MODULES that exists and defines one."""
    for name in PTX_MODULES:
        qualified = f"{__package__}.{name}"
        try:
            mod = importlib.import_module(qualified)
        except ModuleNotFoundError as exc:
            if name in _OPTIONAL and exc.name == qualified:
                continue
            raise
        collect = getattr(mod, "ptx_cases", None)
        if collect is not None:
            yield from collect(full)


def cases(full=False):
    yield from elementwise_cases(full)
    yield from reduction_cases(full)
    yield from module_cases(full)


class _TargetDevice:
    """Stands in for the current device where there is no driver: numba-cuda 0.30.4 compiles a
    device function called from a kernel for `get_current_device().compute_capability` even
    under `compile_ptx(..., cc=...)`, which needs a driver; without one, compile it for `cc`."""

    def __init__(self, cc):
        self.compute_capability = tuple(cc)


@contextlib.contextmanager
def _device_functions_for(cc):
    from numba import cuda
    from numba.cuda import dispatcher
    try:
        cuda.get_current_device()
        have_driver = True
    except Exception:
        have_driver = False
    if have_driver:
        yield
        return
    saved = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: _TargetDevice(cc)
    try:
        yield
    finally:
        dispatcher.get_current_device = saved


def nvvm_available():
    """Is the CUDA compiler library (libnvvm, from numba-cuda[cu13]) loadable here?"""
    try:
        from numba.cuda.cudadrv.nvvm import NVVM
        NVVM()
        return True
    except Exception:
        return False


def compile_all(cc=(9, 0), full=False, verbose=False, shard=(0, 1)):
    """compile_ptx every case (or every shard[1]-th from shard[0]); returns (number compiled,
    [(label, error)])."""
    if runtime.SIMULATOR:
        raise RuntimeError("compile_ptx needs the real CUDA target: unset NUMBA_ENABLE_CUDASIM")
    with _device_functions_for(cc):
        return _compile_all(cc, full, verbose, shard)


def _compile_all(cc, full, verbose, shard):
    from numba import cuda
    failures, n = [], 0
    for k, (label, fn, sig) in enumerate(cases(full)):
        if k % shard[1] != shard[0]:
            continue
        t = time.perf_counter()
        try:
            ptx, _ = cuda.compile_ptx(fn, sig, cc=cc)
            assert f".target sm_{cc[0]}{cc[1]}" in ptx, f"{label}: PTX is not for sm_{cc[0]}{cc[1]}"
        except Exception as exc:  # collect them all
            failures.append((label, f"{type(exc).__name__}: {exc}"))
        n += 1
        if verbose:
            print(f"{label}: {time.perf_counter() - t:.2f}s", flush=True)
    return n, failures


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(0 if nvvm_available() else 3)
    t0 = time.perf_counter()
    part = (0, 1)
    if "--shard" in sys.argv:
        i, n = sys.argv[sys.argv.index("--shard") + 1].split("/")
        part = (int(i) - 1, int(n))
    count, failed = compile_all(full="--full" in sys.argv, verbose="-v" in sys.argv, shard=part)
    for label, err in failed:
        print(f"FAILED {label}: {err}")
    print(f"compiled {count - len(failed)}/{count} kernels for sm_90 in {time.perf_counter() - t0:.1f}s")
    sys.exit(1 if failed else 0)
