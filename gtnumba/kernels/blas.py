"""GEMM that accumulates (out += alpha * x @ y) on the BLAS NumPy itself runs on.

NumPy has no GEMM with beta, and SciPy's BLAS is a second OpenBLAS with its own thread pool. After
a call each pool's threads spin for a while, so a step calling both had 4 BLAS threads on 2 cores:
the first user's step took 14 ms (median) with a quarter of the steps over 22 ms, 6.4-7.5 ms on one pool.
NumPy's wheels bundle OpenBLAS with its CBLAS symbols exported: loading that very file gives the
library NumPy already loaded, and so its thread pool.  Where no such file is found (other NumPy
builds), SciPy's BLAS does it.
"""
import ctypes
import glob
import os

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
# (symbol, integer type) of cblas_?gemm in the OpenBLAS builds NumPy's wheels ship: ILP64, then LP64
_NAMES = (("scipy_cblas_{}gemm64_", ctypes.c_int64), ("scipy_cblas_{}gemm", ctypes.c_int32))


def _bind(lib, name, int_t, real_t):
    fn = getattr(lib, name)
    fn.restype = None
    fn.argtypes = [ctypes.c_int] * 3 + [int_t] * 3 + [real_t, ctypes.c_void_p, int_t, ctypes.c_void_p, int_t,
                                                       real_t, ctypes.c_void_p, int_t]
    return fn


def _numpy_gemms():
    """{dtype: cblas gemm} from the OpenBLAS bundled with NumPy, or {} if there is none."""
    here = os.path.dirname(np.__file__)       # Linux and Windows wheels: numpy.libs; macOS: numpy/.dylibs
    found = [p for folder in (os.path.join(os.path.dirname(here), "numpy.libs"), os.path.join(here, ".dylibs"))
             for p in sorted(glob.glob(os.path.join(folder, "*openblas*")))]
    for path in found:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name, int_t in _NAMES:
            if hasattr(lib, name.format("s")) and hasattr(lib, name.format("d")):
                return {np.dtype(np.float32): _bind(lib, name.format("s"), int_t, ctypes.c_float),
                        np.dtype(np.float64): _bind(lib, name.format("d"), int_t, ctypes.c_double)}
    return {}


_GEMMS = _numpy_gemms() if os.environ.get("GTNUMBA_NUMPY_BLAS", "1") != "0" else {}


def _operand(m):
    """(row-major array, trans flag, leading dimension) standing for m, copying m only if strided."""
    if m.flags.c_contiguous:
        return m, _NO_TRANS, max(m.shape[1], 1)
    if m.flags.f_contiguous:
        return m, _TRANS, max(m.shape[0], 1)
    return _operand(np.ascontiguousarray(m))


def gemm_accumulate(alpha, x, y, out):
    """out += alpha * (x @ y) for 2-D float32/float64 arrays of out's dtype."""
    if out.size == 0 or x.shape[1] == 0:      # nothing to add (SciPy's gemm rejects empty outputs)
        return out
    if not out.flags.c_contiguous:
        assert out.flags.f_contiguous, "gemm_accumulate: a strided output"
        gemm_accumulate(alpha, y.T, x.T, out.T)
        return out
    gemm = _GEMMS.get(out.dtype)
    if gemm is None:
        return _scipy_gemm_accumulate(alpha, x, y, out)
    (x, trans_x, ld_x), (y, trans_y, ld_y) = _operand(x), _operand(y)
    (m, k), n = x.shape, y.shape[1]
    gemm(_ROW_MAJOR, trans_x, trans_y, m, n, k, alpha, x.ctypes.data, ld_x, y.ctypes.data, ld_y, 1.0,
         out.ctypes.data, max(n, 1))
    return out


def _scipy_gemm_accumulate(alpha, x, y, out):
    from scipy.linalg import blas
    # BLAS is column-major: the C-ordered out (m, n) is the column-major out.T (n, m) = y.T @ x.T
    (yt, trans_y), (xt, trans_x) = _column_major_t(y), _column_major_t(x)
    gemm = blas.dgemm if out.dtype == np.float64 else blas.sgemm
    got = gemm(alpha, yt, xt, beta=1.0, c=out.T, trans_a=trans_y, trans_b=trans_x, overwrite_c=1)
    assert got.ctypes.data == out.ctypes.data, "gemm_accumulate: BLAS wrote a copy, not the output"
    return out


def _column_major_t(m):
    """(a column-major array, BLAS trans flag) that stand for m.T, copying m only if it is strided."""
    if m.flags.c_contiguous:
        return m.T, 0
    if m.flags.f_contiguous:
        return m, 1
    return np.ascontiguousarray(m).T, 0
