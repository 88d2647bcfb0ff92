"""CUDA reduction kernels (gtnumba/kernels/cuda/reduction.py) against NumPy, in Numba's CUDA
simulator (NUMBA_ENABLE_CUDASIM=1) or on a real GPU.

Every reduction row's "cuda" kernel on the row's samples in float32 and float64; every axis set of
a 3-D array with and without keepdims; 0-d inputs, size-1 outputs, empty reductions and empty
outputs; both templates (thread per output, block per output with a shared-memory tree) and the
split two-pass path of each, forced with lowered launch constants; NaN and tie semantics of
max/min/argmax/argmin; integer and bool dtypes; float32 accuracy against an exact sum.
"""
import itertools
import math

import numpy as np
import pytest
from numba import cuda

if not cuda.is_available():
    pytest.skip("needs a CUDA GPU or Numba's simulator (NUMBA_ENABLE_CUDASIM=1)", allow_module_level=True)

from gtnumba.kernels.cuda import memory, reduction, runtime  # noqa: E402
from gtnumba.ops import OPS, Spec  # noqa: E402
from conftest import dev as _dev, host as _host, needs_cuda, rng as _rng  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("fast_simulator")

RD_MODULE = "gtnumba.ops.reduce"
RD_ROWS = sorted(n for n, r in OPS.items() if r.infer.__module__ == RD_MODULE)
DTYPES = [np.float32, np.float64]
NP = {"sum": np.sum, "max": np.max, "min": np.min, "argmax": np.argmax, "argmin": np.argmin}


@pytest.fixture(params=["serial", "block", "block-split", "serial-split"])
def path(request, monkeypatch):
    """Force one reduction strategy with tiny launches (the simulator pays per thread)."""
    m = request.param
    monkeypatch.setattr(runtime, "REDUCE_BLOCK", 4)
    monkeypatch.setattr(runtime, "MIN_REDUCE_BLOCK", 1)
    monkeypatch.setattr(runtime, "BLOCK", 8)
    if m.startswith("block"):
        monkeypatch.setattr(runtime, "SERIAL_MAX_REDUCE", 0)
        monkeypatch.setattr(runtime, "COALESCED_MIN_OUT", 10 ** 9)
    else:
        monkeypatch.setattr(runtime, "SERIAL_MAX_REDUCE", 10 ** 9)
    if m == "block-split":
        monkeypatch.setattr(runtime, "REDUCE_BLOCK", 2)
        monkeypatch.setattr(runtime, "BLOCK_ITEMS_MIN", 1)
        monkeypatch.setattr(runtime, "TARGET_BLOCKS", 256)
    elif m == "serial-split":
        monkeypatch.setattr(runtime, "SERIAL_SPLIT_CHUNK", 2)
        monkeypatch.setattr(runtime, "TARGET_THREADS", 64)
    else:
        monkeypatch.setattr(runtime, "TARGET_BLOCKS", 1)
        monkeypatch.setattr(runtime, "TARGET_THREADS", 1)
    plans = []
    plan = reduction._plan

    def recording_plan(*args):
        plans.append(plan(*args))
        return plans[-1]
    monkeypatch.setattr(reduction, "_plan", recording_plan)
    yield m
    # the first launch of every reduction took the strategy asked for
    first = plans[0]
    assert first[0] == m.split("-")[0], f"asked for {m}, planned {first}"
    if m.endswith("split"):
        assert any(p[1] > 1 for p in plans), f"{m}: no reduction was split ({plans})"


def _check(got, want, what, dtype=np.float64):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, NumPy {want.shape}"
    if want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=what)


def _kernel(op, x, *args):
    return OPS[op].kernels["cuda"](_dev(x), *args)


# ---- completeness ------------------------------------------------------------------------------
def test_reduction_rows_found():
    assert set(RD_ROWS) == {"sum", "max", "min", "argmax", "argmin"}


@pytest.mark.parametrize("name", RD_ROWS)
def test_every_reduction_row_has_a_cuda_kernel(name):
    assert callable(OPS[name].kernels.get("cuda")), f"{name}: reduction row without a 'cuda' kernel"


# ---- every row on its samples ---------------------------------------------------------------------
def _cases():
    out = []
    for name in RD_ROWS:
        for i, _ in enumerate(OPS[name].sample(_rng(name))):
            for dt in DTYPES:
                out.append(pytest.param(name, i, dt, id=f"{name}-{i}-{np.dtype(dt).name}"))
    return out


@pytest.mark.parametrize("name,i,dtype", _cases())
def test_kernel_matches_reference(name, i, dtype):
    row = OPS[name]
    (x,), attrs = row.sample(_rng(name))[i]
    x = np.asarray(x).astype(dtype)
    d = _dev(x)
    got = _host(row.kernels["cuda"](d, **attrs))
    np.testing.assert_array_equal(d.copy_to_host(), x, err_msg=f"{name}: kernel wrote into its input")
    spec = row.infer(attrs, Spec(x.shape, np.dtype(x.dtype)))
    assert got.shape == spec.shape and got.dtype == spec.dtype, \
        f"{name}: kernel gave {got.shape} {got.dtype}, infer says {spec.shape} {spec.dtype}"
    _check(got, row.reference(x.astype(np.float64), **attrs), f"{name} sample {i}", dtype)


# ---- every axis set, every strategy -----------------------------------------------------------------
SHAPE = (3, 4, 5)


def _axis_sets(ndim):
    for k in range(ndim + 1):
        yield from itertools.combinations(range(ndim), k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_axis_set(dtype):
    x = _rng("axes", np.dtype(dtype).name).standard_normal(SHAPE).astype(dtype)
    d = _dev(x)
    for axes in _axis_sets(3):
        for keep in (False, True):
            for op, kernel in [("sum", reduction.reduce_sum), ("max", reduction.reduce_max),
                               ("min", reduction.reduce_min)]:
                got = _host(kernel(d, axes, keep))
                assert got.dtype == dtype
                _check(got, NP[op](x, axis=axes, keepdims=keep), f"{op} axes={axes} keepdims={keep}", dtype)
    for axis in (None, 0, 1, 2, -1):
        for keep in (False, True):
            for op in ("argmax", "argmin"):
                got = _host(reduction.KERNELS[op](d, axis, keep))
                assert got.dtype == np.int64
                _check(got, NP[op](x, axis=axis, keepdims=keep), f"{op} axis={axis} keepdims={keep}")


@pytest.mark.parametrize("axes", [(0,), (1,), (0, 1), (1, 2), (0, 2), (0, 1, 2)])
def test_strategies(path, axes):
    x = _rng("paths", axes).standard_normal((3, 5, 6))
    x[1, 2, 3] = x[0, 0, 0]                 # a tie for argmax/argmin somewhere
    d = _dev(x)
    for op in ("sum", "max", "min"):
        _check(_host(reduction.KERNELS[op](d, axes, False)), NP[op](x, axis=axes), f"{path} {op} {axes}")
    if len(axes) == 1:
        for op in ("argmax", "argmin"):
            _check(_host(reduction.KERNELS[op](d, axes[0], True)), NP[op](x, axis=axes[0], keepdims=True),
                   f"{path} {op} {axes}")


def test_strategies_argmax_over_everything(path):
    x = _rng("all", path).standard_normal(37)
    x[[5, 20, 33]] = x.max() + 1            # ties across chunks: the first index wins
    x[[2, 30]] = x.min() - 1
    d = _dev(x)
    assert _host(reduction.argmax(d, None, False)) == 5
    assert _host(reduction.argmin(d, None, False)) == 2


def test_path_selection(monkeypatch):
    monkeypatch.setattr(runtime, "TARGET_BLOCKS", 512)
    monkeypatch.setattr(runtime, "TARGET_THREADS", 1 << 18)
    monkeypatch.setattr(runtime, "REDUCE_BLOCK", 256)
    monkeypatch.setattr(runtime, "MIN_REDUCE_BLOCK", 32)
    assert reduction._plan(100, 5, False)[0] == "serial"               # short reductions
    assert reduction._plan(4096, 1000, True)[0] == "serial"            # many outputs, coalesced reads
    path, n_split, chunk, block = reduction._plan(4, 1 << 20, False)   # few long rows: split blocks
    assert path == "block" and n_split > 1 and n_split * chunk >= 1 << 20 and block == 256
    assert reduction._plan(1, 40, False)[3] == 64                      # block: next power of two
    path, n_split, chunk, _ = reduction._plan(4096, 1 << 16, True)     # long columns: split threads
    assert path == "serial" and n_split > 1 and chunk >= runtime.SERIAL_SPLIT_CHUNK


# ---- small and empty shapes --------------------------------------------------------------------------
def test_zero_d_and_size_one():
    x = np.array(2.5, np.float32)
    for op in ("sum", "max", "min"):
        got = _host(reduction.KERNELS[op](_dev(x), (), False))
        assert got.shape == () and got == 2.5
    assert _host(reduction.argmax(_dev(x), None, False)) == 0
    assert _host(reduction.argmax(_dev(x), None, True)).shape == ()
    y = np.array([[7.0]])
    for axes in [(0,), (1,), (0, 1)]:
        _check(_host(reduction.reduce_sum(_dev(y), axes, True)), y.sum(axis=axes, keepdims=True), "size 1")
    assert _host(reduction.argmin(_dev(y), 1, False)).tolist() == [0]


def test_empty_reduction_and_empty_output():
    x = np.zeros((0, 3), np.float32)
    got = _host(reduction.reduce_sum(_dev(x), (0,), False))
    assert got.shape == (3,) and got.dtype == np.float32 and not got.any()
    got = _host(reduction.reduce_sum(_dev(x), (0, 1), True))
    assert got.shape == (1, 1) and got[0, 0] == 0
    assert _host(reduction.reduce_sum(_dev(x), (1,), False)).shape == (0,)
    assert _host(reduction.reduce_max(_dev(x), (1,), True)).shape == (0, 1)
    with pytest.raises(ValueError, match=r"reduce_max: cannot reduce over an empty axis \(shape \(0, 3\)"):
        reduction.reduce_max(_dev(x), (0,), False)


# ---- dtypes -----------------------------------------------------------------------------------
def test_integer_and_bool_inputs():
    rng = _rng("ints")
    i32 = rng.integers(-50, 50, (4, 6)).astype(np.int32)
    i64 = i32.astype(np.int64) * 10 ** 12
    b = i32 > 0
    for x in (i32, i64):
        for axes in [(0,), (1,), (0, 1)]:
            got = _host(reduction.reduce_sum(_dev(x), axes, False))
            assert got.dtype == x.dtype                 # the table's rule: sum keeps int dtypes
            np.testing.assert_array_equal(got, x.sum(axis=axes).astype(x.dtype))
            np.testing.assert_array_equal(_host(reduction.reduce_max(_dev(x), axes, False)), x.max(axis=axes))
            np.testing.assert_array_equal(_host(reduction.reduce_min(_dev(x), axes, False)), x.min(axis=axes))
        np.testing.assert_array_equal(_host(reduction.argmax(_dev(x), 1, False)), x.argmax(axis=1))
    got = _host(reduction.reduce_sum(_dev(b), (0,), False))
    assert got.dtype == np.int64                        # bool sums count, in int64
    np.testing.assert_array_equal(got, b.sum(axis=0))
    got = _host(reduction.reduce_max(_dev(b), (1,), False))
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, b.max(axis=1))
    np.testing.assert_array_equal(_host(reduction.argmin(_dev(b), 0, False)), b.argmin(axis=0))


# ---- NaN semantics (NumPy's) ---------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_propagates(path):
    x = _rng("nan").standard_normal((3, 9))
    x[1, 4] = np.nan
    x[1, 7] = np.nan
    x[2, 0] = np.nan
    d = _dev(x)
    for op in ("sum", "max", "min"):
        got = _host(reduction.KERNELS[op](d, (1,), False))
        want = NP[op](x, axis=1)
        np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True, err_msg=f"{path} {op}")
    for op in ("argmax", "argmin"):
        np.testing.assert_array_equal(_host(reduction.KERNELS[op](d, 1, False)), NP[op](x, axis=1))
        assert _host(reduction.KERNELS[op](d, None, False)) == NP[op](x)


# ---- float32 accuracy -------------------------------------------------------------------------------
def test_float32_sum_is_accurate(monkeypatch):
    """float32 sums accumulate in float64 and combine in a tree: the error stays within an ulp of
    the exact sum, well inside NumPy's own float32 (pairwise) error."""
    monkeypatch.setattr(runtime, "SERIAL_MAX_REDUCE", 0)
    monkeypatch.setattr(runtime, "REDUCE_BLOCK", 8)
    monkeypatch.setattr(runtime, "BLOCK_ITEMS_MIN", 16)
    monkeypatch.setattr(runtime, "TARGET_BLOCKS", 4)
    x = (_rng("acc").random(3000) * 1000 + 1).astype(np.float32)
    x[::7] *= 1e-4
    exact = math.fsum(x.astype(np.float64).tolist())
    got = float(_host(reduction.reduce_sum(_dev(x), (0,), False)))
    ulp = float(np.spacing(np.float32(exact)))
    numpy_err = abs(float(np.sum(x)) - exact)
    assert abs(got - exact) <= max(ulp, numpy_err)
    assert abs(got - exact) <= ulp


# ---- errors before a launch -----------------------------------------------------------------------
def test_errors():
    with pytest.raises(TypeError, match=r"reduce_sum: input is a host ndarray of shape \(2, 3\)"):
        reduction.reduce_sum(np.zeros((2, 3)), (0,), False)
    with pytest.raises(TypeError, match="argmax: unsupported dtype float16"):
        reduction.argmax(cuda.to_device(np.zeros(3, np.float16)), None, False)
    with pytest.raises(ValueError, match="argmin: takes one axis or None"):
        reduction.argmin(_dev(np.zeros((2, 2))), (0, 1), False)
    with pytest.raises(ValueError, match="reduce_min: axis 3 is out of range for an array with 2 dims"):
        reduction.reduce_min(_dev(np.zeros((2, 2))), (3,), False)
