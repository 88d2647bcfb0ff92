"""The accumulating GEMM (kernels.blas): NumPy's own BLAS where its wheel bundles one, SciPy's otherwise."""
import itertools
import subprocess
import sys

import numpy as np
import pytest

from gtnumba.kernels import blas


def _laid_out(a, layout):
    """a as a row-major, column-major or strided (every other column of a bigger array) matrix."""
    if layout == "C":
        return np.ascontiguousarray(a)
    if layout == "F":
        return np.asfortranarray(a)
    wide = np.zeros((a.shape[0], 2 * a.shape[1]), a.dtype)
    wide[:, ::2] = a
    return wide[:, ::2]


@pytest.mark.parametrize("path", ["numpy", "scipy"])
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("m, k, n", [(37, 5, 11), (1, 4, 1), (6, 0, 3), (0, 2, 4), (9, 3, 1)])
def test_gemm_accumulate_adds_the_scaled_product_in_place(monkeypatch, path, dtype, tol, m, k, n):
    if path == "scipy":
        monkeypatch.setattr(blas, "_GEMMS", {})
    elif not blas._GEMMS:
        pytest.skip("this NumPy bundles no OpenBLAS with CBLAS symbols (not a wheel): only SciPy's path exists")
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    xv, yv = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    for x, y, order in itertools.product([_laid_out(xv, l) for l in "CFS"], [_laid_out(yv, l) for l in "CFS"], "CF"):
        out = np.asarray(rng.standard_normal((m, n)).astype(dtype), order=order)
        want = out.astype(np.float64) - 0.7 * (x.astype(np.float64) @ y)
        address = out.ctypes.data
        got = blas.gemm_accumulate(-0.7, x, y, out)
        assert got is out and out.ctypes.data == address
        np.testing.assert_allclose(out, want, rtol=tol, atol=tol)


@pytest.mark.skipif(not blas._numpy_gemms(), reason="this NumPy bundles no OpenBLAS with CBLAS symbols (not a wheel)")
def test_a_gt_style_step_runs_its_gemm_update_on_numpy_s_own_openblas():
    """A second OpenBLAS would be a second thread pool spinning on the same cores: a GT-style step with
    an update by a product calls the GEMM bound from NumPy's OpenBLAS, and never imports SciPy's BLAS."""
    code = """
import sys, numpy as np, gtnumba as gt
from gtnumba.kernels import blas
calls = []
for dtype, gemm in list(blas._GEMMS.items()):
    blas._GEMMS[dtype] = lambda *args, gemm=gemm: calls.append(1) or gemm(*args)
w = gt.tensor(np.ones((300, 8), np.float32), requires_grad=True)
x = gt.tensor(np.ones((4, 300), np.float32))
for _ in range(4):
    loss = (x @ w).sum()
    loss.backward()
    with gt.no_grad():
        w -= 0.01 * w.grad
        w.grad.zero_()
    loss.item()
assert np.allclose(w.numpy(), 1 - 4 * 0.01 * 4), w.numpy()[:2]
print(len(calls), "scipy.linalg.blas" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    calls, scipy_blas = out.stdout.split()[-2:]
    assert int(calls) >= 2 and scipy_blas == "False", out.stdout
