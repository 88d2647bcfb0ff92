"""CUDA elementwise kernels (gtnumba/kernels/cuda/elementwise.py) against the op table's NumPy
references, in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) or on a real GPU.

Every elementwise row's "cuda" kernel runs on the row's own samples in float32 and float64, then
on shapes that are not multiples of the block size (with a grid too small to cover them, so the
grid-stride loops wrap), broadcasting of every kind, 0-d and empty arrays, every dtype, the
IEEE edge cases NumPy defines (NaN, inf, overflow), and the errors raised before a launch.
"""

import numpy as np
import pytest
from numba import cuda

if not cuda.is_available():
    pytest.skip("needs a CUDA GPU or Numba's simulator (NUMBA_ENABLE_CUDASIM=1)", allow_module_level=True)

from gtnumba.kernels.cuda import elementwise as ew  # noqa: E402
from gtnumba.kernels.cuda import memory, runtime  # noqa: E402
from gtnumba.ops import OPS, Spec  # noqa: E402
from conftest import dev as _dev, host as _host, needs_cuda, rng as _rng  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("fast_simulator")

EW_MODULE = "gtnumba.ops.elementwise"
EW_ROWS = sorted(n for n, r in OPS.items() if r.infer.__module__ == EW_MODULE)
DTYPES = [np.float32, np.float64]


@pytest.fixture
def small_launch(monkeypatch):
    """A block and a grid far smaller than the arrays: grid-stride loops must cover the rest."""
    monkeypatch.setattr(runtime, "BLOCK", 8)
    monkeypatch.setattr(runtime, "MAX_GRID", 2)


def _as(a, dtype):
    a = np.asarray(a)
    return a.astype(dtype) if a.dtype.kind == "f" else a


def _check(got, want, what, dtype=np.float64):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, reference {want.shape}"
    if want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    rtol, atol = (1e-5, 1e-5) if np.dtype(dtype) == np.float32 else (1e-12, 1e-12)
    scale = max(1.0, float(np.nanmax(np.abs(want)))) if want.size and np.isfinite(want).any() else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=what)


def _run(name, inputs, attrs):
    """The row's cuda kernel on device copies of `inputs`; checks it left them untouched and that
    shape and dtype are what the row's shape rule says."""
    row = OPS[name]
    dev = [_dev(a) for a in inputs]
    out = row.kernels["cuda"](*dev, **attrs)
    for d, a in zip(dev, inputs):
        np.testing.assert_array_equal(d.copy_to_host(), a, err_msg=f"{name}: kernel wrote into its input")
    got = _host(out)
    spec = row.infer(attrs, *[Spec(tuple(a.shape), np.dtype(a.dtype)) for a in inputs])
    assert got.shape == spec.shape, f"{name}: kernel shape {got.shape}, infer says {spec.shape}"
    assert got.dtype == spec.dtype, f"{name}: kernel dtype {got.dtype}, infer says {spec.dtype}"
    assert out.is_c_contiguous()
    return got


# ---- completeness ------------------------------------------------------------------------------
def test_elementwise_rows_found():
    assert {"add", "where", "gelu_backward", "clamp", "cast", "alias", "logical_and"} <= set(EW_ROWS)


@pytest.mark.parametrize("name", EW_ROWS)
def test_every_elementwise_row_has_a_cuda_kernel(name):
    kernel = OPS[name].kernels.get("cuda")
    assert callable(kernel), f"{name}: elementwise row without a 'cuda' kernel"
    assert name in ew.KERNELS


# ---- every row on its samples, float32 and float64 -------------------------------------------------
def _cases():
    out = []
    for name in EW_ROWS:
        for i, _ in enumerate(OPS[name].sample(_rng(name))):
            for dt in DTYPES:
                out.append(pytest.param(name, i, dt, id=f"{name}-{i}-{np.dtype(dt).name}"))
    return out


@pytest.mark.parametrize("name,i,dtype", _cases())
def test_kernel_matches_reference(name, i, dtype):
    row = OPS[name]
    inputs, attrs = row.sample(_rng(name))[i]
    inputs = [_as(a, dtype) for a in inputs]
    want = row.reference(*[_as(a, np.float64) for a in inputs], **attrs)
    got = _run(name, inputs, attrs)
    _check(got, want, f"{name} sample {i} ({np.dtype(dtype).name})", dtype)


# ---- launch shapes: not multiples of the block, grid-stride loops, broadcasting --------------------
@pytest.mark.parametrize("shape_a,shape_b", [
    ((67,), (67,)),                 # flat, 67 = 8 * 8 + 3
    ((5, 13), (13,)),               # row broadcast
    ((5, 13), (5, 1)),              # column broadcast
    ((3, 1, 7), (1, 4, 1)),         # both sides broadcast
    ((2, 3, 4, 5), (3, 1, 5)),      # 4-D output, 3 dims left after merging
    ((), (9,)),                     # 0-d against 1-D
    ((), ()),                       # 0-d result
    ((0, 3), (3,)),                 # empty result: no launch
])
def test_binary_broadcasting(small_launch, shape_a, shape_b):
    rng = _rng("bcast", shape_a, shape_b)
    a = rng.standard_normal(shape_a).astype(np.float32)
    b = rng.standard_normal(shape_b).astype(np.float32)
    _check(_host(ew.add(_dev(a), _dev(b))), a + b, "add", np.float32)
    _check(_host(ew.lt(_dev(a), _dev(b))), a < b, "lt")


def test_where_broadcasts_three_shapes(small_launch):
    rng = _rng("where3")
    c = rng.standard_normal((4, 1, 3)) > 0
    a = rng.standard_normal((1, 5, 1))
    b = rng.standard_normal((5, 3))
    _check(_host(ew.where(_dev(c), _dev(a), _dev(b))), np.where(c, a, b), "where")


def test_unary_over_many_blocks(small_launch):
    x = _rng("many").standard_normal((7, 11, 3))
    for name, ref in [("exp", np.exp), ("tanh", np.tanh), ("neg", np.negative)]:
        _check(_host(ew.KERNELS[name](_dev(x))), ref(x), name)


def test_output_is_fresh_and_input_untouched():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    d = _dev(x)
    out = ew.neg(d)
    assert out is not d
    np.testing.assert_array_equal(d.copy_to_host(), x)
    np.testing.assert_array_equal(out.copy_to_host(), -x)
    assert ew.alias(d) is d      # the alias row aliases, as on the CPU backend


def test_broadcast_to_materializes():
    x = np.arange(3.0)
    np.testing.assert_array_equal(_host(ew.broadcast_to(_dev(x), (2, 3))), np.broadcast_to(x, (2, 3)))
    np.testing.assert_array_equal(_host(ew.fill((2, 2), 7, np.int32)), np.full((2, 2), 7, np.int32))
    with pytest.raises(ValueError, match="broadcast_to: cannot broadcast shape"):
        ew.broadcast_to(_dev(np.zeros(3)), (3, 2))


# ---- dtypes ------------------------------------------------------------------------------------
INT_BOOL = [np.int32, np.int64, np.bool_]


@pytest.mark.parametrize("dtype", INT_BOOL)
def test_integer_and_bool_operands(dtype):
    rng = _rng("ints", np.dtype(dtype).name)
    a = rng.integers(-3, 4, (3, 4)).astype(dtype)
    b = rng.integers(-3, 4, (4,)).astype(dtype)
    names = ["add", "sub", "mul", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge", "logical_and"]
    for name in names:
        got = _run(name, (a, b), {})
        # the table's rule: arithmetic computes in its result dtype (bool arithmetic in int64)
        ref_in = (a, b) if name not in ("add", "sub", "mul") else (a.astype(got.dtype), b.astype(got.dtype))
        want = OPS[name].reference(*ref_in)
        _check(got, want.astype(got.dtype), f"{name} {np.dtype(dtype).name}")
    x = a if dtype != np.bool_ else a.astype(np.int32)
    for name in ["abs", "relu"]:
        _check(_run(name, (a,), {}), OPS[name].reference(a).astype(a.dtype), f"{name} {np.dtype(dtype).name}")
    for name in ["neg", "sign"]:
        _check(_run(name, (x,), {}), OPS[name].reference(x), f"{name} {x.dtype}")
    _check(_run("clamp", (x,), {"lo": -1.5, "hi": 2.25}), np.clip(x, -1.5, 2.25).astype(x.dtype), "clamp int")


def test_div_of_integers_is_float32():
    a, b = np.array([1, 2, 7], np.int64), np.array([2, 4, 2], np.int64)
    got = _host(ew.div(_dev(a), _dev(b)))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [0.5, 0.5, 3.5])


def test_pow_integers():
    a, b = np.array([2, 3, -2], np.int64), np.array([3, 2, 3], np.int64)
    np.testing.assert_array_equal(_host(ew.power(_dev(a), _dev(b))), a ** b)


@pytest.mark.parametrize("src", [np.float32, np.float64, np.int32, np.int64, np.bool_])
def test_cast_between_every_dtype(src):
    x = np.array([0.0, 1.0, -2.75, 3.5, 0.25, 1e3]).astype(src)
    for dst in [np.float32, np.float64, np.int32, np.int64, np.bool_]:
        got = _host(ew.cast(_dev(x), dtype=np.dtype(dst)))
        assert got.dtype == dst
        np.testing.assert_array_equal(got, x.astype(dst), err_msg=f"cast {np.dtype(src)} -> {np.dtype(dst)}")


# ---- IEEE edge cases, as NumPy defines them ---------------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the simulator's NumPy scalars warn on inf/NaN
@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_values(dtype):
    with np.errstate(all="ignore"):
        x = np.array([-1000.0, -100.0, -1.0, -0.0, 0.0, 1e-30, 2.0, 100.0, 1000.0, np.inf, -np.inf, np.nan],
                     dtype=dtype)
        d = _dev(x)
        cases = {
            "sigmoid": 0.5 * (1 + np.tanh(0.5 * x.astype(np.float64))),   # overflow-safe reference
            "exp": np.exp(x), "log": np.log(x), "sqrt": np.sqrt(x), "tanh": np.tanh(x),
            "relu": np.maximum(x, 0), "sign": np.sign(x), "abs": np.abs(x), "neg": -x,
            "gelu": OPS["gelu"].reference(x.astype(np.float64)),
        }
        for name, want in cases.items():
            got = _host(ew.KERNELS[name](d))
            assert got.dtype == dtype
            np.testing.assert_allclose(got, want.astype(dtype), rtol=2e-6 if dtype == np.float32 else 1e-12,
                                       atol=1e-30, equal_nan=True, err_msg=name)
        assert np.isfinite(_host(ew.sigmoid(d))[:-1]).all(), "sigmoid overflowed"
        y = np.array([np.nan, 1.0, -np.inf, 0.0, np.nan], dtype)
        z = np.array([0.0, np.nan, 3.0, -0.0, np.nan], dtype)
        for name, ref in [("maximum", np.maximum), ("minimum", np.minimum), ("div", np.true_divide),
                          ("pow", np.power), ("eq", np.equal), ("ne", np.not_equal), ("lt", np.less)]:
            np.testing.assert_array_equal(_host(ew.KERNELS[name](_dev(y), _dev(z))), ref(y, z), err_msg=name)
        np.testing.assert_array_equal(_host(ew.clamp(_dev(y), lo=None, hi=0.5)), np.clip(y, None, 0.5))
        np.testing.assert_array_equal(_host(ew.cast(_dev(y), dtype=np.dtype(np.bool_))), y.astype(bool))


def test_clamp_bounds():
    x = _rng("clamp").standard_normal(10).astype(np.float32)
    for lo, hi in [(-0.5, 0.5), (None, 0.1), (-0.1, None), (None, None)]:
        np.testing.assert_array_equal(_host(ew.clamp(_dev(x), lo=lo, hi=hi)), np.clip(x, lo, hi))
    with pytest.raises(ValueError, match="clamp: min 1.0 is greater than max 0.0"):
        ew.clamp(_dev(x), lo=1.0, hi=0.0)


# ---- errors before a launch -----------------------------------------------------------------------
def test_host_array_is_refused():
    with pytest.raises(TypeError, match=r"add: input 1 is a host ndarray of shape \(3,\)"):
        ew.add(_dev(np.zeros(3, np.float32)), np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="exp: input is a host ndarray"):
        OPS["exp"].kernels["cuda"](np.zeros(2))
    with pytest.raises(TypeError, match="must be a CUDA device array, got list"):
        ew.neg([1.0, 2.0])


def test_unsupported_dtype_is_refused():
    half = cuda.to_device(np.zeros(4, np.float16))
    with pytest.raises(TypeError, match=r"mul: unsupported dtype float16 for input 0 of shape \(4,\)"):
        ew.mul(half, half)
    with pytest.raises(TypeError, match="exp: unsupported dtype int64"):
        ew.exp(_dev(np.arange(3)))
    with pytest.raises(TypeError, match="neg: unsupported dtype bool"):
        ew.neg(_dev(np.array([True])))
    with pytest.raises(TypeError, match="where: unsupported dtype float32 for condition"):
        ew.where(_dev(np.zeros(2, np.float32)), _dev(np.zeros(2)), _dev(np.zeros(2)))
    with pytest.raises(TypeError, match="cast: unsupported target dtype float16"):
        ew.cast(_dev(np.zeros(2)), dtype=np.dtype(np.float16))


def test_shapes_that_do_not_broadcast():
    with pytest.raises(ValueError, match=r"sub: cannot broadcast shapes \(3, 4\) and \(3,\)"):
        ew.sub(_dev(np.zeros((3, 4))), _dev(np.zeros(3)))
    with pytest.raises(ValueError, match=r"where: cannot broadcast shapes \(2,\) and \(3,\) and \(2,\)"):
        ew.where(_dev(np.zeros(2, bool)), _dev(np.zeros(3)), _dev(np.zeros(2)))


def test_non_contiguous_is_refused():
    t = cuda.to_device(np.zeros((3, 4), np.float32)).T
    if t.is_c_contiguous():
        pytest.skip("this device array type has no non-contiguous views")
    with pytest.raises(ValueError, match="exp: input of shape .* must be C-contiguous"):
        ew.exp(t)


# ---- the launch helpers --------------------------------------------------------------------------
def test_launch_helper():
    assert runtime.grid_for(1, 256) == 1
    assert runtime.grid_for(257, 256) == 2
    assert runtime.grid_for(10 ** 9, 256, max_grid=100) == 100
    calls = []

    class Fake:
        def __getitem__(self, config):
            calls.append(config)
            return lambda *args: calls.append(args)
    assert runtime.launch(Fake(), 0, 1, 2) == (0, runtime.BLOCK) and not calls
    assert runtime.launch(Fake(), 100, "x", block=32) == (4, 32)
    assert calls == [(4, 32, runtime.stream()), ("x",)], "launched on the backend's stream"
    with pytest.raises(ValueError, match="k: block size must be an int in 1..1024"):
        runtime.launch(Fake(), 10, block=2048, name="k")


def test_jit_wrapper_drops_what_the_simulator_refuses():
    def k(out):
        i = cuda.grid(1)
        if i < out.shape[0]:
            out[i] = i
    kernel = runtime.jit(k, lineinfo=True, launch_bounds=(64,), fastmath=False)
    out = memory.empty((5,), np.int64)
    runtime.launch(kernel, 5, out, block=8)
    np.testing.assert_array_equal(out.copy_to_host(), np.arange(5))


def test_coalesce_merges_contiguous_dims():
    shape, (sa, sb) = runtime.coalesce((2, 3, 4), [runtime.c_strides((2, 3, 4)), (0, 0, 1)])
    assert shape == (6, 4) and sa == (4, 1) and sb == (0, 1)
    shape, (sa,) = runtime.coalesce((2, 1, 4), [runtime.c_strides((2, 1, 4))])
    assert shape == (8,) and sa == (1,)
    assert runtime.coalesce((), [()]) == ((1,), [(0,)])
    assert runtime.broadcast_strides((3, 1), (2, 3, 5)) == (0, 1, 0)
